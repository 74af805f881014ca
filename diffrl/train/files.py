"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Every file the toolkit writes that a later run depends on (checkpoints, the resolved config, rewritten metric files)
goes through :func:`atomic_write`: the content is written to a temporary file in the *same directory* (so the final
rename never crosses a file system), flushed and ``fsync``-ed, then moved over the destination with ``os.replace``,
which POSIX and Windows both perform atomically. If anything fails before the rename, the temporary file is removed
and the previous version of the destination is untouched.

Permissions are those of an ordinary ``open()``: a new file gets ``0o666 & ~umask`` (``0644`` under the usual umask
``022``), not the ``0600`` of a bare temporary file; a file that is replaced keeps the mode it had.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_text", "current_umask"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file atomically: ``write(fileobj)`` fills a temporary sibling that then replaces ``path``.

    Args:
        path: destination file; its parent directory is created if needed.
        write: called once with a binary file object open for writing (e.g. ``lambda f: torch.save(obj, f)``).

    Returns:
        The destination path.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> p = atomic_write(d / "x.bin", lambda f: f.write(b"new"))
        >>> def broken(f):
        ...     f.write(b"half")
        ...     raise OSError("disk full")
        >>> try:
        ...     atomic_write(p, broken)
        ... except OSError:
        ...     pass
        >>> p.read_bytes(), sorted(q.name for q in d.iterdir())  # old content kept, no temporary left behind
        (b'new', ['x.bin'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _chmod_like_open(fd, path)
        with os.fdopen(fd, "wb") as fileobj:
            write(fileobj)
            fileobj.flush()
            os.fsync(fileobj.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt during a save must not leave a temporary file behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write`.

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "a" / "note.txt", "hello")
        >>> p.read_text()
        'hello'
    """
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc``), else by setting and restoring it.

    Example:
        >>> import os
        >>> old = os.umask(0o027)
        >>> current_umask() == 0o027
        True
        >>> _ = os.umask(old)
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask


def _chmod_like_open(fd: int, path: Path) -> None:
    # mkstemp creates 0600 files; a config or a checkpoint a colleague may read should get what open() would give.
    try:
        mode = os.stat(path).st_mode & 0o7777  # replacing a file: keep its mode
    except OSError:
        mode = 0o666 & ~current_umask()
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable after a power loss; not possible on every platform (Windows), hence best effort.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
