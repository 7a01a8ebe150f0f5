"""A real 2-process gloo DDP run (torch.multiprocessing.spawn, env:// init as under torchrun) matches a
1-process run on the same global batches, and the centers are bit-identical on every rank."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from test_engine import faces, tiny_cfg  # noqa: F401  (fixture re-export)

from centerloss.engine.config import apply
from centerloss.engine.logs import read_csv
from centerloss.engine.trainer import Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    trainer = Trainer(cfg)
    trainer.fit()  # joins through env:// with gloo, tears the group down at the end
    assert not dist.is_initialized()
    state = {f"net.{k}": v for k, v in trainer.net.state_dict().items()}
    state.update({f"obj.{k}": v for k, v in trainer.objective.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, f"rank{rank}.safetensors"))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_matches_one_process(faces, tmp_path: Path) -> None:  # noqa: F811
    over = {"optim.epochs": 2, "runtime.threads": 1, "runtime.ckpt_every": 100, "runtime.log_every": 1}
    one = tiny_cfg(faces, tmp_path / "one", **over)
    t1 = Trainer(one)
    t1.fit()
    two = apply(tiny_cfg(faces, tmp_path / "two", **over), {})
    mp.spawn(_worker, args=(2, _free_port(), two, str(tmp_path)), nprocs=2, join=True)

    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    # every rank holds the same centers and weights, bit for bit
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert r0["obj.aux.centers"].abs().sum() > 0
    # and they match the single-process run on the same global batches up to float rounding
    ref = {f"net.{k}": v for k, v in t1.net.state_dict().items()}
    ref.update({f"obj.{k}": v for k, v in t1.objective.state_dict().items()})
    for k, v in ref.items():
        torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    # logged metrics are global-batch averages in both runs
    a, b = read_csv(tmp_path / "one" / "train_log.csv"), read_csv(tmp_path / "two" / "train_log.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "softmax", "aux", "accuracy"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-4, abs=1e-6), (ra["step"], key)
    assert (tmp_path / "two" / "checkpoints" / "step_00000006" / "state.json").is_file()
