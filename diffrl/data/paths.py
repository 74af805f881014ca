"""Where local Minari datasets live: ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``), as Minari decides.

Every function reads the environment variable at call time, so a test or a script can point Minari elsewhere with
:func:`datasets_path_override` and nothing touches the user's own datasets.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from diffrl.errors import ConfigError

__all__ = [
    "DatasetWriteError",
    "datasets_root",
    "dataset_dir",
    "check_dataset_id",
    "check_writable",
    "local_dataset_ids",
    "datasets_path_override",
]

ENV_VAR = "MINARI_DATASETS_PATH"


class DatasetWriteError(OSError, ConfigError):
    """The datasets directory cannot be written (read-only, no permission, full): one line naming it and the fix."""


def write_error(
    directory: str | os.PathLike, err: OSError | None = None, what: str = "write datasets in"
) -> DatasetWriteError:
    """The one-line :class:`DatasetWriteError` for ``directory`` (``err``: the OS error that showed it).

    Example:
        >>> err = write_error("/data", PermissionError(13, "Permission denied"))
        >>> str(err).startswith("cannot write datasets in /data (PermissionError: Permission denied). Fix: point")
        True
    """
    reason = f" ({type(err).__name__}: {err.strerror or err})" if err is not None else " (no write permission)"
    return DatasetWriteError(
        f"cannot {what} {directory}{reason}. Fix: point {ENV_VAR} at a writable directory "
        f"(now {os.environ.get(ENV_VAR, 'unset: ~/.minari/datasets')}), or make {directory} writable."
    )


def check_writable(directory: str | os.PathLike) -> None:
    """Raise :class:`DatasetWriteError` if this process cannot create files in ``directory`` (checked up front, so a
    long collection does not end in a failed write).

    Example:
        >>> import tempfile
        >>> check_writable(tempfile.mkdtemp())
    """
    if not os.access(directory, os.W_OK | os.X_OK):
        raise write_error(directory)


def datasets_root() -> Path:
    """The local Minari datasets directory (created if missing).

    Example:
        >>> import tempfile
        >>> with datasets_path_override(tempfile.mkdtemp()) as root:
        ...     (datasets_root() == root, dataset_dir("a/b-v0") == root / "a" / "b-v0")
        (True, True)
    """
    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        return Path(get_dataset_path())  # creates the directory when missing
    except OSError as err:
        raise write_error(
            err.filename or os.environ.get(ENV_VAR, "~/.minari/datasets"), err, "create the datasets directory"
        ) from None


def dataset_dir(dataset_id: str) -> Path:
    """Directory of a local dataset (``<root>/<dataset_id>``; the Minari files are in its ``data`` subdirectory)."""
    return datasets_root() / dataset_id


def check_dataset_id(dataset_id: str) -> None:
    """Raise a ``ValueError`` naming the expected form unless ``dataset_id`` is a valid Minari id.

    Example:
        >>> check_dataset_id("diffrl/pendulum/medium-v0")
        >>> check_dataset_id("diffrl/pendulum")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: invalid dataset id 'diffrl/pendulum': Minari ids look like 'namespace/name-v0' ...
    """
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"invalid dataset id {dataset_id!r}: Minari ids look like 'namespace/name-v0' (e.g. "
            "'diffrl/pendulum/medium-v0'), ending in -v<version>."
        ) from err


def local_dataset_ids() -> list[str]:
    """Ids of the datasets under the local root, sorted; does not read any dataset (cheap, never warns).

    Example:
        >>> import tempfile
        >>> with datasets_path_override(tempfile.mkdtemp()):
        ...     local_dataset_ids()
        []
    """
    root = datasets_root()
    found = []
    for data in root.rglob("data"):
        relative = data.parent.relative_to(root)
        if data.is_dir() and not any(part.startswith(".") for part in relative.parts):
            found.append(relative.as_posix())
    return sorted(found)


@contextlib.contextmanager
def datasets_path_override(path: str | os.PathLike) -> Iterator[Path]:
    """Point Minari (and diffrl) at another datasets directory inside a ``with`` block; restored afterwards.

    Example:
        >>> import tempfile
        >>> with datasets_path_override(tempfile.mkdtemp()) as root:
        ...     datasets_root() == root
        True
    """
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(path)
    try:
        yield Path(path)
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous
