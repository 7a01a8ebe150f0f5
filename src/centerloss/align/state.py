"""Resume state of the batch aligner, in ``DST/.align/``; every file in it is written atomically.

- ``options.json``: the options that shape the crops; a rerun with other options refuses to mix results.
- ``parts/*.jsonl``: one file per finished chunk of images (one JSON record per line), written atomically
  (and fsynced) as soon as the chunk is done, so a crash, a full disk, ``kill -9`` or Ctrl-C loses at most
  the chunks in flight. Names sort in the order they were written.
- ``results.jsonl``: at the end of a run the records of the current SRC files are compacted into it and the
  parts are removed. Loading reads it, then the parts in order (a later record of a path wins).
- ``runs.jsonl``: one line per finished invocation (timing, load), kept for the report.
- ``lock``: held (``flock``) for the whole run, so two aligners never write into one DST at once.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..utils.atomic import os_error, write_json, write_text
from ..utils.lock import folder_lock

__all__ = ["STATE_DIR", "State", "upgrade_record"]

STATE_DIR = ".align"
_RESULTS, _OPTIONS, _RUNS, _PARTS, _LOCK = "results.jsonl", "options.json", "runs.jsonl", "parts", "lock"


def upgrade_record(r: dict[str, Any]) -> dict[str, Any]:
    """Fill the fields that records written before ``failure``/``decoded`` existed lack (old DST folders)."""
    if "failure" not in r:
        reason = r.get("reason", "")
        if r.get("status") == "failed":
            r["failure"] = "transient" if reason.startswith("error:") else "permanent"
        else:
            r["failure"] = "permanent" if r.get("status") == "skipped" else ""
        r["decoded"] = int(r.get("status") in ("ok", "skipped"))
    r.setdefault("input", 1)
    r.setdefault("out", "")
    r.setdefault("errno", None)
    return r


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise os_error(e, path, "read") from e
    out = []
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line of a file from an older version, cut short by a crash: that file is redone
        if isinstance(r, dict):
            out.append(r)
    return out


class State:
    """The ``.align`` folder of one DST (layout in the module docstring)."""

    def __init__(self, dst: Path) -> None:
        self.dir = dst / STATE_DIR
        self._stamp = f"{time.time_ns():020d}"
        self._seq = 0

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the DST lock for the block; LockedError (exit 2) if another aligner holds it."""
        if self.dir.exists() and not self.dir.is_dir():
            raise DataError(f"{self.dir} exists and is not a folder; remove it or use another DST")
        try:
            self.dir.mkdir(exist_ok=True)
        except OSError as e:
            raise os_error(e, self.dir, "create") from e
        with folder_lock(self.dir / _LOCK, f"{self.dir.parent} (another `centerloss align` writes into it)"):
            yield

    def load(self, options: dict[str, Any], overwrite: bool) -> dict[str, dict[str, Any]]:
        """Check/record the options and return the finished records by path (empty after ``overwrite``)."""
        if overwrite:
            for p in self.dir.iterdir():
                if p.name == _LOCK:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        opt_file = self.dir / _OPTIONS
        if opt_file.is_file():
            try:
                old = json.loads(opt_file.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if old != options:
                raise DataError(f"{self.dir.parent} holds results made with other options ({old} vs now "
                                f"{options}); use a new DST folder or pass --overwrite to redo everything")
        else:
            write_json(opt_file, options, indent=1)
        records: dict[str, dict[str, Any]] = {}
        files = [self.dir / _RESULTS] + self._parts()
        for f in files:
            if f.is_file():
                for r in _read_jsonl(f):
                    if isinstance(r.get("path"), str) and isinstance(r.get("status"), str):
                        records[r["path"]] = upgrade_record(r)
        return records

    def _parts(self) -> list[Path]:
        d = self.dir / _PARTS
        # Hidden names are temporaries of a write that never finished (atomic_path); the next run sweeps them.
        return sorted(p for p in d.iterdir() if p.suffix == ".jsonl" and not p.name.startswith(".")) \
            if d.is_dir() else []

    def save_part(self, recs: list[dict[str, Any]]) -> None:
        """Record a finished chunk durably (atomic + fsync); raises RunError when the disk is full."""
        self._seq += 1
        write_text(self.dir / _PARTS / f"{self._stamp}-{self._seq:06d}.jsonl",
                   "".join(json.dumps(r) + "\n" for r in recs))

    def compact(self, recs: list[dict[str, Any]]) -> None:
        """Replace results.jsonl by exactly ``recs`` and drop the parts already folded into it."""
        parts = self._parts()
        write_text(self.dir / _RESULTS, "".join(json.dumps(r) + "\n" for r in recs))
        for p in parts:
            p.unlink(missing_ok=True)

    def add_run(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        """Append one invocation's timing to runs.jsonl (rewritten atomically) -> all runs so far."""
        f = self.dir / _RUNS
        runs = (_read_jsonl(f) if f.is_file() else []) + [run]
        write_text(f, "".join(json.dumps(r) + "\n" for r in runs))
        return runs
