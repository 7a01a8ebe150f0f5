"""Run logs: a CSV file per stream (always) and TensorBoard events (when the package is installed).

On resume the CSV is cut back to the checkpoint's step, and TensorBoard is told to purge later events, so the
logs of a resumed run read exactly like those of a run that was never interrupted.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class CsvLog:
    """Append rows with fixed ``fields`` to ``path``; ``resume_step`` keeps earlier rows up to that step."""

    def __init__(self, path: str | os.PathLike[str], fields: Sequence[str], resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.fields = list(fields)
        keep: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                keep = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._f = open(self.path, "w", newline="", encoding="utf-8")
        self._w = csv.DictWriter(self._f, fieldnames=self.fields, extrasaction="ignore")
        self._w.writeheader()
        for r in keep:
            self._w.writerow(r)
        self._f.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._w.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class TensorBoard:
    """A ``SummaryWriter`` if ``tensorboard`` is importable and wanted, else a no-op with the same calls."""

    def __init__(self, log_dir: str | os.PathLike[str], enabled: bool = True, purge_step: int | None = None) -> None:
        self._w = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional dependency: pip install centerloss[tensorboard]
            return
        self._w = SummaryWriter(str(log_dir), purge_step=purge_step)

    @property
    def active(self) -> bool:
        return self._w is not None

    def scalars(self, row: dict[str, Any], step: int, prefix: str) -> None:
        if self._w is None:
            return
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self._w.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
