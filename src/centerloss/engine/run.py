"""A run folder: its lock, its records (config, label map, data report, summary) and its log streams.

The lock is an ``flock`` on ``OUT/.lock`` holding the owner's PID: a second training started on the same
folder is refused with that PID instead of both exiting 0 after overwriting each other. The kernel drops the
lock when its process dies, so a killed run never leaves the folder locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from ..errors import LockedError
from ..utils.atomic import check_output_dir, write_json
from .logs import CsvLog, TensorBoard


class RunFolder:
    """Rank 0's handle on ``out_dir``: ``lock()``, ``log(stream, row)``, ``write_json(name, obj)``, ``close()``."""

    def __init__(self, out_dir: str | os.PathLike[str], tensorboard: bool, resume_step: int | None) -> None:
        self.path = Path(out_dir)
        self.resume_step = resume_step
        self._tb_wanted = tensorboard
        self._lock_fd: int | None = None
        self._csv: dict[str, CsvLog] = {}
        self._tb: TensorBoard | None = None

    def lock(self) -> None:
        check_output_dir(self.path, "run folder")
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"{self.path} is in use by another training (pid {holder}); wait for it to finish "
                              "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

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
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
