"""Offline-to-online with and without EDIS: Cal-QL vs Cal-QL+EDIS and IQL vs IQL+EDIS on one dataset, several seeds.

    python benchmarks/edis_o2o.py                                   # pendulum, 3 seeds, the recipes' CPU budgets
    nice -n 5 python benchmarks/edis_o2o.py --seeds 0 1 2 --offline-steps 1000 --online-steps 1000 \\
        --out benchmarks/results/edis_o2o_pendulum
    python benchmarks/edis_o2o.py --methods calql edis_calql -o edis_calql:edis.guidance.state=2.0
    python benchmarks/edis_o2o.py --report-only --out benchmarks/results/edis_o2o_pendulum   # tables from finished runs

Every (method, seed) is one recipe process (``recipes/<method>.py``), single-threaded (``OMP_NUM_THREADS=1`` and
the recipe's ``threads=1`` when it has that key), run one after the other. Each writes its own run directory
``<out>/runs/<method>_seed<k>`` (CSV metrics, checkpoints) and log ``<out>/logs/<method>_seed<k>.log``; a finished
run leaves ``done.json`` and is skipped on the next invocation (its checkpoints are then deleted unless
``--keep-checkpoints``), an interrupted one is resumed from its last checkpoint (``resume=``), so a killed benchmark
loses at most one evaluation period.

Fair comparison: every method gets the same dataset, seed list, ``offline.steps``, ``online.steps``, ``eval.every``,
``eval.episodes`` and ``eval.exploration`` (set on the command line for all of them), and each EDIS recipe shares
its base recipe's network sizes, batch size and learning rates (checked on the saved configs: a mismatch is
printed). What differs is what the method is: the EDIS variants add synthetic transitions to online batches (and
Cal-QL+EDIS, as in the paper, replays no offline data directly: ``online.mixing_ratio`` 0 instead of Cal-QL's 0.5).

Outputs in ``--out``: ``table.md`` (mean +- sample std over seeds of ``eval/normalized_score`` at the end of the
offline phase and at the end of the online phase, per method), ``normalized_score.png`` (mean +- std band vs global
step; the dashed line is the offline -> online switch) and ``summary.json`` (per-seed numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
METHODS = ("calql", "edis_calql", "iql", "edis_iql")
PAIRS = (("calql", "edis_calql"), ("iql", "edis_iql"))
LABELS = {"calql": "Cal-QL", "edis_calql": "Cal-QL+EDIS", "iql": "IQL", "edis_iql": "IQL+EDIS"}
SCORE = "eval/normalized_score"
# Settings a base recipe and its EDIS variant must share for the comparison to be about EDIS alone.
SHARED_KEYS = (
    "data",
    "actor",
    "critic",
    "value",
    "loss",
    "optim",
    "gamma",
    "offline.steps",
    "online.steps",
    "online.utd_ratio",
    "online.frames_per_batch",
    "online.cql_alpha",
    "eval",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="diffrl/pendulum/medium-v0", help="data.dataset_id of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--offline-steps", type=int, default=2000, help="offline.steps of every run")
    parser.add_argument("--online-steps", type=int, default=2000, help="online.steps of every run")
    parser.add_argument("--eval-every", type=int, default=500, help="eval.every of every run (global steps)")
    parser.add_argument("--eval-episodes", type=int, default=5, help="eval.episodes of every run")
    parser.add_argument(
        "--hidden",
        default="[256,256]",
        help="hidden sizes of every network (actor, critic, IQL's value) in every run, so that a base recipe and its "
        "EDIS variant always compare equal networks (the recipes' own CPU defaults differ); '' keeps each recipe's",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "edis_o2o")
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="[METHOD:]KEY=VALUE",
        help="recipe override passed to every method, or to one with a METHOD: prefix "
        "(e.g. -o edis_iql:online.extra_updates=20); repeatable",
    )
    parser.add_argument("--report-only", action="store_true", help="only aggregate the runs already in --out")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the checkpoints of finished runs (default: deleted once the run is done)",
    )
    args = parser.parse_args(argv)
    if len(args.seeds) != len(set(args.seeds)):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    for value in (args.offline_steps, args.online_steps):
        if value < 1:
            parser.error(f"--offline-steps and --online-steps must be >= 1 (an end-of-phase score each), got {value}")
    return args


def overrides_for(method: str, raw: list[str]) -> list[str]:
    """The ``KEY=VALUE`` overrides of ``raw`` that apply to ``method`` (unprefixed ones apply to all)."""
    out = []
    for item in raw:
        key, sep, _ = item.partition("=")
        if not sep:
            raise SystemExit(f"error: override {item!r} is not KEY=VALUE or METHOD:KEY=VALUE")
        prefix, colon, rest = key.partition(":")
        if colon and prefix in METHODS:
            if prefix == method:
                out.append(item[len(prefix) + 1 :])
        elif colon:
            raise SystemExit(f"error: override {item!r}: {prefix!r} is not a method; methods are {', '.join(METHODS)}")
        else:
            out.append(item)
    return out


def recipe_has_key(method: str, key: str) -> bool:
    with open(RECIPES / "configs" / f"{method}.yaml") as fileobj:
        return key in (yaml.safe_load(fileobj) or {})


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict | None:
    """Run (or resume, or skip) one recipe process; its ``done.json`` record, or ``None`` if it failed."""
    from diffrl.train import latest_checkpoint

    name = f"{method}_seed{seed}"
    run_dir, log_path = args.out / "runs" / name, args.out / "logs" / f"{name}.log"
    done = run_dir / "done.json"
    if done.exists():
        print(f"[skip] {name}: finished earlier", flush=True)
        return json.loads(done.read_text())
    argv = [
        f"seed={seed}",
        f"data.dataset_id={args.dataset}",
        f"offline.steps={args.offline_steps}",
        f"online.steps={args.online_steps}",
        f"eval.every={args.eval_every}",
        f"eval.episodes={args.eval_episodes}",
        "eval.exploration=deterministic",
        "logger.backend=csv",
    ]
    if recipe_has_key(method, "threads"):
        argv.append("threads=1")
    if args.hidden:
        argv += [
            f"{group}.hidden_sizes={args.hidden}"
            for group in ("actor", "critic", "value")
            if recipe_has_key(method, group)
        ]
    argv += overrides_for(method, args.override)
    if run_dir.exists() and latest_checkpoint(run_dir) is not None:
        argv.append(f"resume={run_dir}")  # an interrupted run continues in its own directory
        what = "resume"
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # started but never checkpointed: start over
        argv.append(f"logger.dir={run_dir}")
        what = "run"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DIFFRL_PROGRESS": "0"}
    command = [sys.executable, str(RECIPES / f"{method}.py"), *argv]
    print(f"[{what}] {name}: {' '.join(command[1:])}", flush=True)
    start, cpu = time.perf_counter(), _children_cpu()
    with open(log_path, "a") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if code != 0:
        print(f"[fail] {name}: exit status {code} after {seconds:.0f} s, see {log_path}", flush=True)
        return None
    summary = [line for line in log_path.read_text().splitlines() if line.strip()]
    record = {
        "method": method,
        "seed": seed,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "resumed": what == "resume",
        "summary": summary[-1] if summary else "",
    }
    done.write_text(json.dumps(record, indent=1))
    if not args.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # only needed to resume an unfinished run
    print(f"[done] {name}: {seconds:.0f} s wall, {cpu:.0f} s CPU | {record['summary']}", flush=True)
    return record


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def collect(args: argparse.Namespace) -> dict[str, dict[int, dict]]:
    """``{method: {seed: {"steps", "scores", "offline", "online", "seconds", "config"}}}`` of the finished runs."""
    from diffrl.train import read_metrics

    out: dict[str, dict[int, dict]] = {}
    for method in args.methods:
        for seed in args.seeds:
            run_dir = args.out / "runs" / f"{method}_seed{seed}"
            if not (run_dir / "done.json").exists():
                continue
            metrics = read_metrics(run_dir)
            if SCORE not in metrics:
                print(f"[warn] {run_dir} has no {SCORE} (dataset without reference scores?)")
                continue
            steps, scores = metrics[SCORE]
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            offline_steps = int(config["offline"]["steps"])
            at_switch = scores[steps == offline_steps]
            out.setdefault(method, {})[seed] = {
                "steps": steps,
                "scores": scores,
                "config": config,
                "offline": float(at_switch[-1]) if at_switch.size else float("nan"),
                "online": float(scores[-1])
                if steps[-1] == offline_steps + int(config["online"]["steps"])
                else float("nan"),
                **{
                    k: v
                    for k, v in json.loads((run_dir / "done.json").read_text()).items()
                    if k in ("seconds", "cpu_seconds")
                },
            }
    return out


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


def check_budgets(results: dict[str, dict[int, dict]]) -> list[str]:
    """Differences between a base method's saved config and its EDIS variant's on :data:`SHARED_KEYS`."""
    problems = []
    for base, edis in PAIRS:
        for seed in sorted(set(results.get(base, {})) & set(results.get(edis, {}))):
            a, b = results[base][seed]["config"], results[edis][seed]["config"]
            for key in SHARED_KEYS:
                left, right = _get(a, key), _get(b, key)
                if left != right:
                    problems.append(f"{base} vs {edis} seed {seed}: {key} differs ({left!r} vs {right!r})")
    return problems


def _mean_std(values: list[float]) -> str:
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return "n/a"
    std = arr.std(ddof=1) if arr.size > 1 else 0.0
    return f"{arr.mean():.1f} ± {std:.1f}"


def table(results: dict[str, dict[int, dict]], args: argparse.Namespace) -> str:
    lines = [
        f"EDIS offline-to-online on `{args.dataset}`: normalized score (mean ± sample std over seeds), "
        f"{args.offline_steps} offline updates + {args.online_steps} online env steps, "
        f"{args.eval_episodes} deterministic evaluation episodes.",
        "",
        "| method | seeds | end of offline | end of online | online gain | wall s / run | CPU s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in args.methods:
        runs = results.get(method, {})
        if not runs:
            lines.append(f"| {LABELS[method]} | 0 | n/a | n/a | n/a | n/a | n/a |")
            continue
        off = [r["offline"] for r in runs.values()]
        on = [r["online"] for r in runs.values()]
        gain = [b - a for a, b in zip(off, on)]
        wall = np.mean([r["seconds"] for r in runs.values()])
        cpu = np.mean([r.get("cpu_seconds", np.nan) for r in runs.values()])
        lines.append(
            f"| {LABELS[method]} | {len(runs)} ({', '.join(map(str, sorted(runs)))}) | {_mean_std(off)} | "
            f"{_mean_std(on)} | {_mean_std(gain)} | {wall:.0f} | {cpu:.0f} |"
        )
    for base, edis in PAIRS:
        common = sorted(set(results.get(base, {})) & set(results.get(edis, {})))
        if common:
            diff = [results[edis][s]["online"] - results[base][s]["online"] for s in common]
            lines.append("")
            lines.append(
                f"{LABELS[edis]} - {LABELS[base]} at the end of online, paired by seed: {_mean_std(diff)} "
                f"(per seed: {', '.join(f'{d:+.1f}' for d in diff)})"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[int, dict]], args: argparse.Namespace, path: Path) -> None:
    """One panel per (base, EDIS) pair: mean +- std band of the normalized score vs global step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [pair for pair in PAIRS if any(results.get(m) for m in pair)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4), squeeze=False, sharey=True)
    for ax, pair in zip(axes[0], pairs):
        for method, color, style in zip(pair, ("tab:blue", "tab:red"), ("--", "-")):
            runs = list(results.get(method, {}).values())
            if not runs:
                continue
            steps = sorted(set.intersection(*(set(r["steps"].tolist()) for r in runs)))
            values = np.array([[r["scores"][r["steps"] == s][-1] for s in steps] for r in runs])
            mean = values.mean(0)
            std = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
            ax.plot(steps, mean, style, color=color, marker="o", ms=3, label=f"{LABELS[method]} (n={len(runs)})")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
        ax.axvline(args.offline_steps, color="gray", ls=":", lw=1, label="offline -> online")
        ax.set_xlabel("global step (offline updates, then online env steps)")
        ax.set_title(f"{LABELS[pair[0]]} vs {LABELS[pair[1]]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("normalized score (mean ± std over seeds)")
    fig.suptitle(args.dataset, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args: argparse.Namespace) -> str:
    results = collect(args)
    text = table(results, args)
    problems = check_budgets(results)
    if problems:
        text += "\nConfig mismatches between base and EDIS runs:\n" + "\n".join(f"- {p}" for p in problems) + "\n"
    keys = ("offline", "online", "seconds", "cpu_seconds")
    summary = {
        m: {
            str(s): {**{k: r.get(k) for k in keys}, "steps": r["steps"].tolist(), "scores": r["scores"].tolist()}
            for s, r in runs.items()
        }
        for m, runs in results.items()
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    if results and not args.no_plot:
        plot(results, args, args.out / "normalized_score.png")
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    failed = []
    if not args.report_only:
        for seed in args.seeds:  # seed-major: a partial benchmark has every method on its first seeds
            for method in args.methods:
                if run_one(method, seed, args) is None:
                    failed.append(f"{method}_seed{seed}")
                report(args)  # tables and plot refreshed after every run
    print(report(args))
    print(f"written: {args.out / 'table.md'}, {args.out / 'normalized_score.png'}, {args.out / 'summary.json'}")
    if failed:
        print(f"failed runs (logs in {args.out / 'logs'}): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
