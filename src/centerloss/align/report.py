"""What the batch aligner writes for people: ``manifest.csv``, ``summary.json`` and ``report.md``.

**manifest.csv** (UTF-8), one row per entry under SRC, sorted by path, columns :data:`MANIFEST_COLUMNS`.
The first 14 columns are unchanged from earlier versions; the last five were added at the end:

=============  ==========================================================================================
path           relative to SRC, ``/``-separated (escaped when ``path_escaped`` is 1, see below)
detected       1 if MTCNN found the face whose points follow, else 0
score          O-Net probability of the chosen face ("" without detection)
x1 ... y5      the 5 points used for the crop, source pixels ("" when no crop was made)
reason         "" for a plain detection, else what happened (fallback, conversion, skip, failure)
status         ``ok`` (crop written), ``skipped`` (no crop by policy: no face in train mode, hidden,
               symlink to a folder, dangling symlink, FIFO ...) or ``failed`` (a crop was due but not made)
failure        "" (nothing to retry), ``transient`` (an OS failure: retried by the next run by default) or
               ``permanent`` (bad file, or no face in train mode: retried only with ``--retry-failed all``)
decoded        1 if the image decoded; the detection rate is ``sum(detected) / sum(decoded)``
out            the crop, relative to DST ("" without a crop), escaped like ``path``
path_escaped   1 if the name is not valid UTF-8: then ``path`` and ``out`` hold each undecodable byte as
               ``\\xHH`` and each backslash as ``\\\\`` (:func:`centerloss.align.files.unescape_name`
               inverts it); 0 means they are the literal names
=============  ==========================================================================================

The summary and report are computed from exactly these rows, so their counts can be checked against the
manifest. ``summary.json`` is written last: its presence means the run finished.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_path
from .files import escape_name

__all__ = ["MANIFEST_COLUMNS", "safe_text", "summarise", "render_report", "write_manifest"]

MANIFEST_COLUMNS = ("path", "detected", "score", "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5",
                    "reason", "status", "failure", "decoded", "out", "path_escaped")


def safe_text(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes of file names) as ``\\xHH``, so it can be written."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _fmt(v: float | None, nd: int) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def _escaped(text: str, flag: bool) -> str:
    return os.fsencode(text).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace") if flag else text


def manifest_row(r: dict[str, Any]) -> list[str]:
    """One record -> its manifest.csv fields (order of :data:`MANIFEST_COLUMNS`)."""
    _, flag = escape_name(r["path"])
    pts = r["points"] if r["points"] is not None else [[None, None]] * 5
    coords = [_fmt(c, 2) for p in pts for c in p]
    return [_escaped(r["path"], flag), str(int(r["detected"])), _fmt(r["score"], 5), *coords,
            safe_text(r["reason"]), r["status"], r.get("failure", ""), str(int(r.get("decoded", 0))),
            _escaped(r.get("out", ""), flag), str(int(flag))]


def write_manifest(path: Path, recs: list[dict[str, Any]]) -> None:
    """Write manifest.csv atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(MANIFEST_COLUMNS)
            w.writerows(manifest_row(r) for r in recs)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _names(rows: list[dict[str, Any]], limit: int | None = None) -> list[str]:
    return [escape_name(r["path"])[0] for r in rows[:limit]]


def summarise(final: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """Counts over the final manifest rows ``final`` plus the run facts in ``info`` -> summary.json's dict.

    ``decoded`` counts rows whose image decoded and ``detected`` those of them with a detected face, so the
    detection rate is at most 1 by construction (a crop that failed to be written still decoded).
    """
    import torch

    inputs = [r for r in final if r.get("input")]
    unreadable = [r for r in final if r["reason"].startswith("unreadable:")]
    errors = [r for r in final if r["status"] == "failed" and r["reason"].startswith("error:")]
    decoded = sum(1 for r in final if r.get("decoded"))
    detected = sum(1 for r in final if r.get("decoded") and r["detected"])
    fb_file = [r for r in final if "fallback: landmarks file" in r["reason"]]
    fb_default = [r for r in final if "fallback: default" in r["reason"]]
    transient = [r for r in final if r["status"] == "failed" and r.get("failure") == "transient"]
    not_inputs = [r for r in final if not r.get("input")]
    processed, t_total = info["processed_this_run"], info["seconds_total"]
    return {
        **{k: info[k] for k in ("src", "dst", "mode", "size", "ext", "min_face_size", "landmarks_file")},
        "entries": len(final), "files": len(inputs), "not_inputs": len(not_inputs),
        "decoded": decoded, "crops": sum(1 for r in final if r["status"] == "ok"),
        "detected": detected, "detection_rate": detected / decoded if decoded else None,
        "multi_face": sum(1 for r in final if r.get("faces", 0) > 1),
        "converted": sum(1 for r in final if r["reason"].startswith("converted")),
        "fallback_landmarks_file": len(fb_file), "fallback_default": len(fb_default),
        "skipped_no_face": sum(1 for r in inputs if r["status"] == "skipped"),
        "unreadable": len(unreadable), "errors": len(errors), "failed_transient": len(transient),
        "first_error": f"{_names(errors, 1)[0]}: {safe_text(errors[0]['reason'])}" if errors else None,
        "retry_failed": info["retry_failed"],
        "processed_this_run": processed, "reused_from_previous_run": info["reused_from_previous_run"],
        "seconds_processing": round(info["seconds_processing"], 2), "seconds_total": round(t_total, 2),
        "images_per_second": round(processed / t_total, 2) if processed and t_total > 0 else None,
        "workers": info["workers"], "cpu_count": os.cpu_count(), "load_average_start": info["load_average_start"],
        "load_average_end": _loadavg(), "python": sys.version.split()[0], "torch": torch.__version__,
        "machine": platform.platform(), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "fallback_default_files": _names(fb_default), "fallback_landmarks_files": _names(fb_file),
        "unreadable_files": _names(unreadable), "error_files": _names(errors),
        "not_input_files": _names(not_inputs, 100),
        "landmarks_rows_not_in_src": [safe_text(p) for p in info["unused_side"][:100]],
    }


def _md(text: str) -> str:
    return safe_text(text).replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")


def _runs_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["## All runs into this folder", "", "| finished | processed | reused | seconds | images/s | "
             "workers | load avg at start |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['finished_at']} | {r['processed_this_run']} | {r['reused_from_previous_run']} | "
              f"{r['seconds_total']} | {r['images_per_second'] or '-'} | {r['workers']} | "
              f"{r['load_average_start']} |" for r in runs]
    return lines + [""]


def render_report(s: dict[str, Any], final: list[dict[str, Any]]) -> str:
    """report.md: the summary's counts, every run's speed, and the files that need a look."""
    rate = "n/a" if s["detection_rate"] is None else f"{100 * s['detection_rate']:.2f}%"
    lines = [
        f"# Alignment report: {_md(s['src'])}", "",
        f"Mode `{s['mode']}`, crops {s['size']} `.{s['ext']}`, min face {s['min_face_size']:g} px, "
        f"{s['workers']} workers on {s['cpu_count']} CPUs. Finished {s['finished_at']}.", "",
        "| count | value |", "|---|---|",
        f"| entries under SRC (manifest rows) | {s['entries']} |",
        f"| not inputs (hidden, symlink to folder, dangling/looping symlink, FIFO/socket/device) | "
        f"{s['not_inputs']} |",
        f"| files (inputs) | {s['files']} |",
        f"| decoded | {s['decoded']} |",
        f"| face detected | {s['detected']} ({rate} of decoded) |",
        f"| crops written | {s['crops']} |",
        f"| fallback: landmarks file | {s['fallback_landmarks_file']} |",
        f"| fallback: default centre points | {s['fallback_default']} |",
        f"| skipped, no face (train mode) | {s['skipped_no_face']} |",
        f"| several faces (chose largest near centre) | {s['multi_face']} |",
        f"| converted to RGB (gray/CMYK/alpha/...) | {s['converted']} |",
        f"| unreadable | {s['unreadable']} |",
        f"| errors (of which OS failures a rerun retries) | {s['errors']} ({s['failed_transient']}) |", "",
        f"Speed: {s['processed_this_run']} images processed this run, {s['reused_from_previous_run']} reused "
        f"from an earlier run; {s['seconds_total']} s end to end"
        + (f", **{s['images_per_second']} images/s**." if s["images_per_second"] else "."),
        f"Load average (1, 5, 15 min) at start {s['load_average_start']}, at end {s['load_average_end']}.", "",
    ]
    if len(s.get("runs", [])) > 1:
        lines += _runs_table(s["runs"])
    notable = [r for r in final if r["reason"] and not r["reason"].endswith("chose largest near centre")]
    if notable:
        lines += ["## Files with a fallback, skip or problem", "", "| path | reason |", "|---|---|"]
        lines += [f"| {_md(escape_name(r['path'])[0])} | {_md(r['reason'])} |" for r in notable[:500]]
        if len(notable) > 500:
            lines.append(f"| ... | {len(notable) - 500} more in manifest.csv |")
        lines.append("")
    return "\n".join(lines)
