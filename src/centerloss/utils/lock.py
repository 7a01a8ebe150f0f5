"""One exclusive lock per output folder (training runs, align destinations, galleries).

An ``flock`` on a file in the folder, holding the owner's PID: a second writer is refused with a
:class:`~centerloss.errors.LockedError` naming the folder and that PID, instead of both writing and
overwriting each other. The kernel drops the lock when its process dies (even kill -9), so a dead run never
leaves the folder locked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import LockedError
from .atomic import os_error

__all__ = ["folder_lock"]


@contextmanager
def folder_lock(lock_file: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold ``lock_file`` exclusively for the block; ``what`` names the folder in the refusal."""
    import fcntl

    path = Path(lock_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        raise os_error(e, path.parent, "lock") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise LockedError(f"{what} is in use by another process (pid {holder}, holding {path}); wait for it "
                              "to finish or use another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
