"""What a report or benchmark says about the machine that produced it (figures mean little without it)."""

from __future__ import annotations

import os
import platform
import threading
from typing import Any

__all__ = ["LoadSampler", "cpu_model", "load_average", "machine_info", "uptime"]


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


def uptime() -> str:
    """``uptime``'s line (how long up, load averages), or the bare load averages where the command is missing."""
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        la = load_average()
        return "load average: " + (", ".join(f"{x:.2f}" for x in la) if la else "unknown")


def machine_info(device: Any = None) -> dict[str, Any]:
    """Platform, CPU, memory, torch build and threads, load average and (for a CUDA ``device``) the GPU."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
    }
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        pass
    dev = torch.device(device) if device is not None else None
    if dev is not None:
        info["device"] = str(dev)
        if dev.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(dev)
    return info


class LoadSampler:
    """Samples the 1-minute load average every ``period`` seconds in a daemon thread, for runs on shared
    machines: ``with LoadSampler() as load: ...; load.summary()``."""

    def __init__(self, period: float = 15.0) -> None:
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            la = load_average()
            if la is None:  # pragma: no cover
                return
            self.samples.append(la[0])
            self._stop.wait(self.period)

    def __enter__(self) -> LoadSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=1.0)

    def summary(self) -> dict[str, float | int | None]:
        if not self.samples:
            return {"mean": None, "max": None, "samples": 0}
        return {"mean": round(sum(self.samples) / len(self.samples), 2), "max": round(max(self.samples), 2),
                "samples": len(self.samples)}
