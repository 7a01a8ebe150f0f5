"""Align a whole folder tree: parallel, resumable, with a manifest, a JSON summary and a short report.

Layout of ``DST`` after :func:`align_tree`:

- the crops, mirroring ``SRC``: ``SRC/a/b.png`` -> ``DST/a/b.jpg`` (suffix replaced by ``ext``; if two
  sources would collide, e.g. ``b.png`` and ``b.jpg``, both keep their suffix: ``b.png.jpg``, ``b.jpg.jpg``);
- ``manifest.csv``: one row per file of ``SRC``, sorted by path, columns :data:`MANIFEST_COLUMNS`;
- ``summary.json`` and ``report.md``: counts, detection rate, fallbacks, speed, machine load;
- ``.align/``: the resume state (options, one JSON line per finished file, one per invocation's timing).

Every regular file under ``SRC`` whose name does not start with ``.`` is an input; files that do not decode
are reported (``reason`` starts with ``unreadable:``) and the run goes on.

**Resume.** Each finished file is appended to ``.align/results.jsonl`` as soon as it is done. A rerun reuses
a file's record when the source's size and mtime are unchanged and its crop exists (or no crop was due), so
it skips that work yet still writes a complete manifest. A rerun with different options (mode, size, ext,
min face size, landmarks file) refuses to mix results unless ``overwrite=True``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .policy import read_landmarks_csv
from .transform import parse_size

__all__ = ["align_tree", "MANIFEST_COLUMNS", "STATE_DIR"]

MANIFEST_COLUMNS = ("path", "detected", "score", "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5",
                    "reason")
STATE_DIR = ".align"
_RESULTS = "results.jsonl"
_OPTIONS = "options.json"
_RUNS = "runs.jsonl"
_CHUNK = 32  # files per worker task: small enough for a smooth progress bar, large enough to amortise IPC

# ----------------------------------------------------------------------------------------------- workers
_W: dict[str, Any] = {}


def _init_worker(opts: dict[str, Any]) -> None:
    """Per-process setup: one thread each (the processes are the parallelism), one detector each."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from .mtcnn import MTCNN

    _W["opts"] = opts
    _W["det"] = MTCNN(min_face_size=opts["min_face_size"])


def _process_one(task: tuple[str, str, str, str, list | None, int, int]) -> dict[str, Any]:
    from .imageio import read_rgb, write_image
    from .pipeline import align_rgb

    rel, src, out, out_rel, fallback, size, mtime = task
    opts = _W["opts"]
    rec: dict[str, Any] = {"path": rel, "size": size, "mtime_ns": mtime, "status": "failed", "out": "",
                           "detected": 0, "score": None, "points": None, "reason": "", "faces": 0}
    try:
        rgb, note = read_rgb(src)
    except DataError as e:
        rec["reason"] = "unreadable: " + str(e).removeprefix(f"{src}: ")
        return rec
    try:
        res = align_rgb(rgb, opts["size"], opts["mode"], None if fallback is None else np.asarray(fallback),
                        _W["det"])
        rec.update(detected=int(res.detected), score=res.score, faces=res.num_faces,
                   points=None if res.points is None else np.round(res.points, 3).tolist(),
                   reason="; ".join(x for x in (note, res.reason) if x))
        if res.crop is None:
            rec["status"] = "skipped"
        else:
            write_image(out, res.crop, quality=opts["quality"])
            rec["status"], rec["out"] = "ok", out_rel
    except Exception as e:  # never let one image stop a 500k-image run; the manifest says what went wrong
        rec["status"], rec["reason"] = "failed", f"error: {type(e).__name__}: {e}"
    return rec


def _process_chunk(tasks: list) -> list[dict[str, Any]]:
    return [_process_one(t) for t in tasks]


# ----------------------------------------------------------------------------------------------- helpers
def _list_files(src: Path, exclude: Path | None) -> list[str]:
    out = []
    for root, dirs, files in os.walk(src):
        rp = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (exclude is None or rp / d != exclude))
        for f in sorted(files):
            if not f.startswith(".") and (rp / f).is_file():
                out.append((rp / f).relative_to(src).as_posix())
    return sorted(out)


def _output_names(rels: list[str], ext: str) -> dict[str, str]:
    plain = {r: str(Path(r).with_suffix("." + ext).as_posix()) for r in rels}
    count: dict[str, int] = {}
    for o in plain.values():
        count[o] = count.get(o, 0) + 1
    return {r: (o if count[o] == 1 else f"{r}.{ext}") for r, o in plain.items()}


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _load_state(state: Path, opts_key: dict[str, Any], overwrite: bool) -> dict[str, dict[str, Any]]:
    opt_file, res_file = state / _OPTIONS, state / _RESULTS
    if overwrite and state.exists():
        shutil.rmtree(state)
    if opt_file.is_file():
        try:
            old = json.loads(opt_file.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != opts_key:
            raise DataError(f"{state.parent} holds results made with other options ({old} vs now {opts_key}); "
                            "use a new DST folder or pass --overwrite to redo everything")
    state.mkdir(parents=True, exist_ok=True)
    opt_file.write_text(json.dumps(opts_key, indent=1, sort_keys=True))
    records: dict[str, dict[str, Any]] = {}
    if res_file.is_file():
        with open(res_file, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                    records[r["path"]] = r
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by a crash: that file is simply redone
    return records


def _fmt(v: float | None, nd: int) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def _write_manifest(path: Path, recs: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_COLUMNS)
        for r in recs:
            pts = r["points"] if r["points"] is not None else [[None, None]] * 5
            coords = [_fmt(c, 2) for p in pts for c in p]
            w.writerow([r["path"], r["detected"], _fmt(r["score"], 5), *coords, r["reason"]])
    os.replace(tmp, path)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------------- main
def align_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str], mode: str = "test",
               size: tuple[int, int] | str = (112, 96), workers: int | None = None,
               landmarks: str | os.PathLike[str] | None = None, ext: str = "jpg", min_face_size: float = 40.0,
               quality: int = 95, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Align every image under ``src`` into ``dst`` (layout and resume rules in the module docstring).

    Returns the summary dict that is also written to ``dst/summary.json``.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    load_start = _loadavg()
    src_p, dst_p = Path(src).resolve(), Path(dst).resolve()
    if not src_p.is_dir():
        raise DataError(f"source folder not found: {src_p}")
    if dst_p == src_p:
        raise DataError("DST must differ from SRC (crops would overwrite the originals)")
    if mode not in ("train", "test"):
        raise DataError(f"mode must be 'train' or 'test', got {mode!r}")
    ext = ext.lower().lstrip(".")
    if ext not in ("jpg", "png"):
        raise DataError(f"ext must be 'jpg' or 'png', got {ext!r}")
    hw = parse_size(size)
    if min_face_size < 12:
        raise DataError(f"min face size must be >= 12 px, got {min_face_size}")
    workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
    lm_path = Path(landmarks).resolve() if landmarks is not None else None
    side = read_landmarks_csv(lm_path) if lm_path is not None else {}

    exclude = dst_p if dst_p.is_relative_to(src_p) else None
    rels = _list_files(src_p, exclude)
    out_rel = _output_names(rels, ext)
    opts_key = {"mode": mode, "size": list(hw), "ext": ext, "min_face_size": float(min_face_size),
                "quality": int(quality), "landmarks_sha256": _file_hash(lm_path) if lm_path else None}
    dst_p.mkdir(parents=True, exist_ok=True)
    state = dst_p / STATE_DIR
    old = _load_state(state, opts_key, overwrite)

    records: dict[str, dict[str, Any]] = {}
    todo = []
    for rel in rels:
        st = (src_p / rel).stat()
        r = old.get(rel)
        if (r is not None and r.get("size") == st.st_size and r.get("mtime_ns") == st.st_mtime_ns
                and (r.get("status") != "ok" or (dst_p / r.get("out", "")).is_file())):
            records[rel] = r
            continue
        fb = side.get(rel)
        todo.append((rel, str(src_p / rel), str(dst_p / out_rel[rel]), out_rel[rel],
                     None if fb is None else fb.tolist(), st.st_size, st.st_mtime_ns))
    reused = len(records)
    unused_side = sorted(set(side) - set(rels))

    wopts = {"mode": mode, "size": hw, "min_face_size": float(min_face_size), "quality": int(quality)}
    t_proc = time.perf_counter()
    res_file = state / _RESULTS
    with open(res_file, "a", encoding="utf-8") as log, \
            tqdm(total=len(todo), desc="align", unit="img", disable=not progress, smoothing=0.05) as bar:
        def take(recs: list[dict[str, Any]]) -> None:
            for rec in recs:
                records[rec["path"]] = rec
                log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.update(len(recs))

        if not todo:
            pass
        elif workers == 1:
            import torch

            n_threads = torch.get_num_threads()
            try:
                _init_worker(wopts)
                for ch in _chunks(todo, _CHUNK):
                    take(_process_chunk(ch))
            finally:
                torch.set_num_threads(n_threads)
                _W.clear()
        else:
            # spawn, not fork: a forked child of a process that already ran torch/OpenMP can deadlock.
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(wopts,)) as pool:
                for recs in pool.imap_unordered(_process_chunk, _chunks(todo, _CHUNK)):
                    take(recs)
    t_done = time.perf_counter()

    final = [records[r] for r in rels]
    # Compact the resume log to exactly the current files (it only grows during a run).
    tmp = res_file.with_name(_RESULTS + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in final), encoding="utf-8")
    os.replace(tmp, res_file)
    _write_manifest(dst_p / "manifest.csv", final)
    summary = _summarise(final, src_p, dst_p, mode, hw, ext, min_face_size, lm_path, workers, reused,
                         len(todo), t_done - t_proc, time.perf_counter() - t0, load_start, unused_side)
    # Keep every invocation's speed (a resumed run's own figures say little about the whole job).
    this_run = {k: summary[k] for k in ("finished_at", "processed_this_run", "reused_from_previous_run",
                                        "seconds_total", "images_per_second", "workers", "load_average_start",
                                        "load_average_end")}
    with open(state / _RUNS, "a", encoding="utf-8") as f:
        f.write(json.dumps(this_run) + "\n")
    summary["runs"] = [json.loads(line) for line in (state / _RUNS).read_text().splitlines() if line.strip()]
    (dst_p / "summary.json").write_text(json.dumps(summary, indent=1))
    (dst_p / "report.md").write_text(_report(summary, final))
    return summary


def _summarise(final: list[dict[str, Any]], src: Path, dst: Path, mode: str, hw: tuple[int, int], ext: str,
               min_face: float, lm: Path | None, workers: int, reused: int, processed: int, t_proc: float,
               t_total: float, load_start: list[float] | None, unused_side: list[str]) -> dict[str, Any]:
    import torch

    unreadable = [r["path"] for r in final if r["reason"].startswith("unreadable:")]
    errors = [r["path"] for r in final if r["reason"].startswith("error:")]
    decoded = len(final) - len(unreadable) - len(errors)
    detected = sum(1 for r in final if r["detected"])
    fb_file = [r["path"] for r in final if "fallback: landmarks file" in r["reason"]]
    fb_default = [r["path"] for r in final if "fallback: default" in r["reason"]]
    return {
        "src": str(src), "dst": str(dst), "mode": mode, "size": f"{hw[0]}x{hw[1]}", "ext": ext,
        "min_face_size": min_face, "landmarks_file": str(lm) if lm else None,
        "files": len(final), "decoded": decoded, "crops": sum(1 for r in final if r["status"] == "ok"),
        "detected": detected, "detection_rate": detected / decoded if decoded else None,
        "multi_face": sum(1 for r in final if r.get("faces", 0) > 1),
        "converted": sum(1 for r in final if r["reason"].startswith("converted")),
        "fallback_landmarks_file": len(fb_file), "fallback_default": len(fb_default),
        "skipped_no_face": sum(1 for r in final if r["status"] == "skipped"),
        "unreadable": len(unreadable), "errors": len(errors),
        "processed_this_run": processed, "reused_from_previous_run": reused,
        "seconds_processing": round(t_proc, 2), "seconds_total": round(t_total, 2),
        "images_per_second": round(processed / t_total, 2) if processed and t_total > 0 else None,
        "workers": workers, "cpu_count": os.cpu_count(), "load_average_start": load_start,
        "load_average_end": _loadavg(), "python": sys.version.split()[0], "torch": torch.__version__,
        "machine": platform.platform(), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "fallback_default_files": fb_default, "fallback_landmarks_files": fb_file,
        "unreadable_files": unreadable, "error_files": errors,
        "landmarks_rows_not_in_src": unused_side[:100],
    }


def _report(s: dict[str, Any], final: list[dict[str, Any]]) -> str:
    rate = "n/a" if s["detection_rate"] is None else f"{100 * s['detection_rate']:.2f}%"
    lines = [
        f"# Alignment report: {s['src']}",
        "",
        f"Mode `{s['mode']}`, crops {s['size']} `.{s['ext']}`, min face {s['min_face_size']:g} px, "
        f"{s['workers']} workers on {s['cpu_count']} CPUs. Finished {s['finished_at']}.",
        "",
        "| count | value |",
        "|---|---|",
        f"| files | {s['files']} |",
        f"| decoded | {s['decoded']} |",
        f"| face detected | {s['detected']} ({rate} of decoded) |",
        f"| crops written | {s['crops']} |",
        f"| fallback: landmarks file | {s['fallback_landmarks_file']} |",
        f"| fallback: default centre points | {s['fallback_default']} |",
        f"| skipped, no face (train mode) | {s['skipped_no_face']} |",
        f"| several faces (chose largest near centre) | {s['multi_face']} |",
        f"| converted to RGB (gray/CMYK/alpha/...) | {s['converted']} |",
        f"| unreadable | {s['unreadable']} |",
        f"| errors | {s['errors']} |",
        "",
        f"Speed: {s['processed_this_run']} images processed this run, {s['reused_from_previous_run']} reused "
        f"from an earlier run; {s['seconds_total']} s end to end"
        + (f", **{s['images_per_second']} images/s**." if s["images_per_second"] else "."),
        f"Load average (1, 5, 15 min) at start {s['load_average_start']}, at end {s['load_average_end']}.",
        "",
    ]
    if len(s.get("runs", [])) > 1:
        lines += ["## All runs into this folder", "", "| finished | processed | reused | seconds | images/s | "
                  "workers | load avg at start |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['finished_at']} | {r['processed_this_run']} | {r['reused_from_previous_run']} | "
                  f"{r['seconds_total']} | {r['images_per_second'] or '-'} | {r['workers']} | "
                  f"{r['load_average_start']} |" for r in s["runs"]]
        lines.append("")
    notable = [r for r in final if r["reason"] and not r["reason"].endswith("chose largest near centre")]
    if notable:
        lines += ["## Files with a fallback, skip or problem", "", "| path | reason |", "|---|---|"]
        lines += [f"| {r['path']} | {r['reason']} |" for r in notable[:500]]
        if len(notable) > 500:
            lines.append(f"| ... | {len(notable) - 500} more in manifest.csv |")
        lines.append("")
    return "\n".join(lines)
