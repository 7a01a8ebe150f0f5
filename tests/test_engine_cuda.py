"""CUDA-only engine checks (skipped on CPU machines): bf16/fp16 autocast with channels-last, and exact resume
on the GPU when ``runtime.deterministic`` is on."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_cfg
from safetensors.torch import load_file
from test_engine import METRICS, Crash, _crash_at

from centerloss.engine.config import apply
from centerloss.engine.logs import read_csv
from centerloss.engine.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_channels_last_training(faces, tmp_path, amp) -> None:
    cfg = tiny_cfg(faces, tmp_path / amp, **{"runtime.device": "cuda", "runtime.amp": amp,
                                             "runtime.channels_last": True, "runtime.deterministic": False})
    trainer = Trainer(cfg)
    summary = trainer.fit()
    assert summary["steps"] == 9 and summary["device"].startswith("cuda")
    rows = read_csv(tmp_path / amp / "train_log.csv")
    assert all(math.isfinite(float(r["loss"])) for r in rows)  # no NaN or Inf
    assert trainer.objective.aux.centers.dtype == torch.float32  # centers stay fp32 under autocast
    assert torch.isfinite(trainer.objective.aux.centers).all()
    state = load_file(str(tmp_path / amp / "checkpoints" / "step_00000009" / "objective.safetensors"))
    assert state["aux.centers"].abs().sum() > 0


def test_no_host_sync_on_cuda(faces, tmp_path) -> None:
    """The steady-state step never blocks the host: torch's own CUDA sync detector, set to error."""
    cfg = tiny_cfg(faces, tmp_path / "sync", **{"runtime.device": "cuda", "runtime.amp": "bf16",
                                                "runtime.log_every": 100, "runtime.ckpt_every": 100})
    t = Trainer(cfg)
    orig = t.train_step

    def strict(x, y):
        if t.step >= 1:  # the first step allocates optimizer state
            torch.cuda.set_sync_debug_mode("error")
        try:
            orig(x, y)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    t.train_step = strict
    assert t.fit()["steps"] == 9


def test_exact_resume_on_cuda(faces, tmp_path) -> None:
    over = {"runtime.device": "cuda", "runtime.amp": "bf16", "runtime.channels_last": True,
            "runtime.deterministic": True}
    Trainer(tiny_cfg(faces, tmp_path / "ref", **over)).fit()
    cfg = tiny_cfg(faces, tmp_path / "crash", **over)
    with pytest.raises(Crash):
        Trainer(cfg, callbacks=[_crash_at(5)]).fit()
    Trainer(apply(cfg, {"runtime.resume": "auto"})).fit()
    for name in ("model.safetensors", "checkpoints/step_00000009/objective.safetensors"):
        a, b = load_file(str(tmp_path / "ref" / name)), load_file(str(tmp_path / "crash" / name))
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k}"
    strip = lambda rows: [{k: r[k] for k in METRICS} for r in rows]  # noqa: E731
    assert strip(read_csv(tmp_path / "ref" / "train_log.csv")) == strip(read_csv(tmp_path / "crash" / "train_log.csv"))
