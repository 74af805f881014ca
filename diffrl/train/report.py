"""Scores, intervals and comparisons of runs across seeds, following rliable (Agarwal et al., NeurIPS 2021).

A run's score is the mean of its last ``K`` evaluations (of the whole run, or of one phase of an offline-to-online
run). Across seeds a method is summarised by its interquartile mean (IQM) with a 95% stratified-bootstrap interval,
computed with the ``rliable`` package, beside the plain mean +- standard deviation; a method is compared with a base
by paired differences on the seeds both ran. The command line turns run directories into a markdown table and PNG
curves::

    python -m diffrl.train.report runs/calql_* runs/edis_calql_* --base calql --phase online --out report/
    python benchmarks/report.py RUN_DIR... --method-of edis=runs/edis_* --out report/

Runs are grouped into methods by directory name without its seed suffix (``calql_3``, ``calql_seed3`` -> ``calql``)
unless ``--method-of NAME=GLOB`` says otherwise; seeds are read from each run's ``config.yaml``. The statistics need
``pip install 'diffrl[report]'``; :func:`run_summary` and :func:`plot_run` (one run's end) do not.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffrl.train.metrics import read_metrics

__all__ = [
    "Aggregate",
    "MethodResult",
    "aggregate",
    "compare",
    "group_runs",
    "main",
    "markdown_table",
    "paired_difference",
    "plot_run",
    "run_score",
    "run_summary",
    "switch_step",
    "write_report",
]

PHASES = ("offline", "online")
DEFAULT_METRIC = "eval/normalized_score"
MIN_SEEDS = 5  # rliable's intervals mean little below this; fewer seeds warn
# Where a run may record its CPU time: a scalar whose name ends in one of these, or a key of a JSON file in the run dir.
_CPU_NAMES = ("cpu_seconds", "cpu_time")
_CPU_FILES = ("done.json", "summary.json", "result.json")


# --------------------------------------------------------------------------------------------------------- rliable
def _rliable() -> tuple[Any, Any]:
    """``(rliable.library, rliable.metrics)``, or a one-line ImportError with the fix."""
    fix = "pip install 'diffrl[report]'"
    try:
        import arch
        from rliable import library, metrics
    except ImportError as err:
        raise ImportError(f"diffrl.train.report needs the rliable package ({err}); {fix}") from None
    except TypeError as err:  # arch < 8 against pandas >= 3 fails inside a decorator at import time
        raise ImportError(f"rliable's dependency arch failed to import ({err}); it needs pandas<3: {fix}") from None
    if int(arch.__version__.split(".")[0]) >= 8:
        # arch 8 dropped the random_state argument rliable 1.2 passes to every bootstrap.
        raise ImportError(f"rliable's bootstrap does not work with arch {arch.__version__} (needs arch<8); {fix}")
    return library, metrics


def _bootstrap(
    scores: np.ndarray, func: Callable[[np.ndarray], np.ndarray], reps: int, confidence: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Point estimates and ``(2, n)`` interval of ``func`` under rliable's stratified bootstrap of ``scores``' rows."""
    library, _ = _rliable()
    # rliable's resampling draws from NumPy's global generator (its random_state argument is not used for the
    # indices), so seed that one and restore it: the intervals are reproducible and the caller's stream untouched.
    state = np.random.get_state()  # noqa: NPY002 (rliable uses the legacy global generator)
    np.random.seed(seed)  # noqa: NPY002
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # arch's deprecation chatter
            points, intervals = library.get_interval_estimates(
                {"x": scores}, func, reps=reps, confidence_interval_size=confidence
            )
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return np.asarray(points["x"], dtype=np.float64), np.asarray(intervals["x"], dtype=np.float64)


# ------------------------------------------------------------------------------------------------------- one run
def _config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def switch_step(run_dir: str | os.PathLike) -> int | None:
    """The global step where an offline-to-online run went online (``offline.steps`` in its config.yaml), else None.

    Example:
        >>> import tempfile
        >>> from diffrl.train.metrics import MetricLogger
        >>> with MetricLogger(tempfile.mkdtemp(), config={"offline": {"steps": 300}, "online": {"steps": 100}}) as log:
        ...     pass
        >>> switch_step(log.dir)
        300
    """
    config = _config(Path(run_dir))
    offline, online = config.get("offline"), config.get("online")
    if not isinstance(offline, Mapping) or not isinstance(online, Mapping) or "steps" not in offline:
        return None
    # A run with an empty phase (offline.steps=0: online only; online.steps=0: offline only) has no switch.
    if int(offline["steps"]) <= 0 or int(online.get("steps") or 0) <= 0:
        return None
    return int(offline["steps"])


def _evaluations(run_dir: Path, metric: str, phase: str | None) -> tuple[np.ndarray, np.ndarray]:
    runs = read_metrics(run_dir)
    if metric not in runs:
        evals = sorted(name for name in runs if name.startswith("eval/")) or sorted(runs)
        raise ValueError(f"run {run_dir} has no metric {metric!r}; it has: {', '.join(evals) or '(none)'}")
    steps, values = runs[metric]
    if phase is None:
        return steps, values
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r} is not accepted; use 'offline', 'online' or None (the whole run)")
    switch = switch_step(run_dir)
    if switch is None:
        raise ValueError(
            f"phase={phase!r} needs an offline-to-online run, but {run_dir}/config.yaml has no offline.steps and "
            "online section; drop the phase"
        )
    keep = steps <= switch if phase == "offline" else steps > switch
    return steps[keep], values[keep]


def run_score(
    run_dir: str | os.PathLike, metric: str = DEFAULT_METRIC, last_k: int = 3, phase: str | None = None
) -> float:
    """A run's score: the mean of its last ``last_k`` evaluations of ``metric``.

    Args:
        run_dir: a run directory written by :class:`~diffrl.train.metrics.MetricLogger`.
        metric: the evaluation metric (``eval/normalized_score`` needs a dataset with reference scores;
            ``eval/return`` always exists).
        last_k: how many of the latest evaluations to average (rliable: several, not the single last one).
        phase: ``None`` for the whole run; ``"offline"`` for evaluations at steps ``<= offline.steps`` (read from the
            run's ``config.yaml``), ``"online"`` for the ones after.

    Raises:
        ValueError: the metric is missing, the phase is unknown or the run is not offline-to-online, or the run has
            fewer than ``last_k`` evaluations (the message names the run and the count).

    Example:
        >>> import tempfile
        >>> from diffrl.train.metrics import MetricLogger
        >>> with MetricLogger(tempfile.mkdtemp(), config={"offline": {"steps": 20}, "online": {"steps": 20}}) as log:
        ...     for step, score in [(10, 1.0), (20, 2.0), (30, 4.0), (40, 6.0)]:
        ...         log.log({"eval/normalized_score": score}, step)
        >>> run_score(log.dir, last_k=2), run_score(log.dir, last_k=2, phase="offline")
        (5.0, 1.5)
    """
    run_dir = Path(run_dir)
    if int(last_k) < 1:
        raise ValueError(f"last_k={last_k} is not accepted; use a positive number of evaluations (default 3)")
    _, values = _evaluations(run_dir, metric, phase)
    where = f" in its {phase} phase" if phase else ""
    if len(values) < last_k:
        raise ValueError(
            f"run {run_dir} has {len(values)} evaluation(s) of {metric}{where}, fewer than last_k={last_k}; "
            "use a smaller last_k or evaluate more often (eval.every)"
        )
    return float(np.mean(values[-int(last_k) :]))


def _pick_metric(metrics: Mapping[str, Any], metric: str | None) -> str:
    if metric is not None:
        return metric
    return DEFAULT_METRIC if DEFAULT_METRIC in metrics else "eval/return"


def run_summary(run_dir: str | os.PathLike, last_k: int = 3, metric: str | None = None) -> str:
    """One line for the end of a run: each phase's score as mean +- std of its last ``last_k`` evaluations.

    The std is across those evaluations (how much the end of the run moves), not across episodes. A phase with fewer
    evaluations than ``last_k`` uses those it has, and says how many. ``metric`` defaults to the normalized score when
    the run logged it, else the return.

    Example:
        >>> import tempfile
        >>> from diffrl.train.metrics import MetricLogger
        >>> with MetricLogger(tempfile.mkdtemp(), config={"offline": {"steps": 30}, "online": {"steps": 30}}) as log:
        ...     for step, score in zip(range(10, 70, 10), [50.0, 52.0, 54.0, 60.0, 70.0, 80.0]):
        ...         log.log({"eval/normalized_score": score}, step)
        >>> run_summary(log.dir)
        'normalized score offline 52.0 +- 1.6 (last 3 evals) -> online 70.0 +- 8.2 (last 3 evals)'
    """
    run_dir = Path(run_dir)
    metric = _pick_metric(read_metrics(run_dir), metric)
    label = metric.split("/")[-1].replace("_", " ")
    switch = switch_step(run_dir)

    def part(phase: str | None) -> str:
        _, values = _evaluations(run_dir, metric, phase)
        if len(values) == 0:
            return "n/a (no evals)"
        last = values[-int(last_k) :]
        evals = "eval" if len(last) == 1 else "evals"
        return f"{last.mean():.1f} +- {last.std():.1f} (last {len(last)} {evals})"

    if switch is None:
        return f"{label} {part(None)}"
    return f"{label} offline {part('offline')} -> online {part('online')}"


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, metric: str | None = None) -> Path:
    """Draw one run's learning curve, the per-evaluation spread shaded and the phase switch dashed; return the PNG.

    See :func:`diffrl.train.plot.plot_run` (the same function).

    Example:
        >>> import tempfile
        >>> from diffrl.train.metrics import MetricLogger
        >>> with MetricLogger(tempfile.mkdtemp()) as log:
        ...     log.log({"eval/return": -10.0, "eval/return_std": 2.0}, 5)
        >>> plot_run(log.dir).name
        'learning_curve.png'
    """
    from diffrl.train.plot import plot_run as _plot_run

    return _plot_run(run_dir, out, metric=metric)


def _cpu_seconds(run_dir: Path) -> float | None:
    """The CPU time a run recorded (a ``*cpu_seconds`` scalar, or a key of done.json/summary.json), else None."""
    try:
        metrics = read_metrics(run_dir)
    except FileNotFoundError:
        metrics = {}
    for name, (_, values) in metrics.items():
        if name.split("/")[-1] in _CPU_NAMES and len(values):
            return float(values[-1])
    for filename in _CPU_FILES:
        path = run_dir / filename
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for key in _CPU_NAMES:
                if isinstance(record, dict) and isinstance(record.get(key), (int, float)):
                    return float(record[key])
    return None


# ----------------------------------------------------------------------------------------------- across seeds
@dataclass
class Aggregate:
    """Scores of several runs (or paired differences) summarised across seeds.

    Attributes:
        scores: one score per run (in ``seeds`` order).
        seeds: the seed of each score (``None`` where unknown).
        iqm, iqm_ci: interquartile mean and its stratified-bootstrap interval ``(low, high)``.
        mean, mean_ci: mean and its bootstrap interval.
        std: standard deviation across runs (``ddof=1``; 0 for one run).
        confidence: the interval's coverage (0.95).
    """

    scores: np.ndarray
    seeds: list
    iqm: float
    iqm_ci: tuple[float, float]
    mean: float
    mean_ci: tuple[float, float]
    std: float
    confidence: float = 0.95

    @property
    def n(self) -> int:
        """The number of runs."""
        return len(self.scores)


def aggregate(
    scores: Sequence[float] | np.ndarray,
    seeds: Sequence | None = None,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Aggregate:
    """IQM and mean of ``scores`` (one per run) with ``confidence`` stratified-bootstrap intervals (rliable).

    ``reps`` bootstrap resamples (rliable's paper uses 50000; 2000 keeps the interval ends stable to a few percent of
    their width at a CPU cost of seconds); ``seed`` makes the intervals reproducible. Fewer than 5 runs warn.

    Example:
        >>> agg = aggregate([10.0, 20.0, 30.0, 40.0, 1000.0], reps=200)
        >>> agg.iqm, agg.mean, agg.iqm_ci[0] <= agg.iqm <= agg.iqm_ci[1]
        (30.0, 220.0, True)
    """
    _, metrics = _rliable()
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("no scores to aggregate; pass at least one run")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"scores must be finite; received {values.tolist()}")
    if values.size < MIN_SEEDS:
        warnings.warn(
            f"{values.size} run(s) aggregated; rliable's intervals need >= {MIN_SEEDS} seeds to mean much",
            stacklevel=2,
        )

    def stats(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), np.mean(x)])

    # rliable's layout: runs x tasks, here one task.
    points, intervals = _bootstrap(values[:, None], stats, reps, confidence, seed)
    return Aggregate(
        scores=values,
        seeds=list(seeds) if seeds is not None else [None] * values.size,
        iqm=float(points[0]),
        iqm_ci=(float(intervals[0, 0]), float(intervals[1, 0])),
        mean=float(points[1]),
        mean_ci=(float(intervals[0, 1]), float(intervals[1, 1])),
        std=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        confidence=confidence,
    )


def paired_difference(
    method: Mapping[Any, float], base: Mapping[Any, float], *, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Aggregate:
    """``method - base`` on the seeds both ran (``{seed: score}`` each), aggregated like :func:`aggregate`.

    Pairing by seed removes what the seed decides for both (dataset subset, env draws), so the interval of the
    difference is narrower than the two intervals side by side suggest. Seeds only one side ran are left out (warned).

    Example:
        >>> diff = paired_difference({0: 12.0, 1: 15.0, 2: 11.0, 3: 20.0, 4: 14.0},
        ...                          {0: 10.0, 1: 10.0, 2: 10.0, 3: 10.0, 4: 10.0}, reps=200)
        >>> diff.seeds, round(diff.mean, 6), diff.iqm  # middle three of the differences 1, 2, 4, 5, 10
        ([0, 1, 2, 3, 4], 4.4, 3.6666666666666665)
    """
    common = sorted(set(method) & set(base), key=lambda s: (str(type(s)), s))
    if not common:
        raise ValueError(
            f"no seed in common: method ran {sorted(method)}, base ran {sorted(base)}; run the base on the same seeds"
        )
    unmatched = sorted(set(method) ^ set(base), key=str)
    if unmatched:
        warnings.warn(f"seeds {unmatched} ran on one side only; left out of the paired difference", stacklevel=2)
    diffs = [method[s] - base[s] for s in common]
    return aggregate(diffs, common, reps=reps, confidence=confidence, seed=seed)


# ------------------------------------------------------------------------------------------------- methods
def _default_method(run_dir: Path) -> str:
    # calql_3, calql-seed3, calql_s3, calql.seed3 -> calql; a bare "3" or "seed3" takes the parent's name.
    name = re.sub(r"[_\-.]?(?:seed|s)?[_\-.]?\d+$", "", run_dir.name)
    return name or run_dir.parent.name or run_dir.name


def group_runs(
    run_dirs: Sequence[str | os.PathLike], method_of: Mapping[str, str] | None = None
) -> dict[str, list[Path]]:
    """Group run directories into methods: ``{method: [run_dir, ...]}`` in first-seen order.

    ``method_of`` maps a method name to a glob matched against a run's directory name or its path as given (the
    first matching entry wins); runs no glob matches are named by their directory without the seed suffix.

    Example:
        >>> group_runs(["r/calql_0", "r/calql_1", "r/edis_calql_seed0"])
        {'calql': [PosixPath('r/calql_0'), PosixPath('r/calql_1')], 'edis_calql': [PosixPath('r/edis_calql_seed0')]}
        >>> list(group_runs(["r/calql_0", "r/x/run7"], {"mine": "*/x/*"}))
        ['calql', 'mine']
    """
    groups: dict[str, list[Path]] = {}
    for given in run_dirs:
        path = Path(given)
        name = next(
            (
                method
                for method, pattern in (method_of or {}).items()
                if fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(str(given), pattern)
            ),
            None,
        )
        groups.setdefault(name or _default_method(path), []).append(path)
    return groups


@dataclass
class MethodResult:
    """One method's runs, scores, aggregate, paired difference against the base, CPU time and curve."""

    name: str
    runs: list[Path]
    seeds: list
    scores: np.ndarray
    summary: Aggregate
    diff: Aggregate | None = None
    cpu_seconds: float | None = None  # mean over the runs that recorded it
    cpu_runs: int = 0  # how many runs recorded it
    curve: dict[str, np.ndarray] = field(default_factory=dict)  # steps, center, low, high
    switch: int | None = None
    episodes: int | None = None  # fewest episodes per evaluation among the runs (eval/episodes), if logged


def _seed_of(run_dir: Path) -> Any:
    return _config(run_dir).get("seed")


def _episodes(run_dir: Path) -> int | None:
    episodes = read_metrics(run_dir).get("eval/episodes")
    return int(episodes[1].min()) if episodes is not None and len(episodes[1]) else None


def _curve(runs: list[Path], metric: str, reps: int, confidence: float, seed: int) -> dict[str, np.ndarray]:
    """IQM across runs at each evaluation step the runs share, with a pointwise bootstrap interval."""
    from scipy.stats import trim_mean

    series = [read_metrics(r)[metric] for r in runs]
    steps = series[0][0]
    for s, _ in series[1:]:
        steps = np.intersect1d(steps, s)
    if steps.size == 0:
        return {}
    table = np.stack([v[np.searchsorted(s, steps)] for s, v in series])  # runs x steps
    if len(runs) == 1:
        return {"steps": steps, "center": table[0], "low": table[0], "high": table[0]}

    def iqm_per_step(x: np.ndarray) -> np.ndarray:
        # rliable.metrics.aggregate_iqm of each column (a 25% trimmed mean over runs), vectorised over steps.
        return trim_mean(x, proportiontocut=0.25, axis=0)

    # Each step is a stratum, so runs are resampled within it: a pointwise interval.
    center, interval = _bootstrap(table, iqm_per_step, reps, confidence, seed)
    return {"steps": steps, "center": center, "low": interval[0], "high": interval[1]}


def compare(
    groups: Mapping[str, Sequence[str | os.PathLike]],
    *,
    metric: str = DEFAULT_METRIC,
    last_k: int = 3,
    phase: str | None = None,
    base: str | None = None,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    curves: bool = True,
) -> list[MethodResult]:
    """Score, aggregate and (against ``base``) pair every method's runs; see :func:`write_report`.

    Raises:
        ValueError: ``base`` is not one of the methods, a run lacks the metric or has fewer than ``last_k``
            evaluations, or two runs of one method share a seed while a base is given (they cannot be paired).

    Example: see ``tests/test_report.py`` (needs run directories).
    """
    if base is not None and base not in groups:
        raise ValueError(f"base method {base!r} is not among the methods {sorted(groups)}; pass one of them")
    results = []
    for name, runs in groups.items():
        runs = [Path(r) for r in runs]
        scores = np.array([run_score(r, metric, last_k, phase) for r in runs])
        seeds = [_seed_of(r) for r in runs]
        cpu = [c for c in (_cpu_seconds(r) for r in runs) if c is not None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warned once below, naming the method
            summary = aggregate(scores, seeds, reps=reps, confidence=confidence, seed=seed)
        if len(runs) < MIN_SEEDS:
            warnings.warn(f"method {name!r} has {len(runs)} run(s); >= {MIN_SEEDS} seeds are expected", stacklevel=2)
        switches = {switch_step(r) for r in runs}
        episodes = [e for e in map(_episodes, runs) if e is not None]
        results.append(
            MethodResult(
                name=name,
                runs=runs,
                seeds=seeds,
                scores=scores,
                summary=summary,
                cpu_seconds=float(np.mean(cpu)) if cpu else None,
                cpu_runs=len(cpu),
                curve=_curve(runs, metric, reps, confidence, seed) if curves else {},
                switch=switches.pop() if len(switches) == 1 else None,
                episodes=min(episodes) if episodes else None,
            )
        )
    if base is not None:
        by_name = {r.name: r for r in results}
        base_scores = _by_seed(by_name[base])
        for result in results:
            if result.name == base:
                continue
            scores = _by_seed(result)
            if not set(scores) & set(base_scores):
                warnings.warn(
                    f"method {result.name!r} shares no seed with base {base!r}: no paired difference", stacklevel=2
                )
                continue
            result.diff = paired_difference(scores, base_scores, reps=reps, confidence=confidence, seed=seed)
    return results


def _by_seed(result: MethodResult) -> dict:
    out: dict = {}
    for run, s, score in zip(result.runs, result.seeds, result.scores):
        if s is None:
            raise ValueError(f"run {run} has no seed in its config.yaml; it cannot be paired with the base")
        if s in out:
            raise ValueError(f"method {result.name!r} has two runs with seed {s}; keep one per seed to pair them")
        out[s] = float(score)
    return out


def _fmt(x: float) -> str:
    return f"{x:.1f}" if math.isfinite(x) else "n/a"


def _ci(ci: tuple[float, float]) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _cpu(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def markdown_table(results: Sequence[MethodResult], base: str | None = None) -> str:
    """The markdown table of :func:`compare`'s results: one row per method.

    Example:
        >>> print(markdown_table([]).splitlines()[0])
        | method | seeds | IQM [95% CI] | mean +- std | CPU time / run |
    """
    pct = int(round(100 * (results[0].summary.confidence if results else 0.95)))
    head = ["method", "seeds", f"IQM [{pct}% CI]", "mean +- std"]
    if base is not None:
        head += [f"paired diff vs {base}: IQM [{pct}% CI]", "mean diff [CI]"]
    head.append("CPU time / run")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r.summary
        row = [r.name, str(s.n), f"{_fmt(s.iqm)} {_ci(s.iqm_ci)}", f"{_fmt(s.mean)} +- {_fmt(s.std)}"]
        if base is not None:
            if r.diff is None:
                row += ["(base)" if r.name == base else "n/a (no shared seed)", ""]
            else:
                d = r.diff
                row += [f"{d.iqm:+.1f} {_ci(d.iqm_ci)} (n={d.n})", f"{d.mean:+.1f} {_ci(d.mean_ci)}"]
        partial = f" ({r.cpu_runs} of {len(r.runs)} runs)" if 0 < r.cpu_runs < len(r.runs) else ""
        row.append(_cpu(r.cpu_seconds) + partial)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


@dataclass
class Report:
    """What :func:`write_report` wrote: the markdown file, the figure(s), the table text and the results."""

    path: Path
    figures: list[Path]
    table: str
    results: list[MethodResult]


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    method_of: Mapping[str, str] | None = None,
    base: str | None = None,
    metric: str | None = None,
    last_k: int = 3,
    phase: str | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> Report:
    """Write ``out_dir/report.md`` (table + how it was computed) and ``out_dir/<metric>.png`` (curves).

    Args:
        run_dirs: run directories; grouped into methods by :func:`group_runs` (``method_of``).
        base: the method the others are paired against (by seed); None: no paired column.
        metric: default ``eval/normalized_score`` when every run has it, else ``eval/return``.
        last_k, phase: see :func:`run_score`.
        reps, seed: bootstrap resamples and seed (see :func:`aggregate`).

    Example: see ``tests/test_report.py``; the command line is ``python -m diffrl.train.report --help``.
    """
    from diffrl.train.files import atomic_write_text
    from diffrl.train.plot import plot_aggregate

    if not run_dirs:
        raise ValueError("no run directory given; pass at least one RUN_DIR")
    groups = group_runs(run_dirs, method_of)
    if metric is None:
        metric = (
            DEFAULT_METRIC if all(DEFAULT_METRIC in read_metrics(r) for r in map(Path, run_dirs)) else "eval/return"
        )
    results = compare(groups, metric=metric, last_k=last_k, phase=phase, base=base, reps=reps, seed=seed)
    table = markdown_table(results, base)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_aggregate(
        {r.name: r.curve for r in results if r.curve},
        out / f"{metric.split('/')[-1]}.png",
        ylabel=f"{metric} (IQM over seeds)",
        switches=sorted({r.switch for r in results if r.switch is not None}),
        title=f"IQM over seeds, shaded: {round(100 * results[0].summary.confidence)}% bootstrap interval",
    )
    where = {None: "the whole run", "offline": "the offline phase", "online": "the online phase"}[phase]
    lines = [
        f"# {metric}: {', '.join(groups)}",
        "",
        table,
        "",
        f"Score of a run: mean of its last {last_k} evaluations of `{metric}` in {where}. Across seeds: interquartile "
        f"mean (IQM) with a 95% stratified-bootstrap interval ({reps} resamples, rliable), mean +- std (ddof=1)."
        + (f" Paired differences are against `{base}` on the seeds both ran." if base else ""),
        "",
        *[
            f"Note: `{r.name}` evaluated with {r.episodes} episode(s) per evaluation; >= 10 make a run's score "
            "much less noisy (eval.episodes)."
            for r in results
            if r.episodes is not None and r.episodes < 10
        ],
        "",
        f"![{metric}]({figure.name})",
        "",
        "Runs:",
        "",
    ]
    for r in results:
        runs = ", ".join(f"`{run}` (seed {s}: {score:.1f})" for run, s, score in zip(r.runs, r.seeds, r.scores))
        lines.append(f"- {r.name}: {runs}")
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines) + "\n")  # no empty note block
    path = atomic_write_text(out / "report.md", text)
    return Report(path=path, figures=[figure], table=table, results=results)


# ------------------------------------------------------------------------------------------------------- command
def _method_map(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, pattern = item.partition("=")
        if not sep or not name or not pattern:
            raise ValueError(f"--method-of {item!r} is not NAME=GLOB; e.g. --method-of edis=runs/edis_calql_*")
        out[name] = pattern
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (``python -m diffrl.train.report`` or ``benchmarks/report.py``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m diffrl.train.report",
        description="Aggregate diffrl runs across seeds (IQM + bootstrap interval, mean +- std, paired differences) "
        "into OUT/report.md and PNG curves.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (each with scalars/)")
    parser.add_argument(
        "--method-of",
        action="append",
        default=[],
        metavar="NAME=GLOB",
        help="name the runs matching GLOB (dir name or path) NAME; default: dir name without its seed suffix",
    )
    parser.add_argument("--base", help="method to pair the others against, by seed")
    parser.add_argument("--metric", help="default eval/normalized_score when every run has it, else eval/return")
    parser.add_argument("--last-k", type=int, default=3, help="evaluations averaged into a run's score (default 3)")
    parser.add_argument("--phase", choices=PHASES, help="score one phase of offline-to-online runs")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--out", required=True, help="output directory for report.md and the PNG")
    args = parser.parse_args(argv)
    caught: list[warnings.WarningMessage] = []

    def show_warnings() -> None:
        for warning in caught:  # one plain line each, not Python's file:line format
            print(f"warning: {warning.message}", file=sys.stderr)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = _write_report_cli(args)
    except (FileNotFoundError, ValueError, ImportError) as err:
        show_warnings()
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    show_warnings()
    print(report.table)
    print(f"wrote {report.path} and {', '.join(str(f) for f in report.figures)}")
    return 0


def _write_report_cli(args: argparse.Namespace) -> Report:
    return write_report(
        args.run_dirs,
        args.out,
        method_of=_method_map(args.method_of),
        base=args.base,
        metric=args.metric,
        last_k=args.last_k,
        phase=args.phase,
        reps=args.reps,
        seed=args.seed,
    )


if __name__ == "__main__":
    raise SystemExit(main())
