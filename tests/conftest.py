"""Shared test fixtures: data locations, a free port, small synthetic face sets and tiny train configs.

Tests that need the real data (MNIST, LFW) take the ``mnist_dir`` / ``lfw_images`` / ``lfw_pairs`` fixtures,
which skip -- loudly: the end of the run prints how many tests skipped for want of data and where it looked
-- when ``$CENTERLOSS_DATA`` (default: ``../shared/data`` beside the checkout) does not hold it.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The Ctrl-C tests send SIGINT to the commands they start. A shell that runs the suite as a background job
# (`make test &` in a script) starts it with SIGINT ignored, and an ignored signal stays ignored across exec:
# those commands would never see the Ctrl-C. Give the suite, and so every child, the default disposition.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

DATA = Path(os.environ.get("CENTERLOSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
if DATA.is_dir():  # the library assumes no checkout layout; point it at the shared data for the tests
    os.environ.setdefault("CENTERLOSS_DATA", str(DATA))

_DATA_SKIPS: list[str] = []


def need(path: Path, what: str) -> Path:
    """``path`` if it exists, else skip the test (and count it for the summary)."""
    if not path.exists():
        _DATA_SKIPS.append(what)
        pytest.skip(f"DATA MISSING: {what} not found at {path} (set CENTERLOSS_DATA)")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    from_skips = sum(1 for r in terminalreporter.stats.get("skipped", []) if "DATA MISSING" in str(r.longrepr))
    if from_skips:
        terminalreporter.write_sep("!", f"{from_skips} tests SKIPPED because the shared data is missing "
                                        f"(looked in {DATA}; set CENTERLOSS_DATA)", yellow=True, bold=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return need(DATA, "the shared data folder")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return need(DATA / "mnist" / "t10k-labels-idx1-ubyte.gz", "MNIST").parent


@pytest.fixture(scope="session")
def lfw_images() -> Path:
    return need(DATA / "lfw" / "images", "LFW images")


@pytest.fixture(scope="session")
def lfw_pairs() -> Path:
    return need(DATA / "lfw" / "pairs.txt", "LFW pairs.txt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    """A free TCP port on localhost for a process group's rendezvous."""
    return free_port()


def write_faces(root: Path, identities: int = 4, per_identity: int = 6, hw: tuple[int, int] = (112, 96),
                seed: int = 0) -> Path:
    """``identities`` x ``per_identity`` synthetic crops (noisy copies of one template per identity), PNG."""
    rng = np.random.default_rng(seed)
    for c in range(identities):
        (root / f"id{c}").mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (*hw, 3))
        for i in range(per_identity):
            img = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"id{c}" / f"id{c}_{i + 1:04d}.png")
    return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """4 synthetic identities x 6 crops of 112x96."""
    return write_faces(tmp_path_factory.mktemp("faces"))


def tiny_overrides(data: Path, out: Path, **over) -> dict:
    """A tiny CPU run: face_small at width 4, global batch 8 -> 3 steps per epoch on 24 images, model C."""
    base = {
        "model.name": "face_small", "model.kwargs": {"width": 4, "embed_dim": 8},
        "data.root": str(data), "data.batch_size": 8, "data.workers": 0,
        "aux.name": "center", "aux.lam": 0.01, "aux.kwargs": {"alpha": 0.5},
        "optimizer.lr": 0.02, "schedule.kwargs": {"milestones": [5], "gamma": 0.1}, "schedule.unit": "step",
        "schedule.epochs": 3, "runtime.out_dir": str(out), "runtime.device": "cpu", "runtime.amp": "none",
        "runtime.ckpt_every": 2, "runtime.log_every": 1, "runtime.progress": False, "runtime.tensorboard": False,
    }
    base.update(over)
    return base


def tiny_cfg(data: Path, out: Path, **over):
    from centerloss.engine.config import TrainConfig, apply

    return apply(TrainConfig(), tiny_overrides(data, out, **over))
