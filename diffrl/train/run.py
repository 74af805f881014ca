"""A run: its directory, metric logger and checkpointer, and ``resume=`` handled in one place.

Keys read from the config (shared by every recipe): ``logger.dir`` (the run directory), ``logger.backend``
(csv/tensorboard/wandb), ``resume`` (a run directory or a checkpoint file, or null); optional ``logger.project`` (W&B)
and ``logger.keep`` (checkpoints kept, default 2).

Run directory: ``logger.dir`` itself when it does not exist; an existing directory (even an empty one) is never
written into by a fresh run: ``-1``, ``-2``, ... is appended instead, and the claim is atomic, so two runs started at
the same instant with the same ``logger.dir`` never share a directory.

A run directory holds the run's record: ``config.yaml`` (the resolved config it started with, never rewritten),
``run.yaml`` (the recipe that started it), and, once resumed, ``resumes.yaml`` (one entry per successful resume: the
step and checkpoint it continued from, when, and the keys it changed, ``old -> new``).

A resumed run continues in the directory of the checkpoint it resumes from: its CSV rows after the checkpoint's step
are dropped and rewritten, so the curves read as one uninterrupted run. What a resume may change is
:data:`diffrl.train.config.RESUME_MAY_CHANGE`; anything else is refused before anything is written.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from diffrl.train.checkpoint import Checkpointer, find_checkpoint
from diffrl.train.config import (
    RUN_RECORD,
    ConfigError,
    check_resume_changes,
    config_origin,
    recipe_of_run,
    resume_changes,
)
from diffrl.train.files import atomic_write_text
from diffrl.train.metrics import MetricLogger, check_backend

__all__ = ["Run", "start_run", "fresh_run_dir", "claimed_run_dirs", "started_run_dirs"]

_CLAIMED: list[Path] = []  # run directories this process created (fresh_run_dir)
_STARTED: list[Path] = []  # run directories this process opened with start_run (fresh or resumed)


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


def started_run_dirs() -> list[Path]:
    """The run directories :func:`start_run` opened in this process (fresh or resumed), oldest first.

    Example:
        >>> isinstance(started_run_dirs(), list)
        True
    """
    return list(_STARTED)


def _run_dir_of(checkpoint: Path) -> Path | None:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


RESUME_RECORD = "resumes.yaml"  # in a run directory: one entry appended per successful resume


class Run:
    """A run directory with its :class:`MetricLogger` (``run.logger``) and :class:`Checkpointer` (``.checkpointer``).

    Build it with :func:`start_run`. ``run.dir`` is where everything goes; ``run.log``/``run.save`` forward to the
    logger/checkpointer; ``run.resume(**objects)`` restores a checkpoint when ``resume=`` was given and then appends
    the resume to ``resumes.yaml``.

    Attributes:
        recipe: the recipe that started the run (``None`` when unknown).
        resume_from: the checkpoint resumed from (after :meth:`resume`: the one actually used, which is an older one
            when the newest was damaged).
        resume_changes: ``{dotted key: (saved value, new value)}`` the resume changed.
    """

    def __init__(
        self,
        run_dir: Path,
        logger: MetricLogger,
        checkpointer: Checkpointer,
        resume_from: Path | None = None,
        *,
        resume_target: Path | None = None,
        resume_changes: dict[str, tuple[Any, Any]] | None = None,
        recipe: str | None = None,
    ) -> None:
        self.dir = run_dir
        self.logger = logger
        self.checkpointer = checkpointer
        self.resume_from = resume_from
        self.resume_changes = dict(resume_changes or {})
        self.recipe = recipe
        self.resumed: dict[str, Any] = {}
        self._resume_target = resume_target if resume_target is not None else resume_from

    def resume(self, **objects: Any) -> int:
        """Restore ``objects`` (and the global generators) from the ``resume=`` checkpoint; return its step.

        Returns 0 and changes nothing when the run is not resumed. Plain values saved with the checkpoint are in
        ``run.resumed`` afterwards. A ``resume=`` directory uses its newest intact checkpoint. Only once the restore
        succeeded are the CSV rows after the step dropped and the resume recorded in ``resumes.yaml``.
        """
        if self._resume_target is None:
            return 0
        self.resumed = self.checkpointer.load(self._resume_target, **objects)
        step = int(self.resumed["step"])
        self.resume_from = Path(self.resumed["path"])
        if _run_dir_of(self.resume_from) == self.dir:
            self.logger.truncate_after(step)
        self.record_resume(step, self.resume_from)
        return step

    def record_resume(self, step: int, checkpoint: str | os.PathLike) -> Path:
        """Append a resume from ``checkpoint`` at ``step`` to ``resumes.yaml`` (atomically; earlier entries kept).

        :meth:`resume` calls it; a loop that restores checkpoints itself calls it after its restore succeeded.
        """
        entry = {
            "step": int(step),
            "time": datetime.now().isoformat(timespec="seconds"),
            "from": str(checkpoint),
            "changed": {key: {"old": old, "new": new} for key, (old, new) in self.resume_changes.items()},
        }
        path = self.dir / RESUME_RECORD
        before = path.read_text() if path.is_file() else ""
        if before and not before.endswith("\n"):
            before += "\n"
        # Appending the text keeps every earlier entry byte for byte, even one a user edited by hand.
        return atomic_write_text(path, before + yaml.safe_dump([entry], sort_keys=False, default_flow_style=False))

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

    A fresh run claims a new directory and writes ``config.yaml`` and ``run.yaml`` there. A resumed run
    (``resume=``) writes nothing here: its record is checked (same recipe; only :data:`RESUME_MAY_CHANGE` keys
    changed) and :meth:`Run.resume` appends to ``resumes.yaml`` after a successful restore.

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
        >>> OmegaConf.load(run.dir / "config.yaml").resume is None   # the record of how the run started, untouched
        True
    """
    logger_cfg = cfg.logger
    backend = logger_cfg.get("backend", "csv")
    check_backend(backend)  # before creating any directory: a rejected run leaves nothing behind
    origin = config_origin(cfg)
    recipe = origin.recipe if origin is not None else None
    resume = cfg.get("resume")
    resume_target = Path(resume).resolve() if resume not in (None, "") else None
    resume_from = find_checkpoint(resume_target).resolve() if resume_target is not None else None
    run_dir = _run_dir_of(resume_from) if resume_from is not None else None
    changes: dict[str, tuple[Any, Any]] = {}
    if run_dir is not None:
        # Everything is checked before anything is written: a refused resume leaves the run as it was.
        started_by = recipe_of_run(run_dir)
        if recipe is not None and started_by is not None and started_by != recipe:
            raise ConfigError(
                f"run {run_dir} was started by recipe '{started_by}', not '{recipe}'; resume it with: "
                f"python recipes/{started_by}.py resume={resume}"
            )
        recipe = recipe or started_by
        if origin is not None and origin.resumed is not None:
            changes = origin.changes  # checked by load_config against the schema defaults as well
        elif (run_dir / "config.yaml").is_file():
            saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
            current = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
            # Only keys both hold: a config built by hand need not repeat every key of the saved one.
            changes = {k: v for k, v in resume_changes(saved, current).items() if "<absent>" not in v}
            changes.pop("resume", None)
            check_resume_changes(changes, resume)
        logger = MetricLogger(run_dir, backend, project=logger_cfg.get("project"))
    else:
        run_dir = fresh_run_dir(logger_cfg.dir)
        logger = MetricLogger(run_dir, backend, config=cfg, project=logger_cfg.get("project"))
        record = {"recipe": recipe, "started": datetime.now().isoformat(timespec="seconds"), "pid": os.getpid()}
        atomic_write_text(logger.dir / RUN_RECORD, yaml.safe_dump(record, sort_keys=False))
    checkpointer = Checkpointer(logger.dir / "checkpoints", keep=logger_cfg.get("keep", 2), recipe=recipe)
    _STARTED.append(logger.dir)
    return Run(
        logger.dir,
        logger,
        checkpointer,
        resume_from,
        resume_target=resume_target,
        resume_changes=changes,
        recipe=recipe,
    )
