"""Fidelity check: diffrl's Diffusion-QL against the official agent, same data, seeds, batches and update budgets.

For every seed, both implementations train on the transitions of one diffrl dataset (``diffrl.data.load_dataset``),
exported once into the official replay format (``state, action, next_state, reward, not_done``), and both draw the
SAME minibatch indices at every update (one seeded index stream per side, identical by construction). At each budget
of ``--updates`` (cumulative: one run per seed and side, scored when it reaches each budget) both policies play the
same number of episodes in the same gymnasium env with the same seeds, and the script prints the per-seed normalized
scores side by side (the dataset's reference returns ``ref_min_score`` / ``ref_max_score``), with means.

The two sides:

* diffrl: the update of ``recipes/diffusion_ql.py`` from its building blocks (``registry`` actor ``diffusion``, critic
  ``twin_q`` with Mish, loss ``diffusion_ql``, fused Adam, ``diffusion_ql_updater``, ``critic_then_actor_update``);
  evaluation with ``QSelectionActor`` (50 candidates of the online actor, softmax over the target critics' min).
* official: ``agents.ql_diffusion.Diffusion_QL`` driven by its own ``train`` loop over a sampler with the interface of
  its ``Data_Sampler``; evaluation with its ``sample_action``.

Shared settings (the official Gym-locomotion ones): 3 x 256 Mish networks (fixed in the official code), T = 5 with the
VP schedule, batch 256, eta 1, actor and critic lr 3e-4 (no decay), discount 0.99, critic Polyak 0.005, EMA actor
0.995 every 5 updates from update 1000, max-Q backup off, gradient-norm clip ``--grad-norm`` (default: 9, the official
hopper-medium value, on MuJoCo data; 5, diffrl's pendulum value, otherwise). Selection rule, both sides: the policy
as it is at the end of the budget (no checkpoint selection), mean return over ``--episodes`` episodes; episode ``i``
of seed ``s`` resets with seed ``1000 * s + 100 + i``; the torch generator is seeded identically before each
evaluation and restored afterwards, so evaluating does not change the training randomness.

Getting the official code (it is not part of diffrl and is never copied into it)::

    git clone https://github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL /path/to/official
    python benchmarks/fidelity/diffusion_ql.py --official-path /path/to/official \\
        --dataset diffrl/pendulum/medium-v0 --seeds 0 1 2 --updates 1000 5000
    python benchmarks/fidelity/diffusion_ql.py --official-path /path/to/official \\
        --dataset diffrl/hopper/medium-v0 --seeds 0 1 2 --updates 1000 5000 --out results/hopper.json

Its modules are imported from ``--official-path`` as they are: ``agents.ql_diffusion`` needs torch, numpy,
``python-dateutil`` and ``tabulate`` (its logger's table printer, never called here: a stand-in is used when
``tabulate`` is not installed). ``d4rl`` and ``gym`` are imported only by files not used here.

Datasets: ``diffrl/pendulum/*`` are built on first use (about 30 s); other datasets must exist locally (Minari's
directory) unless ``--build`` is given (the generated MuJoCo ones take long: ``python -m diffrl.data``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tensordict import TensorDict

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Settings:
    """Hyperparameters shared by both sides (the official Gym-locomotion values unless overridden)."""

    batch_size: int = 256
    eta: float = 1.0
    lr: float = 3e-4
    grad_norm: float = 9.0
    num_steps: int = 5
    hidden: int = 256  # fixed in the official MLP and Critic
    gamma: float = 0.99
    tau: float = 0.005
    num_candidates: int = 50  # fixed in the official sample_action


def import_official(path: str) -> type:
    """The official ``Diffusion_QL`` class, imported from a checkout at ``path`` (its files left untouched)."""
    if not os.path.isfile(os.path.join(path, "agents", "ql_diffusion.py")):
        raise SystemExit(
            f"--official-path {path!r} has no agents/ql_diffusion.py; pass a checkout of "
            "https://github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL (see this script's docstring)."
        )
    stubbed = False
    try:
        import tabulate  # noqa: F401, PLC0415 - only checking that it is there
    except ImportError:
        # The official logger imports tabulate at module level but only uses it to print tables, which never happens
        # here: a stand-in that fails loudly if it ever is called.
        stub = types.ModuleType("tabulate")

        def _missing(*args, **kwargs):
            raise RuntimeError("tabulate is not installed (pip install tabulate)")

        stub.tabulate = _missing
        sys.modules["tabulate"] = stub
        stubbed = True
    sys.path.insert(0, os.path.abspath(path))
    try:
        from agents.ql_diffusion import Diffusion_QL  # noqa: PLC0415 - import by path, on request
    finally:
        if stubbed:  # the logger holds its reference; others (torch._dynamo) must still see tabulate as missing
            del sys.modules["tabulate"]
    return Diffusion_QL


def export_official(transitions: TensorDict) -> dict[str, torch.Tensor]:
    """diffrl transitions as the official replay format: float32 ``state, action, next_state, reward, not_done``.

    ``not_done`` is ``1 - terminated`` (a time-limit truncation still bootstraps, as in D4RL's ``qlearning_dataset``
    where ``terminals`` are true terminations only); rewards are ``[N, 1]`` as in the official ``Data_Sampler``.

    Example:
        >>> td = TensorDict(
        ...     {
        ...         "observation": torch.zeros(2, 3),
        ...         "action": torch.ones(2, 1),
        ...         "next": {
        ...             "observation": torch.ones(2, 3),
        ...             "reward": torch.tensor([[1.0], [2.0]]),
        ...             "terminated": torch.tensor([[False], [True]]),
        ...             "truncated": torch.tensor([[True], [False]]),
        ...         },
        ...     },
        ...     batch_size=[2],
        ... )
        >>> out = export_official(td)
        >>> sorted(out), out["not_done"].flatten().tolist(), out["reward"].shape
        (['action', 'next_state', 'not_done', 'reward', 'state'], [1.0, 0.0], torch.Size([2, 1]))
    """
    n = transitions.batch_size[0]
    return {
        "state": transitions["observation"].float(),
        "action": transitions["action"].float(),
        "next_state": transitions["next", "observation"].float(),
        "reward": transitions["next", "reward"].float().reshape(n, 1),
        "not_done": 1.0 - transitions["next", "terminated"].float().reshape(n, 1),
    }


class IndexStream:
    """Minibatch indices from a seeded generator: two streams with the same seed give the same batches.

    Example:
        >>> a, b = IndexStream(100, 4, seed=0), IndexStream(100, 4, seed=0)
        >>> all(torch.equal(a.next(), b.next()) for _ in range(3))
        True
    """

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size = size, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        return torch.randint(0, self.size, (self.batch_size,), generator=self.generator)


class OfficialSampler:
    """The interface of the official ``Data_Sampler`` (``sample(batch_size)`` -> 5 tensors) over exported data."""

    def __init__(self, data: dict[str, torch.Tensor], stream: IndexStream) -> None:
        self.data, self.stream = data, stream

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        if batch_size != self.stream.batch_size:
            raise ValueError(f"sampler built for batch {self.stream.batch_size}, asked for {batch_size}")
        idx = self.stream.next()
        d = self.data
        return d["state"][idx], d["action"][idx], d["next_state"][idx], d["reward"][idx], d["not_done"][idx]


def symmetric_bound(low: np.ndarray, high: np.ndarray) -> float:
    """The official agent's scalar ``max_action``; its actions live in ``[-max_action, max_action]`` only."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if not (np.allclose(low, -high) and np.allclose(high, high.flat[0])):
        raise SystemExit(
            f"action bounds {low.tolist()} / {high.tolist()}: the official agent supports only [-m, m] in every "
            "dimension; use a dataset whose env has symmetric, equal bounds."
        )
    return float(high.flat[0])


def make_diffrl(
    obs_dim: int, action_dim: int, max_action: float, settings: Settings
) -> tuple[Callable[[TensorDict], object], Policy]:
    """diffrl's side: ``(update(batch), policy(obs) -> action)``, built as ``recipes/diffusion_ql.py`` builds them."""
    from diffrl import registry
    from diffrl.modules.q_selection import QSelectionActor
    from diffrl.objectives.updaters import diffusion_ql_updater
    from diffrl.train.updates import critic_then_actor_update

    sizes = [settings.hidden] * 3
    actor = registry.build(
        "actor",
        {"name": "diffusion", "hidden_sizes": sizes, "num_steps": settings.num_steps, "schedule": "vp"},
        obs_dim=obs_dim,
        action_dim=action_dim,
        action_low=-max_action,
        action_high=max_action,
    )
    critic = registry.build(
        "critic",
        {"name": "twin_q", "hidden_sizes": sizes, "activation": "mish"},
        obs_dim=obs_dim,
        action_dim=action_dim,
    )
    loss = registry.build(
        "loss",
        {"name": "diffusion_ql", "eta": settings.eta, "max_q_backup": False},
        actor_network=actor,
        qvalue_network=critic,
    )
    loss.make_value_estimator(gamma=settings.gamma)
    actor_params = [p for p in loss.actor_network_params.values(True, True) if p.requires_grad]
    critic_params = [p for p in loss.qvalue_network_params.values(True, True) if p.requires_grad]
    optim_actor = torch.optim.Adam(actor_params, lr=settings.lr, fused=True)
    optim_critic = torch.optim.Adam(critic_params, lr=settings.lr, fused=True)
    updater = diffusion_ql_updater(loss, critic_tau=settings.tau)
    update = critic_then_actor_update(loss, optim_critic, optim_actor, updater, grad_norm=settings.grad_norm)
    select = QSelectionActor(actor, critic, num_candidates=settings.num_candidates)

    def policy(obs: np.ndarray) -> np.ndarray:
        # candidates from the online actor, scored by the target critics (as the recipe evaluates)
        with torch.no_grad(), loss.target_qvalue_network_params.to_module(critic):
            return select.select(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    return update, policy


def make_official(
    agent_class: type, obs_dim: int, action_dim: int, max_action: float, settings: Settings
) -> tuple[object, Policy]:
    """The official side: ``(agent, policy(obs) -> action)`` with the shared settings."""
    agent = agent_class(
        state_dim=obs_dim,
        action_dim=action_dim,
        max_action=max_action,
        device="cpu",
        discount=settings.gamma,
        tau=settings.tau,
        max_q_backup=False,
        eta=settings.eta,
        beta_schedule="vp",
        n_timesteps=settings.num_steps,
        lr=settings.lr,
        lr_decay=False,
        grad_norm=settings.grad_norm,
    )
    return agent, lambda obs: agent.sample_action(np.asarray(obs, dtype=np.float32))


def evaluate(policy: Policy, env_id: str, episodes: int, seed: int, max_episode_steps: int | None) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes; the same env seeds and torch draws for every policy."""
    import gymnasium as gym

    env = gym.make(env_id, max_episode_steps=max_episode_steps) if max_episode_steps else gym.make(env_id)
    returns = []
    with torch.random.fork_rng(devices=[]):  # evaluation leaves the training randomness untouched
        torch.manual_seed(1000 * seed + 100)
        for i in range(episodes):
            obs, _ = env.reset(seed=1000 * seed + 100 + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    env.close()
    return returns


def run(
    rb,
    agent_class: type,
    seeds: Sequence[int],
    budgets: Sequence[int],
    settings: Settings,
    episodes: int,
    max_episode_steps: int | None = None,
    env_id: str | None = None,
    log: Callable[[str], None] = print,
    on_row: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Train both sides per seed up to every budget; one row per (seed, budget, side) with returns and CPU seconds."""
    env_id = env_id or rb.env_id
    import gymnasium as gym

    space = gym.make(env_id).action_space
    max_action = symmetric_bound(space.low, space.high)
    transitions = rb.transitions
    exported = export_official(transitions)
    obs_dim, action_dim = exported["state"].shape[1], exported["action"].shape[1]
    size = exported["state"].shape[0]
    rows = []
    for seed in seeds:
        for side in ("diffrl", "official"):
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002 - the official coin flip draws from numpy's global generator
            stream = IndexStream(size, settings.batch_size, seed)
            if side == "diffrl":
                update, policy = make_diffrl(obs_dim, action_dim, max_action, settings)

                def train(n: int, update=update, stream=stream) -> None:
                    for _ in range(n):
                        update(transitions[stream.next()])
            else:
                agent, policy = make_official(agent_class, obs_dim, action_dim, max_action, settings)
                sampler = OfficialSampler(exported, stream)

                def train(n: int, agent=agent, sampler=sampler) -> None:
                    agent.train(sampler, iterations=n, batch_size=settings.batch_size)

            done, train_cpu = 0, 0.0
            for budget in sorted(budgets):
                start = time.process_time()
                train(budget - done)
                train_cpu += time.process_time() - start
                done = budget
                start = time.process_time()
                returns = evaluate(policy, env_id, episodes, seed, max_episode_steps)
                eval_cpu = time.process_time() - start
                mean = float(np.mean(returns))
                score = normalized(rb, mean)
                rows.append(
                    {
                        "seed": seed,
                        "updates": budget,
                        "side": side,
                        "return": mean,
                        "normalized": score,
                        "returns": returns,
                        "train_cpu_s": train_cpu,
                        "eval_cpu_s": eval_cpu,
                    }
                )
                log(
                    f"seed {seed} {side:>8} {budget:>6} updates: return {mean:9.1f} normalized {score:6.1f} "
                    f"(train {train_cpu:.0f} CPU-s, eval {eval_cpu:.0f} CPU-s)"
                )
                if on_row is not None:  # e.g. save what has finished, in case a long run is stopped
                    on_row(rows)
    return rows


def normalized(rb, value: float) -> float:
    """``100 (R - ref_min) / (ref_max - ref_min)``, or NaN when the dataset has no reference scores."""
    if rb.ref_min_score is None or rb.ref_max_score is None:
        return math.nan
    return 100.0 * (value - rb.ref_min_score) / (rb.ref_max_score - rb.ref_min_score)


def table(rows: list[dict]) -> str:
    """Markdown table: per budget, one line per seed (diffrl, official, difference), then mean +- std over seeds."""
    lines = ["| updates | seed | diffrl | official | diffrl - official |", "| ---: | ---: | ---: | ---: | ---: |"]
    by_key = {(r["updates"], r["seed"], r["side"]): r["normalized"] for r in rows}
    for budget in sorted({r["updates"] for r in rows}):
        seeds = sorted({r["seed"] for r in rows if r["updates"] == budget})
        ours, theirs = [], []
        for seed in seeds:
            a, b = by_key.get((budget, seed, "diffrl"), math.nan), by_key.get((budget, seed, "official"), math.nan)
            ours.append(a)
            theirs.append(b)
            lines.append(f"| {budget} | {seed} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
        pairs = [(a, b) for a, b in zip(ours, theirs) if not (math.isnan(a) or math.isnan(b))]
        if pairs:
            a_s, b_s = [p[0] for p in pairs], [p[1] for p in pairs]
            d_s = [a - b for a, b in pairs]
            means = f"**{_mean_std(a_s)}** | **{_mean_std(b_s)}** | **{_mean_std(d_s, sign=True)}**"
            lines.append(f"| {budget} | **mean** | {means} |")
    return "\n".join(lines)


def _mean_std(values: list[float], sign: bool = False) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.1f} +- {std:.1f}" if sign else f"{mean:.1f} +- {std:.1f}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-path", required=True, help="checkout of the official repository")
    parser.add_argument("--dataset", default="diffrl/pendulum/medium-v0", help="a diffrl/Minari dataset id")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--updates", type=int, nargs="+", default=[1000, 5000], help="budgets (cumulative per run)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per budget (>= 10 to report)")
    parser.add_argument("--grad-norm", type=float, default=None, help="clip norm, both sides (default: see above)")
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-episode-steps", type=int, default=None, help="episode cap (default: the env's limit)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--build", action="store_true", help="build a registered dataset that is missing")
    parser.add_argument("--out", default=None, help="also write the rows, settings and table as JSON here")
    args = parser.parse_args(argv)
    bad = [n for n in args.updates if n <= 0]
    if bad or len(set(args.updates)) != len(args.updates):
        parser.error(f"--updates {args.updates}: give distinct positive update counts, e.g. --updates 1000 5000")
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes}: give at least 1 (10 or more for a reported table)")
    if args.grad_norm is None:
        args.grad_norm = 5.0 if "pendulum" in args.dataset else 9.0
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")  # the official softmax without dim, gym deprecations
    torch.set_num_threads(args.threads)
    agent_class = import_official(args.official_path)
    from diffrl.data import load_dataset

    build = args.build or args.dataset.startswith("diffrl/pendulum/")
    rb = load_dataset(args.dataset, batch_size=None, build=build, download=False)
    settings = Settings(batch_size=args.batch_size, eta=args.eta, lr=args.lr, grad_norm=args.grad_norm)
    data_score = normalized(rb, float(np.mean(rb.episode_returns)))
    header = (
        f"{args.dataset} ({len(rb)} transitions, dataset average normalized {data_score:.1f}), env {rb.env_id}; "
        f"{args.episodes} episodes per evaluation; settings {asdict(settings)}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(header, flush=True)
    start = time.process_time()

    def save(rows: list[dict]) -> None:
        if not args.out:
            return
        from diffrl.train.files import atomic_write_text

        record = {
            "command": " ".join(["python", "benchmarks/fidelity/diffusion_ql.py", *(argv or sys.argv[1:])]),
            "header": header,
            "settings": asdict(settings),
            "rows": rows,
            "table": table(rows),
            "cpu_s": time.process_time() - start,
        }
        atomic_write_text(args.out, json.dumps(record, indent=1))

    rows = run(
        rb,
        agent_class,
        args.seeds,
        args.updates,
        settings,
        args.episodes,
        args.max_episode_steps,
        log=lambda s: print(s, flush=True),
        on_row=save,
    )
    cpu = time.process_time() - start
    text = table(rows)
    print(f"\nnormalized score (100 (R - {rb.ref_min_score}) / ({rb.ref_max_score} - {rb.ref_min_score}))")
    print(text)
    print(f"total CPU time: {cpu / 60:.1f} min")
    save(rows)


if __name__ == "__main__":
    main()
