"""Checkpoints from which a run resumes to exactly the result it would have reached uninterrupted.

A checkpoint is one file, ``<dir>/step_<step>.pt``, written atomically (see :mod:`diffrl.train.files`): a crash or a
full disk during a save leaves the previous checkpoints as they were. It holds, by the names the caller chose:

* anything with ``state_dict``/``load_state_dict``: modules (with their target parameters), optimizers, LR schedulers,
  target updaters (``SoftUpdate`` keeps its own progress), TorchRL replay buffers (storage contents, writer cursor,
  sampler state and the buffer's generator; pass :func:`without_contents` to keep only the cursor and sampler state of
  a buffer whose contents are rebuilt deterministically, e.g. an offline dataset);
* TorchRL environments: their ``state_dict`` (transform statistics) and their gymnasium generator state;
* ``torch.Generator`` and ``numpy.random.Generator`` states;
* any other picklable value (step counters, episode counts, best score), returned by :meth:`Checkpointer.load`;
* always the global generators (Python, NumPy, torch CPU and CUDA), restored by default.

Checkpoints are Python pickles (``torch.load(weights_only=False)``): load only files you trust.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffrl.train.config import ConfigError
from diffrl.train.files import atomic_write
from diffrl.train.seeding import env_rng_state, rng_state, set_env_rng_state, set_rng_state

__all__ = ["CheckpointError", "Checkpointer", "latest_checkpoint", "find_checkpoint", "without_contents"]

_FORMAT = "diffrl-checkpoint"
_VERSION = 1
_NAME_RE = re.compile(r"^step_(\d+)\.pt$")
_RESERVED = ("step", "path")


class CheckpointError(ConfigError):
    """A checkpoint cannot be found, read, or restored into the objects given (a one-line message)."""


class without_contents:  # noqa: N801 (reads as a function at the call site: rb=without_contents(rb))
    """Checkpoint a replay buffer's cursor, sampler and generator state but not its stored data.

    For a buffer whose contents the recipe rebuilds identically before resuming (an offline dataset loaded from
    disk), this keeps checkpoints small while sampling still continues exactly.

    Example:
        >>> from torchrl.data import ReplayBuffer, LazyTensorStorage
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(10)); _ = rb.extend(torch.arange(4.0))
        >>> "_storage" in without_contents(rb).state_dict()
        False
    """

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.buffer.state_dict())
        state.pop("_storage")
        state["_len"] = len(self.buffer)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        if len(self.buffer) != state["_len"]:
            raise CheckpointError(
                f"the replay buffer holds {len(self.buffer)} items but was checkpointed with "
                f"{state['_len']}; refill it identically before loading (contents are not saved)"
            )
        del state["_len"]
        state["_storage"] = self.buffer._storage.state_dict()  # keep what is there
        self.buffer.load_state_dict(state)


def _is_env(obj: Any) -> bool:
    try:
        from torchrl.envs import EnvBase
    except ImportError:  # pragma: no cover - torchrl is a dependency
        return False
    return isinstance(obj, EnvBase)


def _pack(obj: Any) -> tuple[str, Any]:
    if isinstance(obj, torch.Generator):
        return "torch_generator", obj.get_state()
    if isinstance(obj, np.random.Generator):
        return "numpy_generator", obj.bit_generator.state
    if _is_env(obj):
        return "env", {"state_dict": obj.state_dict(), "rng": env_rng_state(obj)}
    if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
        return "state_dict", obj.state_dict()
    return "value", obj


def _unpack(obj: Any, kind: str, payload: Any) -> None:
    if kind == "torch_generator":
        obj.set_state(payload)
    elif kind == "numpy_generator":
        obj.bit_generator.state = payload
    elif kind == "env":
        obj.load_state_dict(payload["state_dict"])
        set_env_rng_state(obj, payload["rng"])
    else:
        if isinstance(obj, torch.nn.Module):
            _materialize_value_estimators(obj, payload)
        obj.load_state_dict(payload)


def _materialize_value_estimators(module: torch.nn.Module, state: Mapping[str, Any]) -> None:
    # TorchRL losses build their value estimator on first use, and its buffers (gamma, ...) are in the state_dict from
    # then on: a loss rebuilt for resuming has not run yet, so it lacks them. Build the default estimator first; a
    # recipe that chose another estimator made it at construction, before loading, so it is not replaced here.
    for prefix, sub in module.named_modules():
        if getattr(sub, "_value_estimator", False) is None:
            key = f"{prefix}._value_estimator." if prefix else "_value_estimator."
            if any(name.startswith(key) for name in state):
                sub.value_estimator  # noqa: B018 (the property builds the estimator)


def latest_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``path`` (a checkpoint dir or a run dir), or ``path`` if it is a file.

    Example:
        >>> import tempfile
        >>> latest_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    path = Path(path)
    if path.is_file():
        return path
    for directory in (path, path / "checkpoints"):
        if directory.is_dir():
            found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME_RE.match(p.name)))
            if found:
                return found[-1][1]
    return None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """Like :func:`latest_checkpoint`, but an error naming what was looked for when there is none (for ``resume=``)."""
    found = latest_checkpoint(path)
    if found is None:
        where = Path(path).resolve()
        if not where.exists():
            raise CheckpointError(f"resume path not found: {where}; pass a run directory or a checkpoint file")
        raise CheckpointError(
            f"no checkpoint in {where} (looked for step_*.pt there and in its checkpoints/ "
            "directory); pass a run directory that saved checkpoints, or a checkpoint file"
        )
    return found


class Checkpointer:
    """Save and restore training state atomically, keeping the ``keep`` most recent checkpoints.

    Args:
        directory: where ``step_<step>.pt`` files go (created on the first save).
        keep: how many checkpoints to keep (older ones are deleted after a successful save); ``None`` keeps all.

    Example:
        >>> import tempfile
        >>> net = torch.nn.Linear(2, 1); opt = torch.optim.Adam(net.parameters())
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=2)
        >>> for step in (10, 20, 30):
        ...     _ = ckpt.save(step, net=net, opt=opt, episodes=step // 10)
        >>> [p.name for p in ckpt.checkpoints()]
        ['step_000000020.pt', 'step_000000030.pt']
        >>> saved = net.weight.detach().clone(); _ = torch.nn.init.zeros_(net.weight)
        >>> state = ckpt.load(ckpt.directory, net=net, opt=opt)  # a directory means its latest checkpoint
        >>> state["step"], state["episodes"], torch.equal(net.weight, saved)
        (30, 3, True)
    """

    def __init__(self, directory: str | os.PathLike, keep: int | None = 2) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ConfigError(f"keep must be a positive integer or None (keep all), got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        """The file a checkpoint at ``step`` is written to."""
        return self.directory / f"step_{int(step):09d}.pt"

    def checkpoints(self) -> list[Path]:
        """Existing checkpoints, oldest (lowest step) first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The most recent checkpoint in this checkpointer's directory, or ``None``."""
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, step: int, **objects: Any) -> Path:
        """Write a checkpoint of ``objects`` (by name) at ``step``; returns its path.

        Global generator states are always included. The previous checkpoints stay intact if the save fails.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        clash = [name for name in objects if name in _RESERVED]
        if clash:
            raise ValueError(f"object names {clash} are reserved ({', '.join(_RESERVED)}); pick other names")
        packed = {name: _pack(obj) for name, obj in objects.items()}
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "step": int(step),
            "time": time.time(),
            "kinds": {name: kind for name, (kind, _) in packed.items()},
            "objects": {name: state for name, (_, state) in packed.items()},
            "rng": rng_state(),
        }
        path = atomic_write(self.path_for(step), lambda f: torch.save(payload, f))
        self._prune(keep_path=path)
        return path

    def load(
        self,
        path: str | os.PathLike | None = None,
        *,
        restore_rng: bool = True,
        strict: bool = True,
        map_location: str | torch.device | None = "cpu",
        **objects: Any,
    ) -> dict[str, Any]:
        """Restore ``objects`` in place from a checkpoint and return its step and plain values.

        Args:
            path: a checkpoint file, or a directory (its latest checkpoint; a run directory works too); defaults to
                this checkpointer's directory.
            restore_rng: restore the global generators (needed for an exact resume).
            strict: every stateful object in the checkpoint must be given (a forgotten optimizer would silently
                break the resume), and every object given must be in the checkpoint.
            map_location: passed to ``torch.load``; ``load_state_dict`` then moves tensors where the objects live.
            **objects: the objects to restore, by the names they were saved with.

        Returns:
            ``{"step": int, "path": Path, **plain values saved}``.
        """
        file = find_checkpoint(self.directory if path is None else path)
        try:
            payload = torch.load(file, map_location=map_location, weights_only=False)
        except Exception as err:
            raise CheckpointError(f"cannot read checkpoint {file}: {' '.join(str(err).split())}") from err
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise CheckpointError(f"{file} is not a diffrl checkpoint (written by Checkpointer.save)")
        kinds, states = payload["kinds"], payload["objects"]
        missing = [name for name in objects if name not in states]
        forgotten = [name for name, kind in kinds.items() if kind != "value" and name not in objects]
        if missing or (strict and forgotten):
            problem = f"not in it: {', '.join(missing)}" if missing else f"not passed to load: {', '.join(forgotten)}"
            raise CheckpointError(
                f"checkpoint {file} holds {', '.join(sorted(states)) or 'nothing'}; {problem}; "
                "pass the same names as save (or strict=False to skip some)"
            )
        for name, obj in objects.items():
            if kinds[name] == "value":
                raise CheckpointError(
                    f"'{name}' was saved as a plain value and cannot be restored in place; "
                    f"read it from the returned dict: state[{name!r}]"
                )
            try:
                _unpack(obj, kinds[name], states[name])
            except CheckpointError:
                raise
            except Exception as err:
                raise CheckpointError(f"cannot restore '{name}' from {file}: {' '.join(str(err).split())}") from err
        if restore_rng:
            set_rng_state(payload["rng"])
        values = {name: states[name] for name, kind in kinds.items() if kind == "value"}
        return {"step": payload["step"], "path": file, **values}

    def _prune(self, keep_path: Path) -> None:
        # Leftover temporaries of a save that was killed outright (no chance to clean up) go too; only our own names.
        for stale in self.directory.glob(".step_*.pt.*.tmp"):
            if time.time() - stale.stat().st_mtime > 60:
                stale.unlink(missing_ok=True)
        if self.keep is None:
            return
        old = [p for p in self.checkpoints() if p != keep_path]
        for path in old[: max(0, len(old) - (self.keep - 1))]:
            path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"Checkpointer(directory={str(self.directory)!r}, keep={self.keep})"
