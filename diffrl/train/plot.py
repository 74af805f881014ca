"""Learning curves from runs' CSV metrics: ``python -m diffrl.train.plot RUN_DIR [RUN_DIR ...]`` (or ``diffrl-plot``).

Several run directories overlay on the same axes (one line per run, labelled by directory name); several
``--metric`` options give one panel each. By default the curve is ``eval/normalized_score`` when the runs have it,
else ``eval/return``. The PNG goes to ``--out``, by default ``<run_dir>/learning_curve.png`` for one run and
``learning_curve.png`` in the working directory for several. Matplotlib runs headless (no pyplot, no display).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffrl.train.metrics import read_metrics

__all__ = ["plot_runs", "main"]

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
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(dirs) > 1:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format="png")
    return out


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
