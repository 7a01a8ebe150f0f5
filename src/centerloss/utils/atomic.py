"""Atomic writes: a result file is either absent, the old version, or the complete new version.

Every writer goes through :func:`atomic_path` (a file) or :func:`atomic_dir` (a folder): the content is
written to a hidden temporary name beside the target, flushed to disk (``fsync``), renamed over the target
(``os.replace`` is atomic on POSIX) and the folder entry is flushed too. If anything fails -- disk full, a
killed process that raised ``KeyboardInterrupt``, an exception in the writer -- the temporary is removed and
the target is untouched, so no half-written ``report.json`` or 0-byte ``roc.png`` is ever left looking valid.

:func:`check_output_dir` is called before long work starts, so a read-only folder or a parent that is a file
is refused in one line instead of after an hour of training.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import DataError, RunError

__all__ = ["atomic_dir", "atomic_path", "check_output_dir", "fsync_dir", "os_error", "write_bytes",
           "write_json", "write_text"]

_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def os_error(e: OSError, path: str | os.PathLike[str], doing: str = "write") -> Exception:
    """A one-line error for an OS failure on ``path``: disk full is a failed run (exit 1), the rest
    (read-only, permission, not a directory ...) is a refused path (exit 2)."""
    why = e.strerror or str(e)
    if e.errno in _DISK_FULL:
        return RunError(f"cannot {doing} {path}: {why} (disk full?); nothing partial was left behind")
    return DataError(f"cannot {doing} {path}: {why}")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def remove_own_temps(path: str | os.PathLike[str]) -> None:
    """Delete this process's temporaries for ``path`` (named by :func:`_tmp_name`). For a worker exiting on a
    signal, which can land where :func:`atomic_path`'s own cleanup never runs (e.g. inside ``contextlib``
    between the writer's return and the generator's resumption)."""
    p = Path(path)
    for t in p.parent.glob(f".{glob.escape(p.stem)}.tmp-{os.getpid()}-*{glob.escape(p.suffix)}"):
        _remove(t)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_name(path: Path) -> Path:
    # Same folder (rename stays on one filesystem), hidden, unique, and it keeps the suffix so that writers
    # which pick a format from the name (np.savez, matplotlib's savefig, PIL) still do the right thing.
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike[str], durable: bool = True) -> Iterator[Path]:
    """Yield a temporary file name; when the block ends normally it becomes ``path`` atomically.

    ``durable=False`` skips the fsyncs (the rename is still atomic): for bulk outputs such as thousands of
    crops, where a crash may lose the newest files but never leaves a partial one under its final name.

    >>> with atomic_path("out/report.png") as tmp:   # doctest: +SKIP
    ...     fig.savefig(tmp)
    """
    final = Path(path)
    if final.parent.exists() and not final.parent.is_dir():  # mkdir would only say "File exists"
        e = NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(final.parent))
        raise os_error(e, final) from e
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, final.parent, "create folder") from e
    tmp = _tmp_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"the writer did not create {tmp}")
        if tmp.is_file():  # some writers (safetensors) create files 0600: give results the usual mode
            os.chmod(tmp, 0o666 & ~_umask())
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, final)
        if durable:
            fsync_dir(final.parent)
    except OSError as e:
        _remove(tmp)
        raise os_error(e, final) from e
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """JSON with NaN refused (``allow_nan=False``): a result that is not a number must be said, not hidden."""
    write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder; when the block ends normally it replaces ``path`` (a folder) atomically.

    Every file inside is fsynced before the rename. An existing ``path`` is swapped out and deleted only
    after the new one is in place, so a crash at any moment leaves one complete version.
    """
    final = Path(path)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        fsync_dir(tmp)
        if final.exists():
            trash = final.with_name(f".old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as e:
        _remove(tmp)
        raise os_error(e, final) from e
    except BaseException:
        _remove(tmp)
        raise


def check_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove it is writable, before any long work; a clear error otherwise."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DataError(f"{what} {p} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as e:
        raise os_error(e, p, f"write to {what}") from e
    return p
