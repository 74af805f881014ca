"""The CPU benchmark suite: every method of diffrl against its baseline, >= 5 seeds per cell, one command.

    python benchmarks/suite.py                                  # every cell, seeds 0-4 (about 8 CPU-hours)
    python benchmarks/suite.py --list                           # the cells, their methods and estimated CPU cost
    nice -n 5 python benchmarks/suite.py --cells offline-pendulum --seeds 0 1 2 3 4
    python benchmarks/suite.py --cells o2o-pendulum --dry-run   # print the recipe commands, run nothing
    python benchmarks/suite.py --report-only                    # rebuild reports and README from finished runs
    python benchmarks/suite.py --budget tiny --seeds 0 1 --cells online-pendulum   # a few dozen steps per run

A cell is one task (dataset or env) and the methods compared on it; every method of a cell gets the same seeds, step
budgets and evaluation settings (``eval.every``, ``eval.episodes`` >= 10). Each (cell, method, seed) is one recipe
process, run the way a user runs it (``python recipes/<recipe>.py KEY=VALUE ...``), single-threaded
(``OMP_NUM_THREADS=1``, ``threads=1``, ``DIFFRL_PROGRESS=0``), one after the other. A finished run leaves
``done.json`` (wall and children CPU time, the command, its summary line) and is skipped on the next invocation (its
checkpoints are then deleted unless ``--keep-checkpoints``); an interrupted run is resumed from its last checkpoint
(``resume=RUN_DIR``), so a killed suite loses at most one evaluation period.

Outputs (``--out``, default ``benchmarks/results/suite``; ``--budget tiny`` defaults to ``.../suite-tiny``):

* ``<cell>/runs/<method>_seed<k>/`` run directories, ``<cell>/logs/<method>_seed<k>.log`` their output;
* ``<cell>/report.md`` and PNG curves, from :func:`diffrl.train.report.write_report` (IQM with a 95%
  stratified-bootstrap interval, mean +- std, paired differences against the cell's baseline, CPU time per run);
  offline-to-online cells get one report per (pair, phase) in ``<cell>/<pair>_<phase>/`` and an index in report.md;
* ``README.md``: one table per cell, its budget, the command that reproduces it and the machine.

Datasets: the pendulum data is built on first use (seconds); a cell whose dataset is not built locally otherwise is
skipped (reported with the reason) unless ``--build-datasets`` (the generated MuJoCo datasets take CPU-hours to build:
``python -m diffrl.data make ID``). ``-o [METHOD:]KEY=VALUE`` adds recipe overrides for a study (give it its own
``--out``: finished runs are skipped whatever their overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "suite"
BUDGETS = ("default", "tiny")
LAST_K = 3
PENDULUM = "diffrl/pendulum/medium-v0"
HOPPER_MEDIUM = "diffrl/hopper/medium-v0"
HOPPER_REPLAY = "diffrl/hopper/medium-replay-v0"
# Built on first use without asking (seconds); the generated MuJoCo datasets take CPU-hours: only with --build-datasets.
CHEAP_TO_BUILD = frozenset({PENDULUM})


@dataclass(frozen=True)
class Method:
    """One method of a cell: a recipe and the overrides that make it this method (beyond the cell's shared ones)."""

    name: str  # run directories are <name>_seed<k>; the report names the method by it
    recipe: str  # recipes/<recipe>.py
    overrides: tuple[str, ...] = ()
    tiny: tuple[str, ...] = ()  # extra overrides for --budget tiny only
    label: str = ""


@dataclass(frozen=True)
class Comparison:
    """One report of a cell: methods paired against ``base``, scored on ``phase`` (None: the whole run)."""

    name: str
    methods: tuple[str, ...]
    base: str
    phase: str | None = None


@dataclass
class Cell:
    """A task and the methods compared on it, with the budget every method shares."""

    name: str
    kind: str  # offline | online | o2o
    methods: tuple[Method, ...]
    base: str
    budget: str  # what a run is, in words (for --list and README)
    shared: Callable[[], list[str]]  # overrides of every method at the default budget (computed when used)
    tiny: tuple[str, ...]  # overrides of every method at --budget tiny
    cpu_minutes_per_seed: float  # estimate for all methods of one seed at the default budget
    dataset: str | None = None  # must be loadable (else the cell is skipped); gives the "dataset" row offline
    env: str | None = None  # must be constructible (else the cell is skipped)
    comparisons: tuple[Comparison, ...] = field(default_factory=tuple)

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)


def _flagship_budget() -> list[str]:
    """The flagship's (``recipes/edis_calql.py``) step and evaluation budget, given to all four o2o methods."""
    from diffrl.train.config import load_config

    cfg = load_config(RECIPES / "edis_calql.py", [])
    return [
        f"offline.steps={cfg.offline.steps}",
        f"online.steps={cfg.online.steps}",
        f"eval.every={cfg.eval.every}",
        f"eval.episodes={max(10, int(cfg.eval.episodes))}",
        "eval.exploration=deterministic",
    ]


_EDIS_TINY = ("edis.diffusion_steps=20", "edis.num_samples=256", "edis.energy_steps=5", "edis.sampler_steps=4")
_O2O_METHODS = (
    Method("calql", "calql", label="Cal-QL"),
    Method("edis_calql", "edis_calql", tiny=_EDIS_TINY, label="Cal-QL+EDIS"),
    Method("iql", "iql", label="IQL"),
    Method("edis_iql", "edis_iql", tiny=_EDIS_TINY, label="IQL+EDIS"),
)
_O2O_COMPARISONS = tuple(
    Comparison(f"{edis}_vs_{base}_{phase}", (base, edis), base, phase)
    for base, edis in (("calql", "edis_calql"), ("iql", "edis_iql"))
    for phase in ("online", "offline")
)


def _offline_methods() -> tuple[Method, ...]:
    return (
        Method("diffusion_ql", "diffusion_ql", label="Diffusion-QL"),
        # eta=0 drops the Q term, and one candidate per action makes the policy a plain sample of the diffusion model
        # (with 50 candidates the still-trained critic would re-rank them: no longer behaviour cloning).
        Method("diffusion_bc", "diffusion_ql", ("loss.eta=0", "eval.selection.num_candidates=1"), label="diffusion BC"),
        # Advantage weights exp(0 * A) = 1: IQL's actor loss becomes the log-likelihood of dataset actions under
        # CORL's Gaussian actor; no online phase.
        Method("gaussian_bc", "iql", ("online.steps=0", "loss.temperature=0"), label="Gaussian BC"),
    )


_OFFLINE_TINY = ("offline.steps=30", "eval.every=10", "eval.episodes=1", "optim.targets.actor_start=0")


def _offline_tiny(method: Method) -> tuple[str, ...]:
    # optim.targets exists only in diffusion_ql.yaml; iql's keys are checked by the recipe, so split per recipe.
    return _OFFLINE_TINY if method.recipe == "diffusion_ql" else _OFFLINE_TINY[:3]


def _offline_cell(
    name: str, *, steps: int, budget: str, tiny: tuple[str, ...], cpu_minutes_per_seed: float, dataset: str
) -> Cell:
    """Diffusion-QL, diffusion BC (the base) and Gaussian BC on ``dataset``: ``steps`` updates, evaluation every 1000
    over 10 episodes."""
    return Cell(
        name,
        "offline",
        _offline_methods(),
        base="diffusion_bc",
        budget=budget,
        shared=lambda: [f"offline.steps={steps}", "eval.every=1000", "eval.episodes=10"],
        tiny=tiny,
        cpu_minutes_per_seed=cpu_minutes_per_seed,
        dataset=dataset,
    )


_ONLINE_METHODS = (Method("qsm", "qsm", label="QSM"), Method("sac", "sac", label="SAC (TorchRL SACLoss)"))
_ONLINE_TINY = ("online.steps=60", "online.random_steps=20", "online.batch_size=16", "eval.every=20", "eval.episodes=1")

CELLS: dict[str, Cell] = {
    c.name: c
    for c in (
        _offline_cell(
            "offline-pendulum",
            steps=4000,
            budget="4000 updates (diffusion_ql.yaml's default; Gaussian BC too), evaluation every 1000, 10 episodes",
            tiny=(),
            cpu_minutes_per_seed=6.0,  # measured: 100 / 109 / 102 CPU-s (DQL / diffusion BC / Gaussian BC), seed 0
            dataset=PENDULUM,
        ),
        _offline_cell(
            "offline-hopper",
            steps=5000,
            budget="5000 updates at the recipes' CPU network sizes, evaluation every 1000, 10 episodes",
            tiny=("env.max_episode_steps=50",),
            cpu_minutes_per_seed=12.0,  # pendulum's per-update cost x 5/4, plus longer (up to 1000-step) evaluations
            dataset=HOPPER_MEDIUM,
        ),
        Cell(
            "online-pendulum",
            "online",
            _ONLINE_METHODS,
            base="sac",
            budget="6000 env steps, 1000 random (both recipes' defaults), evaluation every 1000, 10 episodes",
            shared=lambda: ["online.steps=6000", "online.random_steps=1000", "eval.every=1000", "eval.episodes=10"],
            tiny=_ONLINE_TINY,
            cpu_minutes_per_seed=8.0,
            env="Pendulum-v1",
        ),
        Cell(
            "online-hopper",
            "online",
            _ONLINE_METHODS,
            base="sac",
            budget="Hopper-v5, 20000 env steps, 5000 random, evaluation every 4000, 10 episodes; recipes' network "
            "sizes (2 x 256)",
            shared=lambda: [
                "env.name=Hopper-v5",
                "online.steps=20000",
                "online.random_steps=5000",
                "eval.every=4000",
                "eval.episodes=10",
            ],
            tiny=("env.name=Hopper-v5", "env.max_episode_steps=50", *_ONLINE_TINY),
            cpu_minutes_per_seed=25.0,
            env="Hopper-v5",
        ),
        Cell(
            "o2o-pendulum",
            "o2o",
            _O2O_METHODS,
            base="calql",
            budget="the flagship's budget (recipes/configs/edis_calql.yaml: offline.steps, online.steps, eval.every) "
            "for all four, each recipe's own networks and learning rates, 10 evaluation episodes",
            shared=_flagship_budget,
            tiny=("offline.steps=30", "online.steps=30", "eval.every=10", "eval.episodes=1"),
            cpu_minutes_per_seed=22.0,
            dataset=PENDULUM,
            comparisons=_O2O_COMPARISONS,
        ),
        Cell(
            "o2o-hopper",
            "o2o",
            _O2O_METHODS,
            base="calql",
            budget="3000 offline updates + 3000 env steps, evaluation every 750, 10 episodes, 2 x 128 networks for "
            "all, normalised observations and rewards, EDIS at the recipes' CPU sizes",
            shared=lambda: [
                "data.normalize_obs=true",
                "data.normalize_reward=true",
                "offline.steps=3000",
                "online.steps=3000",
                "eval.every=750",
                "eval.episodes=10",
                "eval.exploration=deterministic",
                "actor.hidden_sizes=[128,128]",
                "critic.hidden_sizes=[128,128]",
            ],
            tiny=(
                "env.max_episode_steps=50",
                "offline.steps=30",
                "online.steps=30",
                "eval.every=10",
                "eval.episodes=1",
            ),
            cpu_minutes_per_seed=20.0,
            dataset=HOPPER_REPLAY,
            comparisons=_O2O_COMPARISONS,
        ),
    )
}
# IQL's state-value network shares the 2 x 128 size in o2o-hopper (iql.yaml has a value group, calql.yaml none).
_METHOD_EXTRA = {
    ("o2o-hopper", "iql"): ("value.hidden_sizes=[128,128]",),
    ("o2o-hopper", "edis_iql"): ("value.hidden_sizes=[128,128]",),
}


# ------------------------------------------------------------------------------------------------------- commands
def recipe_argv(cell: Cell, method: Method, seed: int, budget: str, extra: Sequence[str] = ()) -> list[str]:
    """The recipe's ``KEY=VALUE`` arguments for one run (without ``logger.dir`` / ``resume``); ``extra``: ``-o`` items.

    Example:
        >>> cell = CELLS["offline-pendulum"]
        >>> argv = recipe_argv(cell, cell.method("diffusion_bc"), 3, "default")
        >>> "seed=3" in argv and "loss.eta=0" in argv and "eval.episodes=10" in argv
        True
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r} is not accepted; use one of {', '.join(BUDGETS)}")
    argv = [f"seed={seed}", "threads=1", "logger.backend=csv"]
    if cell.dataset is not None:
        argv.append(f"data.dataset_id={cell.dataset}")
    if budget == "default":
        argv += cell.shared()
    else:
        argv += list(cell.tiny)
        if cell.kind == "offline":
            argv += list(_offline_tiny(method))
    argv += list(method.overrides) + list(_METHOD_EXTRA.get((cell.name, method.name), ()))
    if budget == "tiny":
        argv += list(method.tiny)
    return argv + overrides_for(method.name, extra)


def overrides_for(method: str, raw: Sequence[str]) -> list[str]:
    """The ``[METHOD:]KEY=VALUE`` items of ``raw`` that apply to ``method`` (unprefixed ones apply to every method).

    Example:
        >>> overrides_for("edis_iql", ["eval.episodes=20", "edis_iql:online.extra_updates=20", "iql:seed=1"])
        ['eval.episodes=20', 'online.extra_updates=20']
    """
    out = []
    for item in raw:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"override {item!r} is not KEY=VALUE or METHOD:KEY=VALUE (e.g. edis_iql:edis.num_samples=5000)"
            )
        prefix, colon, _ = key.partition(":")
        if not colon:
            out.append(item)
        elif prefix == method:
            out.append(item[len(prefix) + 1 :])
    return out


def run_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(cell: Cell, method: Method, seed: int, args: argparse.Namespace) -> dict | None:
    """Run, resume or skip one recipe process; its ``done.json`` record, or None if it failed (or was a dry run)."""
    from diffrl.train import latest_checkpoint

    name = run_name(method.name, seed)
    cell_dir = args.out / cell.name
    run_dir, log_path = cell_dir / "runs" / name, cell_dir / "logs" / f"{name}.log"
    done = run_dir / "done.json"
    if done.exists():
        if not args.dry_run:
            print(f"[skip] {cell.name}/{name}: finished earlier", flush=True)
        return json.loads(done.read_text())
    argv = recipe_argv(cell, method, seed, args.budget, args.override)
    if run_dir.exists() and latest_checkpoint(run_dir) is not None:
        argv.append(f"resume={run_dir}")  # an interrupted run continues in its own directory
        what = "resume"
    else:
        argv.append(f"logger.dir={run_dir}")
        what = "run"
    command = [sys.executable, str(RECIPES / f"{method.recipe}.py"), *argv]
    shown = " ".join(shlex.quote(part) for part in ["python", os.path.relpath(command[1], ROOT), *argv])
    if args.dry_run:
        print(shown, flush=True)
        return None
    if what == "run" and run_dir.exists():
        shutil.rmtree(run_dir)  # started but never checkpointed: start over
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DIFFRL_PROGRESS": "0"}
    print(f"[{what}] {cell.name}/{name}: {shown}", flush=True)
    start, cpu = time.perf_counter(), _children_cpu()
    with open(log_path, "a") as log:
        log.write(f"$ {shown}\n")
        log.flush()
        code = args.runner(command, log, env)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if code != 0:
        print(f"[fail] {cell.name}/{name}: exit status {code} after {seconds:.0f} s, see {log_path}", flush=True)
        return None
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    record = {
        "cell": cell.name,
        "method": method.name,
        "seed": seed,
        "budget": args.budget,
        "command": shown,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),  # the process tree's CPU; report.py prefers the run's train/cpu_seconds
        "resumed": what == "resume",
        "summary": lines[-1] if lines else "",
    }
    from diffrl.train.files import atomic_write_text

    atomic_write_text(done, json.dumps(record, indent=1) + "\n")
    if not args.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # only needed to resume an unfinished run
    print(f"[done] {cell.name}/{name}: {seconds:.0f} s wall, {cpu:.0f} s CPU | {record['summary']}", flush=True)
    return record


def subprocess_runner(command: list[str], log, env: dict) -> int:
    """Run one recipe process with its output to ``log``; the exit status."""
    return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode


# ----------------------------------------------------------------------------------------------------- preflight
def unavailable(cell: Cell, build: bool) -> str | None:
    """Why ``cell`` cannot run on this machine (dataset not built, env missing), or None."""
    if cell.dataset is not None:
        build = build or cell.dataset in CHEAP_TO_BUILD
        from diffrl.data import local_dataset_ids

        if cell.dataset not in local_dataset_ids() and not build:
            return (
                f"dataset {cell.dataset} is not built here (build it with `python -m diffrl.data make {cell.dataset}` "
                "or pass --build-datasets; the generated MuJoCo datasets take CPU-hours)"
            )
        try:
            from diffrl.data import load_dataset

            load_dataset(cell.dataset, batch_size=None, build=build, download=False)
        except Exception as err:  # noqa: BLE001 - any failure to load means the cell cannot run; say why
            return f"dataset {cell.dataset} failed to load: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
    if cell.env is not None:
        try:
            import gymnasium as gym

            gym.make(cell.env).close()
        except Exception as err:  # noqa: BLE001
            return f"env {cell.env} cannot be made: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
    return None


def dataset_row(dataset_id: str) -> dict | None:
    """The dataset's own episodes as a fixed baseline: normalized score per episode, IQM, mean +- std, n."""
    from diffrl.data import load_dataset

    try:
        data = load_dataset(dataset_id, batch_size=None, build=False, download=False)
    except Exception:  # noqa: BLE001 - no row when the dataset is not here; the cell says why elsewhere
        return None
    if not data.has_reference_scores or data.episode_returns is None:
        return None
    scores = np.asarray(data.normalized_score(np.asarray(data.episode_returns, dtype=np.float64)))
    from scipy.stats import trim_mean

    return {
        "episodes": int(scores.size),
        "iqm": float(trim_mean(scores, 0.25)),
        "mean": float(scores.mean()),
        "std": float(scores.std(ddof=1)) if scores.size > 1 else 0.0,
    }


# --------------------------------------------------------------------------------------------------------- report
def finished_runs(cell_dir: Path, methods: Sequence[str], seeds: Sequence[int] | None = None) -> list[Path]:
    """Run directories of ``cell_dir`` with done.json, in method then seed order (only ``seeds`` when given)."""
    out = []
    for method in methods:
        dirs = sorted((cell_dir / "runs").glob(f"{method}_seed*"), key=lambda p: int(p.name.rsplit("seed", 1)[1]))
        for run_dir in dirs:
            seed = int(run_dir.name.rsplit("seed", 1)[1])
            if (run_dir / "done.json").is_file() and (seeds is None or seed in seeds):
                out.append(run_dir)
    return out


def _dataset_table_row(row: dict, columns: int, base_column: bool) -> str:
    cells = [
        "dataset (its own episodes)",
        f"{row['episodes']} episodes",
        f"{row['iqm']:.1f} (fixed)",
        f"{row['mean']:.1f} +- {row['std']:.1f}",
    ]
    if base_column:
        cells += ["", ""]
    cells.append("0 s")
    cells += [""] * (columns - len(cells))
    return "| " + " | ".join(cells) + " |"


def cell_report(cell: Cell, args: argparse.Namespace) -> str:
    """Write ``<cell>/report.md`` (+ PNGs) from the finished runs; return the README section of the cell."""
    from diffrl.train.files import atomic_write_text
    from diffrl.train.report import write_report

    cell_dir = args.out / cell.name
    names = [m.name for m in cell.methods]
    budget = cell.budget if args.budget == "default" else "tiny (a few dozen steps per run, a smoke test, not a result)"
    lines = [f"## {cell.name}", "", f"Budget: {budget}."]
    state = _read_state(cell_dir)
    if state.get("skipped"):
        lines += ["", f"**Skipped**: {state['skipped']}"]
    runs = finished_runs(cell_dir, names)
    if not runs:
        lines += ["", "No finished run yet."]
        return "\n".join(lines) + "\n"
    seeds = sorted({int(r.name.rsplit("seed", 1)[1]) for r in runs})
    lines += [
        f"Seeds: {', '.join(map(str, seeds))}. Labels: "
        + ", ".join(f"`{m.name}` = {m.label or m.name}" for m in cell.methods)
        + ".",
        "",
        "Command: `"
        + reproduce_command(cell, seeds, args)
        + "`"
        + (f" (last invocation: `{state['last_command']}`)" if state.get("last_command") else ""),
    ]
    row = dataset_row(cell.dataset) if cell.kind == "offline" and cell.dataset else None
    comparisons = cell.comparisons or (Comparison(cell.name, tuple(names), cell.base, None),)
    index = [f"# {cell.name}", ""]
    for comp in comparisons:
        comp_runs = [r for r in runs if r.name.rsplit("_seed", 1)[0] in comp.methods]
        out = cell_dir if not cell.comparisons else cell_dir / comp.name
        title = f"{' vs '.join(reversed(comp.methods)) if cell.comparisons else 'all methods'}"
        title += f", {comp.phase} phase" if comp.phase else ""
        lines += ["", f"### {title} (paired against `{comp.base}`)", ""]
        if not comp_runs:
            lines.append("No finished run yet.")
            continue
        # Until the base has a finished run there is nothing to pair against: report the others unpaired.
        base = comp.base if any(r.name.startswith(comp.base + "_seed") for r in comp_runs) else None
        if base is None:
            lines += [f"(`{comp.base}` has no finished run yet: no paired difference.)", ""]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fewer than 5 seeds, seeds on one side only: visible in the table
                report = write_report(comp_runs, out, base=base, last_k=LAST_K, phase=comp.phase, reps=args.reps)
        except (ValueError, FileNotFoundError, ImportError) as err:
            lines.append(f"No report: {' '.join(str(err).split())}")
            continue
        table = report.table
        if row is not None:
            columns = table.splitlines()[0].count("|") - 1
            table += "\n" + _dataset_table_row(row, columns, base is not None)
            text = report.path.read_text().replace(report.table, table, 1)
            atomic_write_text(report.path, text)
        rel = report.path.parent.relative_to(args.out)
        lines += [table, ""]
        lines += [f"![{cell.name} {comp.name}]({rel}/{f.name})" for f in report.figures]
        index += [f"## {title}", "", table, "", *[f"![{f.name}]({f.relative_to(cell_dir)})" for f in report.figures]]
        index.append("")
    if cell.comparisons:
        atomic_write_text(cell_dir / "report.md", "\n".join(index) + "\n")
    return "\n".join(lines) + "\n"


def reproduce_command(cell: Cell, seeds: Sequence[int], args: argparse.Namespace) -> str:
    parts = ["python benchmarks/suite.py", "--cells", cell.name, "--seeds", *map(str, seeds)]
    if args.budget != "default":
        parts += ["--budget", args.budget]
    override = _read_state(args.out / cell.name).get("override", args.override)  # the runs' own, on --report-only
    parts += [f"-o {shlex.quote(item)}" for item in override]
    if args.out != _default_out(args.budget):
        parts += ["--out", os.path.relpath(args.out, ROOT) if args.out.is_relative_to(ROOT) else str(args.out)]
    return " ".join(parts)


def _read_state(cell_dir: Path) -> dict:
    path = cell_dir / "cell.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(cell_dir: Path, state: dict) -> None:
    from diffrl.train.files import atomic_write_text

    cell_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell_dir / "cell.json", json.dumps(state, indent=1) + "\n")


def machine() -> str:
    """CPU model, core count, torch version and platform, in one line."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, Python {platform.python_version()}"


def write_readme(args: argparse.Namespace, fresh: dict[str, str] | None = None) -> Path:
    """Rebuild ``<out>/README.md`` from every cell directory present in ``--out``.

    ``fresh`` holds the sections of cells this invocation has just reported (their reports are not rebuilt again).
    """
    from diffrl.train.files import atomic_write_text

    sections = []
    for cell in CELLS.values():
        if (args.out / cell.name).is_dir():
            sections.append((fresh or {}).get(cell.name) or cell_report(cell, args))
    lines = [
        "# diffrl CPU benchmark suite",
        "",
        "Written by `benchmarks/suite.py` (its docstring says how runs are made); rebuild with "
        f"`python benchmarks/suite.py --report-only{' --budget tiny' if args.budget == 'tiny' else ''}`.",
        "",
        f"Machine: {machine()}. Every run single-threaded (`OMP_NUM_THREADS=1`, `threads=1`), one at a time per "
        "suite process, on a shared machine (other jobs, or a second suite process on other cells, may share the "
        "cores): CPU times are the run's own (`train/cpu_seconds`), wall times in each `done.json`.",
        "",
        f"Score of a run: the mean of its last {LAST_K} evaluations (`eval/normalized_score` when the task has "
        "reference scores, else `eval/return`). Across seeds: IQM with a 95% stratified-bootstrap interval "
        "(rliable), mean +- std, and the paired difference against the cell's baseline on the same seeds. "
        "Offline rows `dataset` are the dataset's own episodes (fixed, no training).",
        "",
        *sections,
    ]
    return atomic_write_text(args.out / "README.md", "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------- main
def _default_out(budget: str) -> Path:
    return DEFAULT_OUT if budget == "default" else DEFAULT_OUT.with_name("suite-tiny")


def list_cells(seeds: Sequence[int]) -> str:
    lines, total = [], 0.0
    for cell in CELLS.values():
        cost = cell.cpu_minutes_per_seed * len(seeds)
        total += cost
        methods = ", ".join(m.label or m.name for m in cell.methods)
        lines.append(f"{cell.name:17s} ~{cost:5.0f} CPU-min for {len(seeds)} seeds | {methods}")
        lines.append(f"{'':17s} budget: {cell.budget}")
    lines.append(f"{'all':17s} ~{total:5.0f} CPU-min ({total / 60:.1f} CPU-hours)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), metavar="CELL", help=f"of {', '.join(CELLS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", choices=BUDGETS, default="default", help="tiny: a few dozen steps per run")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/suite (suite-tiny)")
    parser.add_argument("--list", action="store_true", help="print the cells and their estimated CPU cost")
    parser.add_argument("--dry-run", action="store_true", help="print the recipe commands, run nothing")
    parser.add_argument("--report-only", action="store_true", help="rebuild reports and README from finished runs")
    parser.add_argument("--build-datasets", action="store_true", help="build a missing registered dataset first")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints of finished runs")
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="[METHOD:]KEY=VALUE",
        help="extra recipe override for every run, or for one method's runs with a METHOD: prefix (e.g. -o "
        "edis_calql:edis.synthetic_fraction=0.2); repeatable. A study, not the suite: give it its own --out",
    )
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the reports (default 2000)")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown:
        parser.error(f"unknown cell(s) {', '.join(unknown)}; cells are {', '.join(CELLS)} (--list describes them)")
    known = {m.name for c in args.cells for m in CELLS[c].methods}
    for item in args.override:
        key, sep, _ = item.partition("=")
        prefix, colon, _ = key.partition(":")
        if not sep or (colon and prefix not in known):
            parser.error(
                f"-o {item!r} is not KEY=VALUE or METHOD:KEY=VALUE with METHOD one of the selected cells' methods "
                f"({', '.join(sorted(known))})"
            )
    if len(args.seeds) != len(set(args.seeds)):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    args.out = (args.out or _default_out(args.budget)).resolve()
    return args


def main(argv: Sequence[str] | None = None, runner: Callable | None = None) -> int:
    """Run the selected cells (see the module docstring); returns the exit status (1 if a run failed)."""
    args = parse_args(argv)
    args.runner = runner or subprocess_runner
    if args.list:
        print(list_cells(args.seeds))
        return 0
    import torch

    torch.set_num_threads(1)  # the suite process itself only loads datasets and bootstraps
    failed: list[str] = []
    sections: dict[str, str] = {}  # README sections of the cells reported by this invocation
    command = " ".join(["python benchmarks/suite.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    for name in args.cells:
        cell = CELLS[name]
        cell_dir = args.out / name
        if args.report_only:
            continue
        reason = None if args.dry_run else unavailable(cell, args.build_datasets)
        if reason is not None:
            print(f"[skip cell] {name}: {reason}", flush=True)
            _write_state(cell_dir, {**_read_state(cell_dir), "skipped": reason})
            continue
        if args.dry_run:
            print(f"# {name}: {cell.budget if args.budget == 'default' else 'tiny budget'}")
        else:
            _write_state(cell_dir, {"last_command": command, "override": args.override, "machine": machine()})
        for seed in args.seeds:  # seed-major: a partial cell has every method on its first seeds
            for method in cell.methods:
                record = run_one(cell, method, seed, args)
                if record is None and not args.dry_run:
                    failed.append(f"{name}/{run_name(method.name, seed)}")
        if not args.dry_run:
            sections[name] = cell_report(cell, args)
            print(sections[name], flush=True)
    if not args.dry_run:
        path = write_readme(args, sections)
        print(f"written: {path} and <cell>/report.md in {args.out}")
    if failed:
        print(f"failed runs (logs in <cell>/logs): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
