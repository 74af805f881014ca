"""A run: its directory, metric logger and checkpointer, and ``resume=`` handled in one place.

Keys read from the config (the shared recipe keys of DESIGN.md): ``logger.dir`` (the run directory), ``logger.backend``
(csv/tensorboard/wandb), ``resume`` (a run directory or a checkpoint file, or null); optional ``logger.project`` (W&B)
and ``logger.keep`` (checkpoints kept, default 2).

Run directory: ``logger.dir`` itself when it does not exist; an existing directory (even an empty one) is never
written into by a fresh run: ``-1``, ``-2``, ... is appended instead, and the claim is atomic, so two runs started at
the same instant with the same ``logger.dir`` never share a directory.

A resumed run continues in the directory of the checkpoint it resumes from: its CSV rows after the checkpoint's step
are dropped and rewritten, so the curves read as one uninterrupted run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from diffrl.train.checkpoint import Checkpointer, find_checkpoint
from diffrl.train.metrics import MetricLogger, check_backend

__all__ = ["Run", "start_run", "fresh_run_dir", "claimed_run_dirs"]

_CLAIMED: list[Path] = []  # run directories this process created (fresh_run_dir)


def fresh_run_dir(path: str | os.PathLike) -> Path:
    """Claim a new run directory: ``path`` if it does not exist, else the first free ``path-1``, ``path-2``, ...

    The claim is one ``mkdir`` (atomic on every file system): of two runs started at the same instant with the same
    ``logger.dir``, one gets ``path`` and the other ``path-1``. An existing directory is never adopted, even an empty
    one, since another run may have just created it. Directories claimed by this process are remembered
    (:func:`claimed_run_dirs`) so a run that fails on bad input can remove what it created.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> first = fresh_run_dir(root / "run")
        >>> fresh_run_dir(root / "run").name   # "run" exists (empty or not): never shared
        'run-1'
    """
    path = Path(path)
    candidate, i = path, 0
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)  # the atomic claim
        except FileExistsError:
            i += 1
            candidate = path.with_name(f"{path.name}-{i}")
            continue
        _CLAIMED.append(candidate.resolve())
        return candidate


def claimed_run_dirs() -> list[Path]:
    """The run directories :func:`fresh_run_dir` created in this process, oldest first.

    Example:
        >>> import tempfile, pathlib
        >>> fresh_run_dir(pathlib.Path(tempfile.mkdtemp()) / "r").resolve() in claimed_run_dirs()
        True
    """
    return list(_CLAIMED)


def _run_dir_of(checkpoint: Path) -> Path | None:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


class Run:
    """A run directory with its :class:`MetricLogger` (``run.logger``) and :class:`Checkpointer` (``.checkpointer``).

    Build it with :func:`start_run`. ``run.dir`` is where everything goes; ``run.log``/``run.save`` forward to the
    logger/checkpointer; ``run.resume(**objects)`` restores a checkpoint when ``resume=`` was given.
    """

    def __init__(
        self, run_dir: Path, logger: MetricLogger, checkpointer: Checkpointer, resume_from: Path | None = None
    ) -> None:
        self.dir = run_dir
        self.logger = logger
        self.checkpointer = checkpointer
        self.resume_from = resume_from
        self.resumed: dict[str, Any] = {}

    def resume(self, **objects: Any) -> int:
        """Restore ``objects`` (and the global generators) from the ``resume=`` checkpoint; return its step.

        Returns 0 and changes nothing when the run is not resumed. Plain values saved with the checkpoint are in
        ``run.resumed`` afterwards.
        """
        if self.resume_from is None:
            return 0
        self.resumed = self.checkpointer.load(self.resume_from, **objects)
        step = int(self.resumed["step"])
        if _run_dir_of(self.resume_from) == self.dir:
            self.logger.truncate_after(step)
        return step

    def log(self, metrics: Any, step: int) -> None:
        """Log scalar metrics at ``step`` (see :meth:`MetricLogger.log`)."""
        self.logger.log(metrics, step)

    def save(self, step: int, **objects: Any) -> Path:
        """Write a checkpoint at ``step`` (see :meth:`Checkpointer.save`)."""
        return self.checkpointer.save(step, **objects)

    def close(self) -> None:
        """Close the logger."""
        self.logger.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Run(dir={str(self.dir)!r}, resume_from={self.resume_from})"


def start_run(cfg: DictConfig) -> Run:
    """Open the run described by ``cfg``: pick the run directory, save the resolved config, set up logging.

    Example:
        >>> import tempfile, torch
        >>> from omegaconf import OmegaConf
        >>> root = tempfile.mkdtemp()
        >>> cfg = OmegaConf.create({"logger": {"dir": root + "/run", "backend": "csv"}, "resume": None})
        >>> net = torch.nn.Linear(1, 1)
        >>> with start_run(cfg) as run:
        ...     run.log({"eval/return": 1.0}, step=5)
        ...     _ = run.save(5, net=net)
        >>> cfg.resume = str(run.dir)               # a second process resuming the first run
        >>> with start_run(cfg) as again:
        ...     again.dir == run.dir, again.resume(net=net)
        (True, 5)
    """
    logger_cfg = cfg.logger
    backend = logger_cfg.get("backend", "csv")
    check_backend(backend)  # before creating any directory: a rejected run leaves nothing behind
    resume = cfg.get("resume")
    resume_from = find_checkpoint(resume).resolve() if resume not in (None, "") else None
    run_dir = _run_dir_of(resume_from) if resume_from is not None else None
    if run_dir is None:
        run_dir = fresh_run_dir(logger_cfg.dir)
    logger = MetricLogger(run_dir, backend, config=cfg, project=logger_cfg.get("project"))
    checkpointer = Checkpointer(logger.dir / "checkpoints", keep=logger_cfg.get("keep", 2))
    return Run(logger.dir, logger, checkpointer, resume_from)
