"""Metric logging through TorchRL's loggers, and reading a run's metrics back.

Every run writes CSV (TorchRL's ``CSVLogger``), so the plot command and the summary line always work; ``backend``
adds TensorBoard or Weights & Biases on top. A run directory looks like::

    <run_dir>/config.yaml              the resolved configuration the run started with (never rewritten)
    <run_dir>/run.yaml                 the recipe that started it (see diffrl.train.run)
    <run_dir>/resumes.yaml             one entry per successful resume: step, checkpoint, time, keys changed
    <run_dir>/scalars/<name>.csv       one "step,value" line per call; "eval/return" -> scalars/eval/return.csv
    <run_dir>/tensorboard/             with backend=tensorboard
    <run_dir>/checkpoints/step_*.pt    see diffrl.train.checkpoint (each with its step_*.pt.sha256 digest)
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from diffrl.train.config import ConfigError, to_yaml
from diffrl.train.files import atomic_write_text

__all__ = ["BACKENDS", "MetricLogger", "check_backend", "read_metrics", "scalars_dir"]

BACKENDS = ("csv", "tensorboard", "wandb")
# backend -> (python package it needs, diffrl extra that installs it)
_EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class MetricLogger:
    """Log scalar metrics of a run to CSV (always) and to TensorBoard or W&B (``backend``).

    Args:
        run_dir: the run directory (created if needed); CSVs go to ``<run_dir>/scalars/``.
        backend: ``"csv"`` (default), ``"tensorboard"`` or ``"wandb"``.
        config: the resolved run configuration, saved as ``<run_dir>/config.yaml`` (and sent to TensorBoard/W&B).
        project: the W&B project (``backend="wandb"`` only).

    Attributes:
        dir: the run directory.
        last: the latest value of every metric logged, e.g. for a final summary line.

    Example:
        >>> import tempfile, torch
        >>> logger = MetricLogger(tempfile.mkdtemp(), config={"seed": 0})
        >>> logger.log({"eval/return": torch.tensor(-12.5), "loss_actor": 0.25}, step=10)
        >>> logger.log({"eval/return": -3.0}, step=20)
        >>> logger.close()
        >>> steps, values = read_metrics(logger.dir)["eval/return"]
        >>> steps.tolist(), values.tolist(), (logger.dir / "config.yaml").read_text()
        ([10, 20], [-12.5, -3.0], 'seed: 0\\n')
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        backend: str = "csv",
        *,
        config: DictConfig | Mapping | None = None,
        project: str | None = None,
    ) -> None:
        check_backend(backend)
        from torchrl.record.loggers import CSVLogger

        self.dir = Path(run_dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self.last: dict[str, float] = {}
        # CSVLogger writes to <log_dir>/<exp_name>/scalars; splitting run_dir this way puts the CSVs in run_dir.
        self._loggers = [CSVLogger(exp_name=self.dir.name, log_dir=str(self.dir.parent))]
        if backend == "tensorboard":
            from torchrl.record.loggers import TensorboardLogger

            self._loggers.append(TensorboardLogger(exp_name="tensorboard", log_dir=str(self.dir)))
        elif backend == "wandb":
            from torchrl.record.loggers import WandbLogger

            self._loggers.append(
                WandbLogger(exp_name=self.dir.name, save_dir=str(self.dir), project=project or "diffrl")
            )
        if config is not None:
            self.save_config(config)

    def save_config(self, config: DictConfig | Mapping) -> Path:
        """Write the resolved config to ``<run_dir>/config.yaml`` (atomically) and send it to TensorBoard/W&B."""
        path = atomic_write_text(self.dir / "config.yaml", to_yaml(config))
        for extra in self._loggers[1:]:
            extra.log_hparams(config if isinstance(config, DictConfig) else dict(config))
        return path

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log scalars at ``step``. Values may be numbers, NumPy scalars or one-element tensors (any device).

        Nested TensorDict keys are joined with ``/``. A value with several elements is an error (log ``.mean()``).
        """
        if hasattr(metrics, "flatten_keys"):  # a TensorDict
            metrics = metrics.flatten_keys("/").to_dict()
        values = _to_floats(metrics)
        for name, value in values.items():
            for logger in self._loggers:
                logger.log_scalar(name, value, step=int(step))
        self.last.update(values)

    def truncate_after(self, step: int) -> None:
        """Drop CSV rows logged after ``step``: a resumed run rewrites them instead of duplicating them."""
        self._close_csv_files()
        root = scalars_dir(self.dir)
        if root is None:
            return
        for path in root.rglob("*.csv"):
            rows = _read_csv(path)
            kept = [(s, v) for s, v in rows if s <= step]
            if len(kept) != len(rows):
                atomic_write_text(path, "".join(f"{s},{v}\n" for s, v in kept))

    def close(self) -> None:
        """Flush and close every backend."""
        for logger in self._loggers:
            logger.close()
        self._close_csv_files()
        for unused in ("texts", "videos"):  # made by TorchRL's CSV logger up front; drop them if nothing went there
            try:
                (self.dir / unused).rmdir()
            except OSError:
                pass

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_csv_files(self) -> None:
        # TorchRL's CSV experiment keeps each file open in append mode; a file rewritten by truncate_after must be
        # reopened, not written through a handle to the replaced file.
        files = getattr(self._loggers[0].experiment, "files", {})
        for handle in files.values():
            handle.close()
        files.clear()

    def __repr__(self) -> str:
        return f"MetricLogger(dir={str(self.dir)!r}, backend={self.backend!r})"


def check_backend(backend: str) -> None:
    """Raise a one-line ConfigError if ``backend`` is unknown or its package is not installed.

    Example:
        >>> check_backend("csv")
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown logger.backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    if backend in _EXTRAS:
        package, extra = _EXTRAS[backend]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logger.backend={backend} needs the {package!r} package, which is not installed; "
                f"pip install 'diffrl[{extra}]' or use logger.backend=csv"
            )


def _to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, value in metrics.items():
        name = "/".join(key) if isinstance(key, tuple) else str(key)
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"metric {name!r} has {value.numel()} elements (shape {tuple(value.shape)}); "
                    "log a scalar, e.g. value.mean()"
                )
            tensors[name] = value.detach().reshape(())
        elif isinstance(value, (int, float, np.number, np.bool_, bool)) or (
            isinstance(value, np.ndarray) and value.size == 1
        ):
            out[name] = float(value)
        else:
            raise TypeError(f"metric {name!r} is a {type(value).__name__}; log numbers or one-element tensors")
    if tensors:
        # One device-to-host copy for all tensor metrics instead of one synchronising .item() each.
        stacked = torch.stack([t.to(torch.float64) for t in tensors.values()]).cpu().tolist()
        out.update(zip(tensors, stacked))
    return out


def scalars_dir(run_dir: str | os.PathLike) -> Path | None:
    """The ``scalars`` directory of a run: ``run_dir/scalars``, ``run_dir`` itself, or ``run_dir/<one exp>/scalars``.

    Example:
        >>> import tempfile, pathlib
        >>> scalars_dir(tempfile.mkdtemp()) is None
        True
    """
    run_dir = Path(run_dir)
    if (run_dir / "scalars").is_dir():
        return run_dir / "scalars"
    if run_dir.name == "scalars" and run_dir.is_dir():
        return run_dir
    nested = sorted(run_dir.glob("*/scalars")) if run_dir.is_dir() else []
    return nested[0] if len(nested) == 1 else None


def read_metrics(run_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a run's CSV metrics: ``{name: (steps, values)}`` sorted by step (``int64`` and ``float64`` arrays).

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``scalars`` directory.

    Example: see :class:`MetricLogger`.
    """
    root = scalars_dir(run_dir)
    if root is None:
        raise FileNotFoundError(
            f"no metrics in {Path(run_dir).resolve()}: expected CSV files under <run_dir>/scalars/ "
            "(written by diffrl's MetricLogger / TorchRL's CSVLogger)"
        )
    out = {}
    for path in sorted(root.rglob("*.csv")):
        rows = sorted(_read_csv(path), key=lambda row: row[0])
        name = path.relative_to(root).with_suffix("").as_posix()
        out[name] = (np.array([s for s, _ in rows], dtype=np.int64), np.array([v for _, v in rows], dtype=np.float64))
    return out


def _read_csv(path: Path) -> list[tuple[int, float]]:
    rows = []
    with open(path, newline="") as fileobj:
        for row in csv.reader(fileobj):
            try:
                step, value = int(float(row[0])), float(row[1])
            except (IndexError, ValueError):
                continue  # a line cut by a crash mid-write
            rows.append((step, value))
    return rows
