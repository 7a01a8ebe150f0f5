"""Small helpers shared by the benchmark scripts: how loaded the machine was when a figure was taken."""

from __future__ import annotations

import os
import subprocess


def uptime() -> str:
    """`uptime`'s line (load averages), or the bare load averages where the command is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
