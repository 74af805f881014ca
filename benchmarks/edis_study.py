"""EDIS study on the flagship (Cal-QL+EDIS, pendulum medium): synthetic-transition fidelity and online ablations.

Tuning seeds only (0-4); the held-out seeds 10-14 are never run here.

    # 1. fidelity of the synthetic pool against Pendulum-v1's own dynamics (+ a sweep of generator sizes)
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/edis_study.py fidelity --out benchmarks/results/edis_study
    # 2. online ablations (run the same command twice, in two shells, to use two workers: runs are claimed atomically)
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/edis_study.py online --seeds 0 1 2
    # 3. tables from the finished runs (copies config.yaml + scalars/ of each run into the results folder)
    python benchmarks/edis_study.py collect --runs /work/scratch/edis_study/runs --out benchmarks/results/edis_study
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict

from diffrl.train.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

# variant name -> (recipe, overrides); every run adds seed=S and logger.dir=<runs>/<variant>_seed<S>
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "calql": ("recipes/calql.py", []),
    "edis_calql": ("recipes/edis_calql.py", []),
    "edis_mix05": ("recipes/edis_calql.py", ["online.mixing_ratio=0.5"]),
    "edis_sf025": ("recipes/edis_calql.py", ["edis.synthetic_fraction=0.25"]),
}
HELD_OUT = range(10, 15)


def run_online(args: argparse.Namespace) -> None:
    """Run every (seed, variant) not yet claimed; a run is claimed by creating ``<name>.claim`` (atomic mkdir)."""
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        if seed in HELD_OUT:
            raise SystemExit(f"seed {seed} is held out (10-14); use tuning seeds 0-4")
        for name in args.variants:
            recipe, overrides = VARIANTS[name]
            run_dir = runs / f"{name}_seed{seed}"
            try:
                (runs / f"{name}_seed{seed}.claim").mkdir()
            except FileExistsError:
                continue
            cmd = [sys.executable, recipe, f"seed={seed}", f"logger.dir={run_dir}", *overrides]
            print(" ".join(cmd[1:]), flush=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            with open(runs / f"{name}_seed{seed}.log", "w") as log:
                rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            print(f"  -> exit {rc}", flush=True)


# ------------------------------------------------------------------------------------------------ 1. fidelity
DATASET = "diffrl/pendulum/medium-v0"
OFF_CIRCLE = 0.05  # |cos^2 + sin^2 - 1| above this counts as off the unit circle


def env_step(obs: np.ndarray, act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pendulum-v1's own (reward, next obs) from observations [N, 3] and actions [N, 1]: the state is recovered as
    theta = atan2(sin, cos), thetadot, written to ``env.unwrapped.state``, and the env is stepped with the action
    clipped to [-2, 2] (the env clips too; thetadot is clipped by the env's own max_speed)."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    low, high = env.action_space.low, env.action_space.high
    rewards, nexts = np.empty(len(obs)), np.empty((len(obs), 3))
    for i, (o, a) in enumerate(zip(obs.astype(np.float64), act.astype(np.float64))):
        env.state = np.array([np.arctan2(o[1], o[0]), o[2]])
        nexts[i], rewards[i], *_ = env.step(np.clip(a, low, high))
    env.close()
    return rewards, nexts


def fidelity(x: np.ndarray, std_next: np.ndarray, std_r: float) -> dict[str, float]:
    """Errors of flat transitions ``x = [s(3), a(1), r(1), s'(3)]`` against Pendulum-v1's own step from (s, a)."""
    s, a, r, sp = x[:, :3], x[:, 3:4], x[:, 4], x[:, 5:8]
    r_env, sp_env = env_step(s, a)
    rmse = np.sqrt(((sp - sp_env) ** 2).mean(0)) / std_next
    circ_s, circ_sp = np.abs(s[:, 0] ** 2 + s[:, 1] ** 2 - 1), np.abs(sp[:, 0] ** 2 + sp[:, 1] ** 2 - 1)
    return {
        "rmse_cos": float(rmse[0]), "rmse_sin": float(rmse[1]), "rmse_thdot": float(rmse[2]),
        "r_mae": float(np.abs(r - r_env).mean() / std_r),
        "off_circle_s": float((circ_s > OFF_CIRCLE).mean()), "off_circle_sp": float((circ_sp > OFF_CIRCLE).mean()),
        "circle_err_s": float(circ_s.mean()),
        "upright_s": float((s[:, 0] > 0.95).mean()),  # share of states near the top (where a good policy lives)
    }  # fmt: skip


def behaviour_policy(noise: float, generator: torch.Generator):
    """The scripted controller (diffrl.data.generators.PendulumController's rule) on tensors, N(0, noise^2) torque
    noise: the stand-in for a good online policy (the expert dataset's behaviour)."""

    def policy(obs: torch.Tensor) -> torch.Tensor:
        cos, sin, speed = obs[:, 0], obs[:, 1], obs[:, 2]
        balance = -(10.0 * torch.atan2(sin, cos) + 2.0 * speed)
        energy = 0.5 * speed**2 + 15.0 * cos
        pump = torch.where(speed * (15.0 - energy) >= 0, 2.0, -2.0)
        torque = torch.where(cos > 0.85, balance, pump)
        torque = torque + noise * torch.randn(torque.shape, generator=generator)
        return torque.clamp(-2.0, 2.0).unsqueeze(-1)

    return policy


def online_transitions(num_steps: int, seed: int) -> TensorDict:
    """``num_steps`` Pendulum-v1 transitions of the controller with N(0, 0.1^2) torque noise (episodes of 200)."""
    import gymnasium as gym

    from diffrl.data.generators import PendulumController

    env, ctrl = gym.make("Pendulum-v1"), PendulumController(noise_std=0.1, seed=seed)
    rows, obs, ep = [], env.reset(seed=seed)[0], 0
    for _ in range(num_steps):
        act = ctrl(obs)
        nxt, rew, term, trunc, _ = env.step(act)
        rows.append((obs, act, rew, nxt))
        obs = nxt
        if term or trunc:
            ep += 1
            obs = env.reset(seed=seed + ep)[0]
    s, a, r, sp = (torch.as_tensor(np.array(c), dtype=torch.float32) for c in zip(*rows))
    return TensorDict({"observation": s, "action": a, "next": {"observation": sp, "reward": r[:, None]}}, [num_steps])


def flat(td: TensorDict) -> np.ndarray:
    parts = [td["observation"], td["action"], td["next", "reward"].reshape(-1, 1), td["next", "observation"]]
    return torch.cat([p.reshape(p.shape[0], -1).float() for p in parts], -1).numpy()


def cpu() -> float:
    return time.process_time()


def run_fidelity(args: argparse.Namespace) -> None:
    from diffrl.data import load_dataset
    from diffrl.data.edis.training import as_transitions
    from diffrl.train.config import load_config
    from diffrl.train.edis_hook import build_edis

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    offline_rb = load_dataset(DATASET, batch_size=256)
    offline = as_transitions(offline_rb, "offline")
    real = flat(offline)
    std_next, std_r = real[:, 5:8].std(0), float(real[:, 4].std())
    rows: list[dict] = []

    def record(name: str, seed: int, x: np.ndarray, **extra) -> None:
        row = {"pool": name, "seed": seed, **extra, **fidelity(x, std_next, std_r)}
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)

    # sanity of the env stepping: the dataset's own transitions must come out (almost) exact
    rng = np.random.default_rng(0)
    sample = real[rng.choice(len(real), args.num_samples, replace=False)]
    check = fidelity(sample, std_next, std_r)
    assert max(check["rmse_cos"], check["rmse_sin"], check["rmse_thdot"], check["r_mae"]) < 1e-3, check
    record("real offline (sanity: 0)", 0, sample)
    copy = sample.copy()
    copy[:, 5:8] = copy[:, :3]  # trivial baseline: s' = s, r = the dataset's mean reward
    copy[:, 4] = real[:, 4].mean()
    record("baseline s'=s, r=mean", 0, copy)
    online_by_seed = {seed: online_transitions(args.online_steps, seed=1000 + seed) for seed in args.seeds}
    record("real online (controller, noise 0.1)", 0, flat(online_by_seed[args.seeds[0]]))

    base = load_config(ROOT / "recipes" / "edis_calql.py", []).edis
    sweep = [("default", {})]
    sweep += [(f"width {w}", {"denoiser": {"width": w}}) for w in args.widths if w != base.denoiser.width]
    sweep += [
        (f"diffusion_steps {d}", {"diffusion_steps": d}) for d in args.diffusion_steps if d != base.diffusion_steps
    ]
    other_neg = [n for n in args.negative_sampler_steps if n != base.negative_sampler_steps]
    sweep += [(f"negative_sampler_steps {n}", {"negative_sampler_steps": n}) for n in other_neg]
    for seed in args.seeds:
        online = online_by_seed[seed]
        policy = behaviour_policy(0.1, torch.Generator().manual_seed(seed))
        for label, change in sweep:
            cfg = OmegaConf.to_container(base, resolve=True)
            for key, value in change.items():
                cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
            edis = build_edis(cfg, obs_dim=3, action_dim=1, device="cpu", seed=seed)
            t0 = cpu()
            edis.fit([offline_rb])  # the switch: offline data only, no energies, unguided pool
            fit1 = cpu() - t0
            record(f"{label}: fit 1 (offline, unguided)", seed, flat(edis.sample(args.num_samples, guided=False)),
                   fit_cpu_s=fit1)  # fmt: skip
            t0 = cpu()
            edis.fit([offline_rb, online], online=online, policy=policy)  # a retrain: offline + online, guided
            fit2 = cpu() - t0
            samplers = [base.sampler_steps] if label != "default" else args.sampler_steps
            for steps in samplers:
                edis.config.sampler_steps = steps
                t0 = cpu()
                guided = flat(edis.sample(args.num_samples, guided=True))
                t_sample = cpu() - t0
                name = label if steps == base.sampler_steps else f"sampler_steps {steps}"
                record(f"{name}: fit 2 (offline+online, guided)", seed, guided, fit_cpu_s=fit2,
                       sample_cpu_s=t_sample)  # fmt: skip
                record(f"{name}: fit 2, unguided", seed, flat(edis.sample(args.num_samples, guided=False)))
    atomic_write_text(out / args.name, json.dumps(rows, indent=1))
    print(f"wrote {out / args.name}")


# ------------------------------------------------------------------------------------------------ 3. collect
FAIL = 20.0  # an episode with a normalised score below this counts as failing


def by_step(metrics: dict, name: str) -> dict[int, float]:
    """One scalar of :func:`~diffrl.train.metrics.read_metrics` as ``{step: value}`` (empty if the run lacks it)."""
    steps, values = metrics.get(name, ((), ()))
    return {int(step): float(value) for step, value in zip(steps, values)}


def reevaluate(run_dir: Path, episodes: int, seed: int) -> list[float]:
    """Normalised scores of ``episodes`` fresh deterministic episodes of each checkpointed actor of a run (the last
    two kept, i.e. the last two online evaluations' policies): the recipes log only each evaluation's mean and std."""
    from torchrl.envs import GymEnv

    from diffrl import registry
    from diffrl.data.generators import PENDULUM_REF_MAX, PENDULUM_REF_MIN
    from diffrl.train.checkpoint import read_checkpoint
    from diffrl.train.evaluation import evaluate

    cfg = OmegaConf.load(run_dir / "config.yaml")
    scores = []
    for ckpt in sorted((run_dir / "checkpoints").glob("step_*.pt")):
        _, state = read_checkpoint(ckpt)
        env = GymEnv("Pendulum-v1")
        env.set_seed(seed)
        space = env.action_spec.space
        actor = registry.build("actor", cfg.actor, obs_dim=3, action_dim=1, action_low=space.low,
                               action_high=space.high)  # fmt: skip
        critic = registry.build("critic", cfg.critic, obs_dim=3, action_dim=1)
        loss = registry.build("loss", cfg.loss, actor_network=actor, qvalue_network=critic)
        loss.make_value_estimator(gamma=cfg.gamma)
        loss.load_state_dict(state["objects"]["loss"])
        policy = loss.actor_network  # the loss holds the trained parameters; bind them into the actor
        with loss.actor_network_params.to_module(policy):
            for _ in range(episodes):
                out = evaluate(env, policy, 1, exploration=cfg.eval.exploration, ref_min_score=PENDULUM_REF_MIN,
                               ref_max_score=PENDULUM_REF_MAX)  # fmt: skip
                scores.append(out["eval/normalized_score"])
    return scores


def run_collect(args: argparse.Namespace) -> None:
    import shutil

    from diffrl.train.metrics import read_metrics
    from diffrl.train.report import run_score

    runs, out = Path(args.runs), Path(args.out)
    table = []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir() and (p / "scalars").is_dir()):
        cfg = OmegaConf.load(run_dir / "config.yaml")
        metrics = read_metrics(run_dir)
        ev = by_step(metrics, "eval/normalized_score")
        total = int(cfg.offline.steps) + int(cfg.online.steps)
        if total not in ev:
            print(f"skip {run_dir.name}: unfinished")
            continue
        dest = out / "runs" / run_dir.name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run_dir / "scalars", dest / "scalars")
        shutil.copy(run_dir / "config.yaml", dest / "config.yaml")
        online = [v for k, v in sorted(ev.items()) if k > int(cfg.offline.steps)]
        train = by_step(metrics, "train/normalized_return")
        train_online = [v for k, v in train.items() if k > int(cfg.offline.steps)]
        name, seed = run_dir.name.rsplit("_seed", 1)
        row = {
            "variant": name, "seed": int(seed), "offline_end": ev[int(cfg.offline.steps)],
            "online_last2": run_score(run_dir, last_k=2, phase="online"), "online_evals": online,
            "cpu_s": by_step(metrics, "train/cpu_seconds").get(total),
            "train_episodes": len(train_online), "train_failing": sum(v < FAIL for v in train_online),
        }  # fmt: skip
        if args.reevaluate:
            scores = reevaluate(run_dir, args.episodes, seed=args.eval_seed)
            row.update({"reeval_episodes": len(scores), "reeval_failing": sum(v < FAIL for v in scores),
                        "reeval_mean": float(np.mean(scores))})  # fmt: skip
        table.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "online_evals"}), flush=True)
    atomic_write_text(out / "online.json", json.dumps(table, indent=1))
    print(f"wrote {out / 'online.json'}")


# ------------------------------------------------------------------------------------------------ 4. tables
FIDELITY_COLUMNS = {
    "rmse_cos": "s' RMSE cos", "rmse_sin": "s' RMSE sin", "rmse_thdot": "s' RMSE thdot", "r_mae": "|r err|",
    "off_circle_s": "s off circle", "off_circle_sp": "s' off circle", "upright_s": "s upright",
    "fit_cpu_s": "fit CPU s", "sample_cpu_s": "sample CPU s",
}  # fmt: skip


def run_tables(args: argparse.Namespace) -> None:
    """Markdown tables (means over seeds) from the JSON files written by ``fidelity`` and ``collect``."""
    out = Path(args.out)
    lines = []
    for name in args.fidelity:
        rows = json.loads((out / name).read_text())
        pools: dict[str, list[dict]] = {}
        for row in rows:
            pools.setdefault(row["pool"], []).append(row)
        lines += [f"Fidelity ({name}; means over seeds)", ""]
        lines += ["| pool | seeds | " + " | ".join(FIDELITY_COLUMNS.values()) + " |"]
        lines += ["|---" * (len(FIDELITY_COLUMNS) + 2) + "|"]
        for pool, rs in pools.items():
            cells = []
            for key in FIDELITY_COLUMNS:
                vals = [r[key] for r in rs if key in r]
                cells.append(f"{np.mean(vals):.3f}" if vals else "")
            lines.append(f"| {pool} | {len(rs)} | " + " | ".join(cells) + " |")
        lines.append("")
    online_file = out / "online.json"
    if online_file.exists():
        rows = json.loads(online_file.read_text())
        base = {r["seed"]: r["online_last2"] for r in rows if r["variant"] == "calql"}
        lines += ["Online (score: mean of the last two online evaluations; diff: paired vs calql on the same seed)", ""]
        lines += ["| variant | seed | end of offline | online last 2 | diff vs calql | evals (online) | CPU s | "
                  "failing re-eval episodes | failing train episodes |", "|---" * 9 + "|"]  # fmt: skip
        for r in sorted(rows, key=lambda r: (r["variant"], r["seed"])):
            diff = f"{r['online_last2'] - base[r['seed']]:+.1f}" if r["seed"] in base else ""
            evals = " ".join(f"{v:.0f}" for v in r["online_evals"])
            failing = f"{r['reeval_failing']}/{r['reeval_episodes']}" if "reeval_failing" in r else "n/a"
            lines.append(
                f"| {r['variant']} | {r['seed']} | {r['offline_end']:.1f} | {r['online_last2']:.1f} | {diff} | "
                f"{evals} | {r['cpu_s']:.0f} | {failing} | {r['train_failing']}/{r['train_episodes']} |"
            )
        lines.append("")
        lines += ["| variant | seeds | online last 2 (mean +- std) | paired diff vs calql (mean, per seed) | "
                  "failing re-eval episodes | failing train episodes |", "|---" * 6 + "|"]  # fmt: skip
        for variant in dict.fromkeys(r["variant"] for r in rows):
            rs = [r for r in rows if r["variant"] == variant]
            scores = [r["online_last2"] for r in rs]
            diffs = [r["online_last2"] - base[r["seed"]] for r in rs if r["seed"] in base]
            std = np.std(scores, ddof=1) if len(scores) > 1 else float("nan")
            paired = f"{np.mean(diffs):+.1f} ({' '.join(f'{d:+.1f}' for d in diffs)})" if variant != "calql" else ""
            fail = sum(r.get("reeval_failing", 0) for r in rs), sum(r.get("reeval_episodes", 0) for r in rs)
            train = sum(r["train_failing"] for r in rs), sum(r["train_episodes"] for r in rs)
            lines.append(
                f"| {variant} | {len(rs)} | {np.mean(scores):.1f} +- {std:.1f} | {paired} | {fail[0]}/{fail[1]} | "
                f"{train[0]}/{train[1]} |"
            )
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "tables.md", text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("online")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--runs", default="/work/scratch/edis_study/runs")
    f = sub.add_parser("fidelity")
    f.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    f.add_argument("--num-samples", type=int, default=2000)
    f.add_argument("--online-steps", type=int, default=2000)
    f.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    f.add_argument("--diffusion-steps", type=int, nargs="+", default=[500, 1000, 3000])
    f.add_argument("--sampler-steps", type=int, nargs="+", default=[8, 16, 32])
    f.add_argument("--negative-sampler-steps", type=int, nargs="+", default=[8])
    f.add_argument("--name", default="fidelity.json", help="output file name inside --out")
    f.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "edis_study"))
    c = sub.add_parser("collect")
    c.add_argument("--runs", default="/work/scratch/edis_study/runs")
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "edis_study"))
    c.add_argument("--reevaluate", action="store_true", help="count failing episodes by re-running the checkpoints")
    c.add_argument("--episodes", type=int, default=10, help="per checkpoint, with --reevaluate")
    c.add_argument("--eval-seed", type=int, default=12345)
    t = sub.add_parser("tables")
    t.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "edis_study"))
    t.add_argument("--fidelity", nargs="+", default=["fidelity.json"])
    args = parser.parse_args()
    {"online": run_online, "fidelity": run_fidelity, "collect": run_collect, "tables": run_tables}[args.cmd](args)


if __name__ == "__main__":
    main()
