"""How a training loop stops on purpose: an interrupt (SIGINT, SIGTERM) or a non-finite loss.

Both are exceptions the loop raises at a safe point (between two updates, never inside one), after it has written a
checkpoint of the last good state; :func:`diffrl.train.config.run_recipe` turns them into one line on stderr and the
conventional exit status (130 for SIGINT, 143 for SIGTERM, 1 for a diverged run).

:func:`graceful_signals` only records that a signal arrived; the loop asks :func:`raise_if_interrupted` at its safe
points. A second signal of the same kind while the first is being handled falls back to the default behaviour, so a
stuck run can still be stopped.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["RunInterrupted", "NonFiniteLossError", "graceful_signals", "raise_if_interrupted", "check_finite"]

_HANDLED = (signal.SIGINT, signal.SIGTERM)
_pending: list[int] = []


class RunInterrupted(Exception):
    """A run stopped by a signal at a safe point; ``signum`` is the signal, ``exit_status`` is ``128 + signum``.

    Example:
        >>> err = RunInterrupted(signal.SIGINT)
        >>> err.exit_status, err.signal_name
        (130, 'SIGINT')
    """

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = int(signum)
        self.message = message
        super().__init__(message or f"interrupted by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class NonFiniteLossError(RuntimeError):
    """A loss term or gradient norm became NaN or infinite; the message names the step and the term.

    Example:
        >>> str(NonFiniteLossError(12, "loss_qvalue", float("nan")))
        'non-finite loss_qvalue (nan) at step 12'
    """

    def __init__(self, step: int, term: str, value: float, hint: str = "") -> None:
        self.step, self.term, self.value = int(step), term, value
        super().__init__(f"non-finite {term} ({value}) at step {step}" + (f"; {hint}" if hint else ""))


@contextmanager
def graceful_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are recorded instead of raising at an arbitrary line.

    Only the main thread can install handlers; elsewhere the block changes nothing. Handlers are restored on exit.

    Example:
        >>> import os
        >>> with graceful_signals():
        ...     os.kill(os.getpid(), signal.SIGINT)   # recorded, not raised here
        ...     try:
        ...         raise_if_interrupted()
        ...     except RunInterrupted as err:
        ...         print(err.exit_status)
        130
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _HANDLED}

    def record(signum: int, frame: Any) -> None:
        if signum in _pending:  # the second one: the user insists, stop now
            signal.signal(signum, previous[signum] if callable(previous[signum]) else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        _pending.append(signum)

    for sig in _HANDLED:
        signal.signal(sig, record)
    _pending.clear()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _pending.clear()


def raise_if_interrupted() -> None:
    """Raise :class:`RunInterrupted` if a signal arrived inside :func:`graceful_signals` (and forget it)."""
    if _pending:
        signum = _pending[0]
        _pending.clear()
        raise RunInterrupted(signum)


def check_finite(metrics: Mapping[str, Any], step: int, keys: tuple[str, ...] | None = None) -> None:
    """Raise :class:`NonFiniteLossError` naming the first ``loss_*`` term (or ``*grad_norm``) that is not finite.

    Args:
        metrics: an update's metrics (mapping or TensorDict of scalars).
        step: the step to name in the error.
        keys: the entries to check; default every ``loss_*`` entry and every entry ending in ``grad_norm``.

    Example:
        >>> check_finite({"loss_actor": torch.tensor(1.0)}, step=3)
        >>> try:
        ...     check_finite({"loss_actor": torch.tensor(1.0), "loss_qvalue": torch.tensor(float("inf"))}, step=3)
        ... except NonFiniteLossError as err:
        ...     print(err.term, err.step)
        loss_qvalue 3
    """
    names = list(metrics.keys()) if keys is None else list(keys)
    checked = [k for k in names if isinstance(k, str) and (keys is not None or _is_checked(k))]
    if not checked:
        return
    values = [metrics[k] for k in checked]
    tensors = [v.detach().float().reshape(-1) for v in values if isinstance(v, torch.Tensor)]
    # One host sync for all the tensors, not one per term.
    if (
        tensors
        and bool(torch.isfinite(torch.cat(tensors)).all())
        and all(math.isfinite(float(v)) for v in values if not isinstance(v, torch.Tensor))
    ):
        return
    for key, value in zip(checked, values):
        number = value.detach().float().reshape(-1) if isinstance(value, torch.Tensor) else torch.tensor([value])
        if not bool(torch.isfinite(number).all()):
            raise NonFiniteLossError(step, key, float(number[~torch.isfinite(number)][0]))


def _is_checked(key: str) -> bool:
    return key.startswith("loss_") or key.endswith("grad_norm")
