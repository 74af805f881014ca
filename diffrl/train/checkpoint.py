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
* always the global generators (Python, NumPy, torch CPU and CUDA), restored by default;
* the recipe that wrote it (``Checkpointer(recipe=...)``): another recipe cannot resume it.

Each checkpoint has a digest beside it, ``step_<step>.pt.sha256`` (``sha256sum -c`` reads it), written atomically
after the checkpoint. Loading checks, before restoring anything, that the file matches its digest and that every
floating-point tensor and array in it is finite; a directory (or ``resume=RUN_DIR``) resolves to its newest *intact*
checkpoint, with a warning naming the damaged ones skipped. A checkpoint without a digest (written before digests
existed, or by a save killed between the two files) is used only if it is finite, with a warning.

Loading unpickles nothing but tensors and plain data (``torch.load(weights_only=True)``, plus NumPy arrays for the
NumPy generator state): a crafted file cannot run code, it is refused as damaged.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffrl.train.config import ConfigError
from diffrl.train.files import atomic_write, atomic_write_text
from diffrl.train.seeding import env_rng_state, rng_state, set_env_rng_state, set_rng_state

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "latest_checkpoint",
    "find_checkpoint",
    "read_checkpoint",
    "without_contents",
]

_FORMAT = "diffrl-checkpoint"
_VERSION = 1
_NAME_RE = re.compile(r"^step_(\d+)\.pt$")
_RESERVED = ("step", "path")
_DIGEST_SUFFIX = ".sha256"


def _safe_globals() -> list[Any]:
    # What torch's weights-only unpickler must accept beyond tensors and plain containers, and nothing more: NumPy
    # arrays (the global NumPy generator state holds a uint32 array) and TensorDicts (replay-buffer storage). None of
    # these can run code: _make_td only builds an instance of a class that is itself on this list and sets its state.
    from tensordict import TensorDict
    from tensordict._reductions import _make_td

    core = np._core if hasattr(np, "_core") else np.core  # NumPy 2 renamed np.core
    # Every concrete dtype class (an env's saved physics state may hold any of them) and NumPy scalars (a value the
    # caller saved may be an np.float64): plain data, built from a dtype and bytes.
    dtype_classes = [c for c in vars(np.dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]
    return [
        core.multiarray._reconstruct,
        core.multiarray.scalar,
        np.ndarray,
        np.dtype,
        *dtype_classes,
        _make_td,
        TensorDict,
    ]


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

    def __init__(self, directory: str | os.PathLike, keep: int | None = 2, *, recipe: str | None = None) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ConfigError(f"keep must be a positive integer or None (keep all), got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.recipe = recipe

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

        Global generator states are always included, and the recipe name if the checkpointer has one. The previous
        checkpoints stay intact if the save fails. The digest ``<file>.sha256`` is written after the checkpoint.
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
            "recipe": self.recipe,
        }
        path = atomic_write(self.path_for(step), lambda f: torch.save(payload, f))
        # Hashed from the disk, not from memory: the digest vouches for what a later load will read.
        atomic_write_text(_digest_path(path), f"{_sha256(path)}  {path.name}\n")
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
            ``{"step": int, "path": Path, **plain values saved}``; ``path`` is the checkpoint actually used (an older
            one when the newest of a directory is damaged).

        Raises:
            CheckpointError: no intact checkpoint (the message names each file and what is wrong with it), a
                checkpoint of another recipe, or objects that do not match.
        """
        file, payload = read_checkpoint(self.directory if path is None else path, map_location=map_location)
        written_by = payload.get("recipe")
        if self.recipe and written_by and written_by != self.recipe:
            raise CheckpointError(
                f"{file} was written by recipe '{written_by}', not '{self.recipe}'; resume it with: "
                f"python recipes/{written_by}.py resume={_run_dir_or_self(file)}"
            )
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
            _digest_path(path).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"Checkpointer(directory={str(self.directory)!r}, keep={self.keep})"


# ------------------------------------------------------------------------------------------------ verified reading


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + _DIGEST_SUFFIX)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fileobj:
        for block in iter(lambda: fileobj.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_dir_or_self(file: Path) -> Path:
    return file.parent.parent if file.parent.name == "checkpoints" else file


class _Damaged(Exception):
    """Why one checkpoint file cannot be used (a short phrase)."""


def _candidates(path: Path) -> list[Path]:
    # A file is taken as given; a directory offers its checkpoints newest first, so a damaged newest one is skipped.
    if path.is_file():
        return [path]
    for directory in (path, path / "checkpoints"):
        if directory.is_dir():
            found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME_RE.match(p.name)))
            if found:
                return [p for _, p in reversed(found)]
    return [find_checkpoint(path)]  # raises the "not found" / "no checkpoint in" error


def _first_non_finite(obj: Any, where: str) -> str | None:
    if _is_tensor_collection(obj):
        obj = obj.to_dict()
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and obj.numel() and not bool(torch.isfinite(obj).all()):
            return where
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fc" and obj.size and not bool(np.isfinite(obj).all()):
            return where
    elif isinstance(obj, Mapping):
        # A replay-buffer storage ({"_storage": ..., "_len": n}) is preallocated with torch.empty: rows past the n
        # written ones hold whatever the memory held, NaN bit patterns included, and say nothing about the run.
        filled = obj.get("_len") if "_storage" in obj and isinstance(obj.get("_len"), int) else None
        for key, value in obj.items():
            if key == "_storage" and filled is not None:
                value = _leading_rows(value, filled)
            if (found := _first_non_finite(value, f"{where}.{key}" if where else str(key))) is not None:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            if (found := _first_non_finite(value, f"{where}[{i}]")) is not None:
                return found
    return None  # numbers, strings, bytes: Python floats may be inf on purpose (a best score of -inf)


def _leading_rows(obj: Any, n: int) -> Any:
    """The first ``n`` rows (dim 0) of every tensor or array in ``obj``; other values as they are."""
    if _is_tensor_collection(obj):
        obj = obj.to_dict()
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj[:n] if obj.ndim else obj
    if isinstance(obj, Mapping):
        return {key: _leading_rows(value, n) for key, value in obj.items()}
    return obj


def _is_tensor_collection(obj: Any) -> bool:
    from tensordict import is_tensor_collection

    return is_tensor_collection(obj)


def _read_one(file: Path, map_location: Any) -> tuple[dict[str, Any], bool]:
    """The verified payload of one checkpoint file and whether it had a digest; raises _Damaged."""
    sidecar = _digest_path(file)
    has_digest = sidecar.is_file()
    if has_digest:
        try:
            expected = sidecar.read_text().split()[0].lower()
        except (OSError, UnicodeDecodeError, IndexError):
            raise _Damaged(f"its digest file {sidecar.name} is unreadable") from None
        if _sha256(file) != expected:
            raise _Damaged(f"its bytes do not match the sha256 in {sidecar.name}")
    try:
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the refusal below says enough
            payload = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError/EOFError/... on truncated or garbled files
        text = str(err)
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
            # The weights-only unpickler stopped at something that is not tensors or plain data: nothing was called.
            found = re.search(r"GLOBAL ([\w.]+)", text)
            if found:
                raise _Damaged(
                    f"it holds a Python object ({found.group(1)}), not only tensors and plain data; refused"
                ) from None
            found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
            what = f" ({found.group(1).strip()})" if found else ""
            raise _Damaged(f"it is not a tensors-and-plain-data pickle{what}; refused") from None
        raise _Damaged(f"it cannot be read ({_short(err)})") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise _Damaged("it is not a diffrl checkpoint (written by Checkpointer.save)")
    bad = _first_non_finite({"objects": payload.get("objects"), "rng": payload.get("rng")}, "")
    if bad is not None:
        raise _Damaged(f"it holds non-finite values in {bad}")
    return payload, has_digest


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)
    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]]:
    """Read and verify a checkpoint without restoring anything: ``(file used, payload)``.

    ``path`` is a checkpoint file, a checkpoint directory or a run directory (its newest intact checkpoint; damaged
    newer ones are skipped with a warning naming them). Verification: the sha256 digest beside the file, only tensors
    and plain data unpickled, every floating-point tensor and array finite.

    Raises:
        CheckpointError: no intact checkpoint; the message names every file tried and what is wrong with it.

    Example:
        >>> import tempfile
        >>> ckpt = Checkpointer(tempfile.mkdtemp())
        >>> for step in (1, 2):
        ...     _ = ckpt.save(step, net=torch.nn.Linear(1, 1))
        >>> _ = ckpt.path_for(2).write_bytes(b"garbage")        # the newest is damaged: the previous one is used
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     file, payload = read_checkpoint(ckpt.directory)
        >>> file.name, payload["step"]
        ('step_000000001.pt', 1)
    """
    skipped: list[tuple[Path, str]] = []
    for file in _candidates(Path(path)):
        try:
            payload, has_digest = _read_one(file, map_location)
        except _Damaged as why:
            skipped.append((file, str(why)))
            continue
        if skipped:
            damaged = "; ".join(f"{p} ({why})" for p, why in skipped)
            _warn(f"damaged checkpoint skipped: {damaged}; resuming from the previous one, {file}")
        if not has_digest:
            _warn(f"checkpoint {file} has no digest ({file.name}{_DIGEST_SUFFIX}); used because its tensors are finite")
        return file, payload
    if len(skipped) == 1:
        file, why = skipped[0]
        raise CheckpointError(f"checkpoint {file} is damaged: {why}; resume from another checkpoint or start a new run")
    listed = "; ".join(f"{p.name} ({why})" for p, why in skipped)
    raise CheckpointError(
        f"no intact checkpoint in {skipped[0][0].parent}: {listed}; restore one from a backup or start a new run"
    )
