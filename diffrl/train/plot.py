"""Learning curves from runs' CSV metrics: ``python -m diffrl.train.plot RUN_DIR [RUN_DIR ...]`` (or ``diffrl-plot``).

Several run directories overlay on the same axes (one line per run, labelled by directory name); several
``--metric`` options give one panel each. By default the curve is ``eval/normalized_score`` when the runs have it,
else ``eval/return``. The PNG goes to ``--out``, by default ``<run_dir>/learning_curve.png`` for one run and
``learning_curve.png`` in the working directory for several. Matplotlib runs headless (no pyplot, no display).

:func:`plot_run` draws one run's evaluations with their per-evaluation spread and the offline-to-online switch;
:func:`plot_aggregate` draws methods' curves across seeds with shaded intervals (see :mod:`diffrl.train.report`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffrl.train.metrics import read_metrics

__all__ = ["plot_aggregate", "plot_run", "plot_runs", "main"]

_DEFAULT_METRICS = ("eval/normalized_score", "eval/return")


def _labels(run_dirs: list[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in run_dirs]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < 2:
        return values
    # Trailing moving average over at most `window` points (shorter at the start, so no point is dropped).
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def _label_axes(ax: Any, xlabel: str, ylabel: str, *, legend: bool) -> None:
    """The look every plot here shares: axis labels, a light grid and, when asked, a small legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small")


def _save_png(fig: Any, out: Path) -> Path:
    """Write ``fig`` to ``out`` as a 120-dpi PNG (creating its directory) and return ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format="png")
    return out


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    metrics: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    *,
    smooth: int = 1,
    title: str | None = None,
) -> Path:
    """Draw the learning curves of ``run_dirs`` into a PNG and return its path.

    Args:
        run_dirs: run directories (holding ``scalars/``, as written by :class:`~diffrl.train.metrics.MetricLogger`).
        metrics: metric names, one panel each; default ``eval/normalized_score`` if present, else ``eval/return``.
        out: the PNG path (see the module docstring for the default).
        smooth: trailing moving-average window in points (1 = raw).
        title: figure title.

    Raises:
        FileNotFoundError: a run directory holds no metrics.
        ValueError: a metric is in none of the runs (the message lists the available ones).

    Example:
        >>> import tempfile
        >>> from diffrl.train.metrics import MetricLogger
        >>> with MetricLogger(tempfile.mkdtemp()) as logger:
        ...     for step in range(0, 50, 10):
        ...         logger.log({"eval/return": -100.0 + step}, step)
        >>> png = plot_runs([logger.dir])
        >>> png.name, png.read_bytes()[:4] == b"\\x89PNG"
        ('learning_curve.png', True)
    """
    from matplotlib.figure import Figure

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("no run directory given; pass at least one RUN_DIR")
    runs = [read_metrics(d) for d in dirs]
    available = sorted(set().union(*runs))
    if not metrics:
        default = next((m for m in _DEFAULT_METRICS if any(m in r for r in runs)), None)
        if default is None:
            raise ValueError(
                f"none of {', '.join(_DEFAULT_METRICS)} in the runs; pick one with --metric from: "
                f"{', '.join(available) or '(no metrics)'}"
            )
        metrics = [default]
    for metric in metrics:
        if not any(metric in r for r in runs):
            raise ValueError(f"metric {metric!r} is in none of the runs; available: {', '.join(available)}")
    if out is None:
        out = dirs[0] / "learning_curve.png" if len(dirs) == 1 else Path("learning_curve.png")
    out = Path(out)

    fig = Figure(figsize=(6.4, 3.2 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics):
        for label, run in zip(_labels(dirs), runs):
            if metric in run:
                steps, values = run[metric]
                ax.plot(steps, _smooth(values, smooth), label=label, marker="o" if len(steps) < 20 else None)
        _label_axes(ax, "step", metric, legend=len(dirs) > 1)
    if title:
        fig.suptitle(title)
    return _save_png(fig, out)


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, metric: str | None = None) -> Path:
    """Draw one run's learning curve into a PNG and return its path (default ``<run_dir>/learning_curve.png``).

    The line is the evaluation mean at each evaluation step; the band is +- the spread of that evaluation's episodes
    (``<metric>_std``, e.g. ``eval/normalized_score_std``) when the run logged it; a dashed vertical line marks the
    switch from offline to online (``offline.steps`` in the run's ``config.yaml``). ``metric`` defaults to
    ``eval/normalized_score`` when logged, else ``eval/return``.

    Raises:
        FileNotFoundError: the run directory holds no metrics.
        ValueError: the metric is not in the run (the message lists the evaluation metrics it has).

    Example:
        >>> import tempfile
        >>> from diffrl.train.metrics import MetricLogger
        >>> config = {"offline": {"steps": 20}, "online": {"steps": 20}}
        >>> with MetricLogger(tempfile.mkdtemp(), config=config) as logger:
        ...     for step in (10, 20, 30, 40):
        ...         logger.log({"eval/normalized_score": step / 2, "eval/normalized_score_std": 3.0}, step)
        >>> png = plot_run(logger.dir)
        >>> png == logger.dir / "learning_curve.png", png.read_bytes()[:4] == b"\\x89PNG"
        (True, True)
    """
    from matplotlib.figure import Figure

    from diffrl.train.report import switch_step

    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if metric is None:
        metric = next((m for m in _DEFAULT_METRICS if m in metrics), _DEFAULT_METRICS[-1])
    if metric not in metrics:
        evals = sorted(m for m in metrics if m.startswith("eval/")) or sorted(metrics)
        raise ValueError(f"run {run_dir} has no metric {metric!r}; it has: {', '.join(evals) or '(none)'}")
    steps, values = metrics[metric]
    out = Path(out) if out is not None else run_dir / "learning_curve.png"

    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=metric)
    spread = metrics.get(f"{metric}_std")
    if spread is not None and np.array_equal(spread[0], steps):
        ax.fill_between(steps, values - spread[1], values + spread[1], alpha=0.25, label="+- std over episodes")
    switch = switch_step(run_dir)
    if switch is not None:
        ax.axvline(switch, color="k", linestyle="--", linewidth=1, label=f"offline -> online ({switch})")
    _label_axes(ax, "step (offline updates, then env steps)" if switch is not None else "step", metric, legend=True)
    ax.set_title(run_dir.name)
    return _save_png(fig, out)


def plot_aggregate(
    curves: dict[str, dict[str, np.ndarray]],
    out: str | os.PathLike,
    *,
    ylabel: str = "score",
    switches: Sequence[int] = (),
    title: str | None = None,
) -> Path:
    """Draw one line per method with a shaded interval and dashed phase switches; return the PNG path.

    Args:
        curves: ``{method: {"steps", "center", "low", "high"}}`` arrays (e.g. IQM over seeds and its interval).
        out: the PNG path.
        ylabel: the y-axis label.
        switches: steps where offline training ends (one dashed line each).
        title: figure title.

    Example:
        >>> import tempfile, pathlib
        >>> steps = np.array([0, 10, 20])
        >>> curve = {"steps": steps, "center": steps * 1.0, "low": steps - 1.0, "high": steps + 1.0}
        >>> png = plot_aggregate({"a": curve}, pathlib.Path(tempfile.mkdtemp()) / "c.png", switches=[10])
        >>> png.read_bytes()[:4] == b"\\x89PNG"
        True
    """
    from matplotlib.figure import Figure

    out = Path(out)
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, curve in curves.items():
        if not curve:
            continue
        (line,) = ax.plot(curve["steps"], curve["center"], label=name, marker="o" if len(curve["steps"]) < 30 else None)
        ax.fill_between(curve["steps"], curve["low"], curve["high"], color=line.get_color(), alpha=0.2)
    for i, step in enumerate(switches):
        ax.axvline(step, color="k", linestyle="--", linewidth=1, label="offline -> online" if i == 0 else None)
    _label_axes(ax, "step", ylabel, legend=bool(curves or switches))
    if title:
        ax.set_title(title)
    return _save_png(fig, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``diffrl-plot``); returns the exit status (0, or 2 on bad input)."""
    parser = argparse.ArgumentParser(prog="diffrl-plot", description="Plot learning curves of diffrl runs to a PNG.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    parser.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        help="metric to plot (repeatable; default eval/normalized_score, else eval/return)",
    )
    parser.add_argument("--out", help="PNG path (default RUN_DIR/learning_curve.png for one run)")
    parser.add_argument("--smooth", type=int, default=1, help="moving-average window in points (default 1)")
    parser.add_argument("--title", help="figure title")
    args = parser.parse_args(argv)
    try:
        path = plot_runs(args.run_dirs, args.metrics, args.out, smooth=args.smooth, title=args.title)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
