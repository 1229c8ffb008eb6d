"""Reader/writer locks on an artifact directory, so `export --force` never swaps it under a reader.

Standard library only (the runtime imports it). A reader (`ShadowRuntime.load`) holds a
shared `flock` on the artifact directory while it reads the manifest, hashes the files and
opens the sessions; the exporter takes the exclusive lock on the old directory for the
instant it swaps the new one into place. A reader that opened the old directory just
before the swap notices (the path now names another directory) and opens the new one.
Where `fcntl` does not exist (Windows) or the file system cannot lock, the locks are no-ops.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

READ_ATTEMPTS = 8  # a reader retries this often when the directory is replaced while it waits


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def directory_identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of the directory `path` names now, or None when there is none."""
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def try_flock(fd: int, how: int) -> bool:
    """Lock; False where the file system cannot (e.g. ENOLCK on some network mounts): go on unlocked."""
    try:
        fcntl.flock(fd, how)
        return True
    except BlockingIOError:
        raise
    except OSError:
        return False


@contextmanager
def shared(art_dir: str | Path) -> Iterator[None]:
    """Hold a shared lock on `art_dir` (the directory its path names when the lock is granted).

    """
    if fcntl is None:
        yield
        return
    fd = None
    for _ in range(READ_ATTEMPTS):
        try:
            fd = os.open(art_dir, os.O_RDONLY)
        except (OSError, TypeError, ValueError):  # missing, not a path, ...: the caller reports it
            break
        if not try_flock(fd, fcntl.LOCK_SH) or directory_identity(art_dir) == _identity(os.fstat(fd)):
            break
        os.close(fd)  # replaced while we waited: lock the new one
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


@contextmanager
def exclusive(art_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive lock on the directory `art_dir` names (waits for readers to finish loading)."""
    if fcntl is None:
        yield
        return
    fd = os.open(art_dir, os.O_RDONLY)
    try:
        try_flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
