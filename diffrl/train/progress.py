"""Terminal output of a run: a tqdm progress bar with a few key metrics, a timer, and the final summary line.

The bar draws only on an interactive terminal (tqdm's ``disable=None``): logs of CI jobs and batch runs stay free of
carriage-return noise, and the summary line still reports the result. ``DIFFRL_PROGRESS=1`` forces the bar on,
``DIFFRL_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from tqdm.auto import tqdm

__all__ = ["Progress", "make_progress", "Timer", "format_summary"]


def _format_value(value: Any) -> str:
    value = float(value.item() if hasattr(value, "item") else value)
    return f"{value:.4g}"


class Progress:
    """A progress bar over training steps that shows the latest value of a few metrics.

    Args:
        total: number of steps of the phase.
        desc: label shown before the bar (e.g. ``"offline"``).
        initial: steps already done (a resumed run starts its bar there).
        keys: metrics to show, in order; ``None`` shows whatever is passed to :meth:`update`. At most ``max_shown``.
        max_shown: how many metrics fit on the line (default 4).
        disable: ``None`` (draw on a terminal only), ``True`` or ``False``.

    Example:
        >>> bar = make_progress(10, "offline", keys=["loss_actor"], disable=True)
        >>> bar.update(5, {"loss_actor": 0.123456, "other": 1.0})
        >>> bar.n, bar.postfix
        (5, {'loss_actor': '0.1235'})
        >>> bar.close()
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        initial: int = 0,
        keys: Iterable[str] | None = None,
        max_shown: int = 4,
        disable: bool | None = None,
    ) -> None:
        if disable is None:
            flag = os.environ.get("DIFFRL_PROGRESS", "").strip()
            disable = {"1": False, "0": True}.get(flag)
        self.keys = list(keys) if keys is not None else None
        self.max_shown = max_shown
        self.postfix: dict[str, str] = {}
        self._n = initial  # counted here: a disabled tqdm bar does not count
        self._bar = tqdm(
            total=total,
            desc=desc,
            initial=initial,
            disable=disable,
            dynamic_ncols=True,
            mininterval=0.5,
            smoothing=0.05,
        )

    @property
    def n(self) -> int:
        """Steps done so far."""
        return self._n

    def update(self, n: int = 1, metrics: Mapping[str, Any] | None = None) -> None:
        """Advance by ``n`` steps and, when given, show the selected metrics (numbers or one-element tensors)."""
        if metrics:
            names = self.keys if self.keys is not None else list(metrics)
            shown = {name: _format_value(metrics[name]) for name in names if name in metrics}
            self.postfix.update(shown)
            self.postfix = dict(list(self.postfix.items())[-self.max_shown :])
            self._bar.set_postfix(self.postfix, refresh=False)
        self._n += n
        self._bar.update(n)

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        self._bar.write(message)

    def close(self) -> None:
        """Finish the bar."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_progress(total: int, desc: str = "", **kwargs: Any) -> Progress:
    """A :class:`Progress` bar; keyword arguments as in :class:`Progress`.

    Example:
        >>> with make_progress(3, "toy", disable=True) as bar:
        ...     for _ in range(3):
        ...         bar.update(1, {"loss": 1.0})
        >>> bar.n
        3
    """
    return Progress(total, desc, **kwargs)


class Timer:
    """Wall-clock time and throughput of a run.

    Example:
        >>> timer = Timer()
        >>> timer.elapsed >= 0.0 and timer.rate(0) == 0.0
        True
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since the timer started."""
        return time.perf_counter() - self.start

    def rate(self, steps: int) -> float:
        """Steps per second over the elapsed time."""
        elapsed = self.elapsed
        return steps / elapsed if elapsed > 0 else 0.0


def format_summary(
    name: str,
    steps: int,
    seconds: float,
    metrics: Mapping[str, Any] | None = None,
    keys: Iterable[str] = ("eval/return", "eval/normalized_score"),
) -> str:
    """The one-line summary a recipe prints at the end.

    Example:
        >>> format_summary("iql", 1000, 20.0, {"eval/return": -150.25, "loss_actor": 1.0})
        'iql: 1000 steps in 20.0 s (50.0 steps/s) | eval/return -150.2'
    """
    rate = steps / seconds if seconds > 0 else 0.0
    parts = [f"{name}: {steps} steps in {seconds:.1f} s ({rate:.1f} steps/s)"]
    for key in keys:
        if metrics and key in metrics:
            parts.append(f"{key} {_format_value(metrics[key])}")
    return " | ".join(parts)
