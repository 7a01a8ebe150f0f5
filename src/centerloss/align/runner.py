"""Align a whole folder tree: parallel, resumable, and safe against hostile input, faults and interruption.

Layout of ``DST`` after :func:`align_tree`:

- the crops, mirroring ``SRC``: ``SRC/a/b.png`` -> ``DST/a/b.jpg`` (suffix replaced by ``ext``; if two
  sources would collide, e.g. ``b.png`` and ``b.jpg``, both keep their suffix: ``b.png.jpg``, ``b.jpg.jpg``);
  any file name works, including bytes that are not UTF-8 (the crop gets the same bytes);
- ``manifest.csv``: one row per entry under ``SRC`` -- inputs and everything that is not one -- sorted by
  path, columns :data:`MANIFEST_COLUMNS` (documented in :mod:`centerloss.align.report`);
- ``report.md`` and then ``summary.json``: counts computed from the manifest rows, speed, machine load;
  they are removed when a run starts new work and written only when it finishes;
- ``.align/``: the resume state and lock (:mod:`centerloss.align.state`).

What is an input (:mod:`centerloss.align.files`): every regular file whose name does not start with ``.``,
and every symlink to one, whatever its extension (a ``notes.txt`` is reported ``unreadable:``, not silently
dropped). Hidden entries, symlinks to folders, dangling symlinks, symlink loops, FIFOs, sockets and devices
are listed with ``status = skipped`` and the reason; nothing is ever opened that could block.

**Resume and retry.** Each finished chunk of images is saved to the state at once, so an interrupted,
killed or disk-full run keeps its work. A rerun reuses a file's record when the source's size and mtime are
unchanged and its crop exists, except that failures are retried according to ``retry_failed``: ``transient``
(default) retries OS failures (permission denied, disk full, I/O error, vanished file, a folder in the way),
``all`` also retries permanent ones (bad image, no face in train mode, unexpected errors), ``none`` retries
nothing. A rerun with different options (mode, size, ext, min face size, quality, landmarks file) refuses
to mix results unless ``overwrite=True``.

**Faults.** The output folder is checked before any work (read-only, or a parent that is a file: one
:class:`~centerloss.errors.DataError`). Every file is written atomically (:mod:`centerloss.utils.atomic`);
a full disk stops the run with a :class:`~centerloss.errors.RunError` saying how many images were done,
leaving no temporary file and no manifest/summary/report that would look complete. Worker processes ignore
Ctrl-C and die with the parent (:mod:`centerloss.align.workers`); temporary files of a killed run are
removed by the next one. A worker killed by the OS stops the run (RunError) instead of hanging it.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import CenterLossError, ConfigError, DataError, RunError
from ..utils.atomic import check_output_dir, write_json, write_text
from ..utils.signals import ctrl_c_held
from .files import Entry, escape_name, path_str, scan_tree
from .policy import read_landmarks_csv
from .report import MANIFEST_COLUMNS, render_report, summarise, write_manifest
from .state import STATE_DIR, State
from .transform import parse_size
from .workers import DISK_FULL, clear, init_worker, new_record, process_chunk, set_detector

__all__ = ["align_tree", "MANIFEST_COLUMNS", "RETRY_CHOICES", "STATE_DIR"]

RETRY_CHOICES = ("transient", "all", "none")
_CHUNK = 32  # most files per worker task: a smooth progress bar, little IPC, little work lost on a crash
# Temporary names of centerloss.utils.atomic (".<stem>.tmp-<pid>-<8 hex><suffix>"), left by killed runs.
_TMP = re.compile(r"^\..*\.tmp-\d+-[0-9a-f]{8}(\.[^.]+)?$")
_RESULT_FILES = ("summary.json", "report.md", "manifest.csv")


# ----------------------------------------------------------------------------------------------- checks
def _check_options(mode: str, size: tuple[int, int] | str, ext: str, min_face_size: float, quality: int,
                   retry_failed: str, workers: int | None) -> tuple[tuple[int, int], str, int]:
    """Validate the options before anything is touched -> (size, ext, workers); ConfigError naming the value."""
    if mode not in ("train", "test"):
        raise ConfigError(f"mode must be 'train' or 'test', got {mode!r}")
    ext = str(ext).lower().lstrip(".")
    if ext not in ("jpg", "png"):
        raise ConfigError(f"ext must be 'jpg' or 'png', got {ext!r}")
    hw = parse_size(size)
    if not min_face_size >= 12:  # also refuses NaN
        raise ConfigError(f"min face size must be >= 12 px, got {min_face_size}")
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    if retry_failed not in RETRY_CHOICES:
        raise ConfigError(f"retry_failed must be one of {RETRY_CHOICES}, got {retry_failed!r}")
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    return hw, ext, int(workers if workers is not None else (os.cpu_count() or 1))


def _output_names(rels: list[str], ext: str) -> dict[str, str]:
    plain = {r: str(Path(r).with_suffix("." + ext).as_posix()) for r in rels}
    count: dict[str, int] = {}
    for o in plain.values():
        count[o] = count.get(o, 0) + 1
    return {r: (o if count[o] == 1 else f"{r}.{ext}") for r, o in plain.items()}


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise DataError(f"cannot read landmarks file {path}: {e.strerror or e}") from e


def _sweep_temp_files(dst: Path, src: Path) -> int:
    """Remove temporary files that a killed run left in DST (we hold the lock: nobody else writes here)."""
    n = 0
    for root, dirs, files in os.walk(dst):
        dirs[:] = [d for d in dirs if Path(root, d) != src]  # never touch SRC, should it lie inside DST
        for f in files:
            p = os.path.join(root, f)
            try:
                if _TMP.match(f) and stat.S_ISREG(os.lstat(p).st_mode):
                    os.unlink(p)
                    n += 1
            except OSError:
                pass
    return n


def _retire_results(dst: Path) -> None:
    """Remove the previous run's manifest/summary/report, so a run that fails leaves none that looks done."""
    for name in _RESULT_FILES:
        try:
            (dst / name).unlink(missing_ok=True)
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------- planning
def _reusable(r: dict[str, Any] | None, e: Entry, dst: Path, retry: str) -> bool:
    if r is None or r.get("size") != e.size or r.get("mtime_ns") != e.mtime_ns:
        return False
    if r["status"] == "ok":
        return bool(r.get("out")) and (dst / r["out"]).is_file()
    failure = r.get("failure", "")
    if failure == "transient":
        return retry == "none"
    if failure == "permanent":
        return retry != "all"
    return True


def _scan_row(e: Entry) -> dict[str, Any]:
    rec = new_record(e.rel)
    rec.update(input=0, status="skipped" if e.verdict == "skip" else "failed",
               failure="" if e.verdict == "skip" else "transient", reason=e.reason)
    return rec


def _plan(entries: list[Entry], old: dict[str, dict[str, Any]], side: dict[str, Any], src: Path, dst: Path,
          ext: str, retry: str) -> tuple[dict[str, dict[str, Any]], list[tuple]]:
    """-> (records to reuse or for non-inputs, by path; tasks for the workers)."""
    inputs = [e for e in entries if e.verdict == "input"]
    out_rel = _output_names([e.rel for e in inputs], ext)
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for e in entries:
        if e.verdict != "input":
            records[e.rel] = _scan_row(e)
        elif _reusable(old.get(e.rel), e, dst, retry):
            records[e.rel] = old[e.rel]
        else:
            fb = side.get(e.rel)
            todo.append((e.rel, str(src / e.rel), str(dst / out_rel[e.rel]), out_rel[e.rel],
                         None if fb is None else fb.tolist(), e.size, e.mtime_ns, escape_name(e.rel)[0]))
    return records, todo


# ----------------------------------------------------------------------------------------------- running
class _Sink:
    """Takes each finished chunk: saves it to the state first, then stops the run if the disk is full."""

    def __init__(self, state: State, records: dict[str, dict[str, Any]], bar: Any) -> None:
        self.state, self.records, self.bar, self.done = state, records, bar, 0

    def __call__(self, recs: list[dict[str, Any]]) -> None:
        self.state.save_part(recs)
        for r in recs:
            self.records[r["path"]] = r
        self.done += sum(1 for r in recs if r.get("failure") != "transient")  # those a rerun will not redo
        self.bar.update(len(recs))
        full = next((r for r in recs if r.get("errno") in DISK_FULL), None)
        if full is not None:
            raise RunError(f"{escape_name(full['path'])[0]}: {full['reason'].removeprefix('error: ')} "
                           "(disk full?)")


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _start_pool(ctx: Any, n_proc: int, wopts: dict[str, Any]) -> Any:
    """The worker pool, started with Ctrl-C held (:func:`~centerloss.utils.signals.ctrl_c_held`): no worker can
    print a traceback while it imports, and a Ctrl-C in that window is raised once they exist, after they are
    terminated (it was ignored, and lost, before)."""
    pool = None
    try:
        with ctrl_c_held():
            pool = ctx.Pool(n_proc, initializer=init_worker, initargs=(wopts, os.getpid()))
    except KeyboardInterrupt:
        if pool is not None:
            pool.terminate()
        raise
    return pool


def _check_workers(pool: Any, seen: set[int]) -> None:
    """RunError if a worker died (the OS killed it): mp.Pool would otherwise wait for its task forever."""
    procs = getattr(pool, "_pool", [])
    now = {p.pid for p in procs}
    gone = (seen - now) | {p.pid for p in procs if p.exitcode is not None}
    if gone:
        raise RunError(f"a worker process (pid {min(gone)}) died unexpectedly (killed by the OS, e.g. "
                       "out of memory, or it could not start)")
    seen |= now


def _run_pool(todo: list[tuple], workers: int, wopts: dict[str, Any], sink: _Sink) -> None:
    chunk = max(1, min(_CHUNK, math.ceil(len(todo) / workers)))
    n_proc = min(workers, math.ceil(len(todo) / chunk))
    # spawn, not fork: a forked child of a process that already ran torch/OpenMP can deadlock.
    ctx = mp.get_context("spawn")
    pool = _start_pool(ctx, n_proc, wopts)
    with pool:  # leaving the block (done, error, Ctrl-C) terminates the workers; they exit cleanly
        it = pool.imap_unordered(process_chunk, _chunks(todo, chunk))
        seen = {p.pid for p in getattr(pool, "_pool", [])}
        while True:
            try:
                recs = it.next(timeout=1.0)
            except StopIteration:
                break
            except mp.TimeoutError:
                recs = None
            _check_workers(pool, seen)
            if recs is not None:
                sink(recs)
        pool.close()  # done: let the workers exit on their own (terminate is for errors and Ctrl-C)
        pool.join()


def _run_inline(todo: list[tuple], wopts: dict[str, Any], sink: _Sink) -> None:
    import torch

    n_threads = torch.get_num_threads()
    try:
        set_detector(wopts)
        for ch in _chunks(todo, _CHUNK):
            sink(process_chunk(ch))
    finally:
        torch.set_num_threads(n_threads)
        clear()


def _process(todo: list[tuple], workers: int, wopts: dict[str, Any], state: State,
             records: dict[str, dict[str, Any]], progress: bool, dst: Path) -> None:
    from tqdm import tqdm

    with tqdm(total=len(todo), desc="align", unit="img", disable=not progress, smoothing=0.05) as bar:
        sink = _Sink(state, records, bar)
        try:
            if workers == 1:
                _run_inline(todo, wopts, sink)
            else:
                _run_pool(todo, workers, wopts, sink)
        except CenterLossError as e:
            raise type(e)(f"{e}; stopped after {sink.done} of {len(todo)} images, which are kept; fix the "
                          f"cause and rerun the same command to resume into {path_str(dst)}"
                          ) from e


# ----------------------------------------------------------------------------------------------- main
def align_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str], mode: str = "test",
               size: tuple[int, int] | str = (112, 96), workers: int | None = None,
               landmarks: str | os.PathLike[str] | None = None, ext: str = "jpg", min_face_size: float = 40.0,
               quality: int = 95, overwrite: bool = False, progress: bool = True,
               retry_failed: str = "transient") -> dict[str, Any]:
    """Align every image under ``src`` into ``dst`` (layout, resume and fault rules in the module docstring).

    Returns the summary dict that is also written to ``dst/summary.json``. Raises ConfigError for a bad
    option, DataError for a bad SRC/DST/landmarks file, LockedError if another run writes into ``dst``,
    RunError if the run stopped (disk full, a worker killed); KeyboardInterrupt passes through.
    """
    t0 = time.perf_counter()
    info: dict[str, Any] = {"load_average_start": _loadavg(), "retry_failed": retry_failed}
    hw, ext, workers = _check_options(mode, size, ext, min_face_size, quality, retry_failed, workers)
    src_p, dst_p = Path(src).resolve(), Path(dst).resolve()
    if not src_p.is_dir():
        raise DataError(f"source folder not found: {path_str(src_p)}" if not src_p.exists()
                        else f"source {path_str(src_p)} is not a folder")
    if dst_p == src_p or src_p.is_relative_to(dst_p):
        raise ConfigError(f"DST must differ from SRC and not contain it (crops could overwrite the originals): "
                          f"SRC {path_str(src_p)}, DST {path_str(dst_p)}")
    lm_path = Path(landmarks).resolve() if landmarks is not None else None
    side = read_landmarks_csv(lm_path) if lm_path is not None else {}
    check_output_dir(dst_p)
    opts_key = {"mode": mode, "size": list(hw), "ext": ext, "min_face_size": float(min_face_size),
                "quality": int(quality), "landmarks_sha256": _file_hash(lm_path) if lm_path else None}
    state = State(dst_p)
    with state.locked():
        old = state.load(opts_key, overwrite)
        _sweep_temp_files(dst_p, src_p)
        entries = scan_tree(src_p, dst_p if dst_p.is_relative_to(src_p) else None)
        records, todo = _plan(entries, old, side, src_p, dst_p, ext, retry_failed)
        n_inputs = sum(1 for e in entries if e.verdict == "input")
        info.update(reused_from_previous_run=n_inputs - len(todo), processed_this_run=len(todo))
        if todo:
            _retire_results(dst_p)
        wopts = {"mode": mode, "size": hw, "min_face_size": float(min_face_size), "quality": int(quality)}
        t_proc = time.perf_counter()
        if todo:
            _process(todo, workers, wopts, state, records, progress, dst_p)
        final = [records[e.rel] for e in entries]
        info.update(src=str(src_p), dst=str(dst_p), mode=mode, size=f"{hw[0]}x{hw[1]}", ext=ext,
                    min_face_size=float(min_face_size), landmarks_file=str(lm_path) if lm_path else None,
                    workers=workers, seconds_processing=time.perf_counter() - t_proc,
                    unused_side=sorted(set(side) - {e.rel for e in entries if e.verdict == "input"}))
        return _finish(state, dst_p, final, info, t0)


def _finish(state: State, dst: Path, final: list[dict[str, Any]], info: dict[str, Any], t0: float
            ) -> dict[str, Any]:
    """Write manifest, compacted state, report and (last) summary; on failure leave none of them behind."""
    try:
        write_manifest(dst / "manifest.csv", final)
        state.compact([r for r in final if r.get("input")])
        info["seconds_total"] = time.perf_counter() - t0
        summary = summarise(final, info)
        this_run = {k: summary[k] for k in ("finished_at", "processed_this_run", "reused_from_previous_run",
                                            "seconds_total", "images_per_second", "workers",
                                            "load_average_start", "load_average_end")}
        summary["runs"] = state.add_run(this_run)
        write_text(dst / "report.md", render_report(summary, final))
        write_json(dst / "summary.json", summary, indent=1)
    except CenterLossError as e:
        _retire_results(dst)
        raise type(e)(f"{e}; every image is processed and kept: rerun the same command to write the "
                      "manifest and summary") from e
    return summary


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None
