"""A run folder: its lock, its records (config, label map, data report, summary) and its log streams.

The lock (:func:`centerloss.utils.lock.folder_lock` on ``OUT/.lock``) refuses a second training started on
the same folder, naming the holder's PID, instead of both exiting 0 after overwriting each other.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..utils.atomic import check_output_dir, write_json
from ..utils.lock import folder_lock
from .logs import CsvLog, TensorBoard


class RunFolder:
    """Rank 0's handle on ``out_dir``: ``lock()``, ``log(stream, row)``, ``write_json(name, obj)``, ``close()``."""

    def __init__(self, out_dir: str | os.PathLike[str], tensorboard: bool, resume_step: int | None) -> None:
        self.path = Path(out_dir)
        self.resume_step = resume_step
        self._tb_wanted = tensorboard
        self._lock = contextlib.ExitStack()
        self._csv: dict[str, CsvLog] = {}
        self._tb: TensorBoard | None = None

    def lock(self) -> None:
        check_output_dir(self.path, "run folder")
        self._lock.enter_context(folder_lock(self.path / ".lock", f"run folder {self.path}"))

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path / name, obj)

    def log(self, stream: str, row: dict[str, Any], fields: list[str]) -> None:
        """Append ``row`` to ``<stream>_log.csv`` (created on first use; on resume cut back to the checkpoint's
        step so a resumed run's log reads like an uninterrupted one) and to TensorBoard."""
        if stream not in self._csv:
            self._csv[stream] = CsvLog(self.path / f"{stream}_log.csv", fields, self.resume_step)
        self._csv[stream].write(row)
        if self._tb is None:
            self._tb = TensorBoard(self.path / "tb", self._tb_wanted, purge_step=self.resume_step)
        self._tb.scalars(row, int(row["step"]), stream)

    def close(self) -> None:
        for log in self._csv.values():
            log.close()
        self._csv.clear()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._lock.close()
