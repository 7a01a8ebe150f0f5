"""The per-image work of the batch aligner, and the rules that keep its worker processes well behaved.

:func:`process_one` never raises for a bad image: it returns a record whose ``failure`` says whether a rerun
should try again (the columns are described in :mod:`centerloss.align.report`):

- ``transient``: the operating system refused (permission denied, disk full, I/O error, file vanished,
  a folder where a file was expected). Fixing the cause and rerunning retries it (the default).
- ``permanent``: the file itself is the problem (corrupt, truncated, a decompression bomb, not an image),
  there is no face in train mode, or the aligner hit an unexpected error on it. Retried only with
  ``--retry-failed all``.

Worker processes (:func:`init_worker`) ignore SIGINT, so Ctrl-C reaches only the parent, which stops them
and reports one line. They turn SIGTERM into a clean exit (a crop being written is removed, never left
half-done) and ask the kernel for SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG)`` on Linux; a
thread polling ``os.getppid()`` elsewhere), so killing the parent with ``kill -9`` leaves no orphan writing.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
from typing import Any

from ..errors import CenterLossError, DataError

__all__ = ["DISK_FULL", "init_worker", "new_record", "process_chunk", "process_one", "set_detector"]

DISK_FULL = {"ENOSPC", "EFBIG", "EDQUOT"}
_PR_SET_PDEATHSIG = 1
_W: dict[str, Any] = {}


# ------------------------------------------------------------------------------------------ process setup
def _exit_on_sigterm(signum: int, frame: object) -> None:
    if _W.get("busy"):  # inside an image: unwind through atomic_path, which removes its temporary file
        raise SystemExit(128 + signum)
    os._exit(128 + signum)  # idle or already shutting down: nothing half-done, and nothing to print


def _set_pdeathsig(sig: int) -> bool:
    """Linux: the kernel sends ``sig`` to this process when its parent dies; False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def guard_worker(parent_pid: int) -> None:
    """Ignore Ctrl-C, exit cleanly on SIGTERM, and die with the parent (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if not _set_pdeathsig(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()
    if os.getppid() != parent_pid:  # the parent died before we could ask to be told
        os.kill(os.getpid(), signal.SIGTERM)


def set_detector(opts: dict[str, Any]) -> None:
    """Load this process's detector (one thread: the processes are the parallelism)."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from .mtcnn import MTCNN

    _W["opts"] = opts
    _W["det"] = MTCNN(min_face_size=opts["min_face_size"])


def init_worker(opts: dict[str, Any], parent_pid: int) -> None:
    """Pool initializer: :func:`guard_worker`, then :func:`set_detector`."""
    guard_worker(parent_pid)
    _W["worker"] = True
    set_detector(opts)


def clear() -> None:
    _W.clear()


# ------------------------------------------------------------------------------------------ one image
def new_record(rel: str, size: int | None = None, mtime_ns: int | None = None) -> dict[str, Any]:
    """A manifest/state record with every field at its "nothing happened" value."""
    return {"path": rel, "input": 1, "size": size, "mtime_ns": mtime_ns, "status": "failed", "failure": "",
            "decoded": 0, "out": "", "detected": 0, "score": None, "points": None, "reason": "", "faces": 0,
            "errno": None}


def _os_failure(rec: dict[str, Any], doing: str, e: OSError) -> dict[str, Any]:
    rec["failure"], rec["status"] = "transient", "failed"
    rec["errno"] = errno.errorcode.get(e.errno or 0)
    rec["reason"] = f"error: {doing} ({e.strerror or e})"
    return rec


def _read(rec: dict[str, Any], src: str, name: str) -> tuple[Any, str] | None:
    """Read and decode the source -> (rgb, note); or None, with ``rec`` filled in with why not."""
    from ..utils.images import decode_image
    from .files import read_source

    try:
        data = read_source(src, name)
    except OSError as e:
        _os_failure(rec, "cannot read source", e)
        return None
    except DataError as e:
        rec["failure"], rec["reason"] = "permanent", "unreadable: " + str(e).removeprefix(f"{name}: ")
        return None
    try:
        return decode_image(data, name=name)
    except DataError as e:
        rec["failure"], rec["reason"] = "permanent", "unreadable: " + str(e).removeprefix(f"{name}: ")
    except Exception as e:  # a decoder plugin's own bug on a hostile file: still just this file's problem
        rec["failure"], rec["reason"] = "permanent", f"unreadable: {type(e).__name__}: {e}"
    return None


def process_one(task: tuple) -> dict[str, Any]:
    """Decode, align and write one image -> its record (see the module docstring); never raises."""
    import numpy as np

    from ..utils.images import write_image
    from .pipeline import align_rgb

    rel, src, out, out_rel, fallback, size, mtime, name = task
    opts = _W["opts"]
    rec = new_record(rel, size, mtime)
    got = _read(rec, src, name)
    if got is None:
        return rec
    rgb, note = got
    rec["decoded"] = 1
    try:
        res = align_rgb(rgb, opts["size"], opts["mode"], None if fallback is None else np.asarray(fallback),
                        _W["det"])
    except Exception as e:  # never let one image stop a 500k-image run; the manifest says what went wrong
        rec["failure"], rec["reason"] = "permanent", f"error: {type(e).__name__}: {e}"
        return rec
    rec.update(detected=int(res.detected), score=res.score, faces=res.num_faces,
               points=None if res.points is None else np.round(res.points, 3).tolist(),
               reason="; ".join(x for x in (note, res.reason) if x))
    if res.crop is None:  # train mode, no face: the policy's verdict, retried only with --retry-failed all
        rec["status"], rec["failure"] = "skipped", "permanent"
        return rec
    try:
        write_image(out, res.crop, quality=opts["quality"])
    except CenterLossError as e:
        if isinstance(e.__cause__, OSError):  # atomic_path's one-line error for an OS refusal
            return _os_failure(rec, f"cannot write crop {out_rel}", e.__cause__)
        rec["failure"], rec["reason"] = "permanent", f"error: {e}"
        return rec
    except Exception as e:
        rec["failure"], rec["reason"] = "permanent", f"error: cannot write crop {out_rel}: {type(e).__name__}: {e}"
        return rec
    rec["status"], rec["out"] = "ok", out_rel
    return rec


def process_chunk(tasks: list) -> list[dict[str, Any]]:
    """:func:`process_one` for each task (marked busy, so SIGTERM unwinds instead of exiting at once)."""
    from ..utils.atomic import remove_own_temps

    _W["busy"] = True
    done = []
    try:
        for task in tasks:
            _W["writing"] = task[2]
            done.append(process_one(task))
        return done
    except SystemExit as e:
        if _W.get("worker"):  # SIGTERM: atomic_path removed the crop being written on the way here, unless the
            remove_own_temps(_W["writing"])  # signal landed outside its reach; then skip the slow interpreter
            os._exit(int(e.code or 0))  # teardown (torch's): the parent is waiting to finish
        raise
    finally:
        _W["busy"] = False
