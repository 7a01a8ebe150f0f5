"""Real multi-process gloo runs of the engine (torch.multiprocessing.spawn, env:// as under torchrun):

* the dense head on 2 processes matches 1 process on the same global batches, centers bit-identical;
* the sharded head (softmax + sharded centers) on 2 processes ends with the same backbone, classifier rows and
  centers as the dense head in 1 process;
* a sharded checkpoint resumes exactly on the same world size and re-shards onto another (2 -> 3 processes).
* as a rank of a multi-process run, ``centerloss.cli.main`` leaves without interpreter teardown.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, tiny_cfg
from safetensors.torch import load_file, save_file

from centerloss import cli
from centerloss.engine import checkpoint as ck
from centerloss.engine.config import apply
from centerloss.engine.distributed import leave_process
from centerloss.engine.logs import read_csv
from centerloss.engine.trainer import Trainer

pytestmark = [pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
              pytest.mark.timeout(300)]


class Crash(RuntimeError):
    pass


def _worker(rank: int, world: int, port: int, cfg, out: str, crash_at: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)

    def crash(trainer, row):
        if trainer.step == crash_at:
            raise Crash(f"simulated kill after step {crash_at}")

    trainer = Trainer(cfg, callbacks=[crash] if crash_at else [])
    try:
        trainer.fit()  # joins through env:// with gloo, tears the group down at the end
    except Crash:
        leave_process(0)  # the engine holds its gloo DDP until the process leaves: see hold_until_exit
    assert not dist.is_initialized()
    state = {f"net.{k}": v for k, v in trainer.net.state_dict().items()}
    state.update({f"obj.{k}": v for k, v in trainer.objective.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, f"rank{rank}.safetensors"))
    leave_process(0)


def _spawn(world: int, cfg, out: Path, crash_at: int = 0) -> list[dict[str, torch.Tensor]]:
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(world, free_port(), cfg, str(out), crash_at), nprocs=world, join=True)
    if crash_at:
        return []
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(world)]


def _dense_state(t: Trainer) -> dict[str, torch.Tensor]:
    state = {f"net.{k}": v for k, v in t.net.state_dict().items()}
    state.update({f"obj.{k}": v for k, v in t.objective.state_dict().items()})
    return state


def test_two_process_gloo_matches_one_process(faces, tmp_path: Path) -> None:
    over = {"schedule.epochs": 2, "runtime.threads": 1, "runtime.ckpt_every": 100, "runtime.log_every": 1}
    t1 = Trainer(tiny_cfg(faces, tmp_path / "one", **over))
    t1.fit()
    r0, r1 = _spawn(2, tiny_cfg(faces, tmp_path / "two", **over), tmp_path / "two_out")
    for k in r0:  # every rank holds the same centers and weights, bit for bit
        assert torch.equal(r0[k], r1[k]), k
    assert r0["obj.aux.centers"].abs().sum() > 0
    for k, v in _dense_state(t1).items():  # and they match the single-process run up to float rounding
        torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    a, b = read_csv(tmp_path / "one" / "train_log.csv"), read_csv(tmp_path / "two" / "train_log.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):  # logged metrics are global-batch averages in both runs
        for key in ("loss", "softmax", "aux", "accuracy"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-4, abs=1e-6), (ra["step"], key)


SHARDED = {"head.name": "sharded", "head.kwargs": {"sample_rate": 1.0, "bias": True}, "data.batch_size": 12,
           "schedule.epochs": 3, "runtime.threads": 1, "runtime.ckpt_every": 2, "runtime.log_every": 1}


def _gathered(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in shards[0].items() if k.startswith("net.")}
    out["obj.classifier.weight"] = torch.cat([s["obj.classifier.weight"] for s in shards])
    out["obj.classifier.bias"] = torch.cat([s["obj.classifier.bias"] for s in shards])
    out["obj.centers"] = torch.cat([s["obj.centers"] for s in shards])
    return out


def test_sharded_head_on_two_processes_equals_the_dense_head_on_one(faces, tmp_path: Path) -> None:
    dense_over = {**SHARDED, "head.name": "linear", "head.kwargs": {"bias": True, "init": "blocks"}}
    t1 = Trainer(tiny_cfg(faces, tmp_path / "dense", **dense_over))
    t1.fit()
    shards = _spawn(2, tiny_cfg(faces, tmp_path / "sharded", **SHARDED), tmp_path / "sh_out")
    assert [tuple(s["obj.centers"].shape) for s in shards] == [(2, 8), (2, 8)]
    for k in shards[0]:
        if k.startswith("net."):  # the backbone is replicated by DDP: identical on every rank
            assert torch.equal(shards[0][k], shards[1][k]), k
    got, ref = _gathered(shards), _dense_state(t1)
    pairs = {**{k: k for k in got if k.startswith("net.")}, "obj.classifier.weight": "obj.head.weight",
             "obj.classifier.bias": "obj.head.bias", "obj.centers": "obj.aux.centers"}
    for k, rk in pairs.items():
        torch.testing.assert_close(got[k], ref[rk], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    ckpt = ck.read_checkpoint(tmp_path / "sharded")
    assert ckpt.state["shards"] == {"world_size": 2, "class_ranges": [[0, 2], [2, 4]]}
    assert {"shard_rank0.safetensors", "shard_rank1.safetensors"} <= set(ckpt.state["files"])


def test_sharded_checkpoint_resumes_exactly_and_reshards(faces, tmp_path: Path) -> None:
    ref = _gathered(_spawn(2, tiny_cfg(faces, tmp_path / "ref", **SHARDED), tmp_path / "ref_out"))
    run = tmp_path / "crashed"
    cfg = tiny_cfg(faces, run, **SHARDED)
    _spawn(2, cfg, tmp_path / "crash_out", crash_at=3)  # last checkpoint: step 2
    assert ck.read_checkpoint(run).step == 2
    three = tmp_path / "three"
    shutil.copytree(run, three)
    same = _gathered(_spawn(2, apply(cfg, {"runtime.resume": "auto"}), tmp_path / "same_out"))
    for k in ref:  # same world size: bit-identical to the uninterrupted run
        assert torch.equal(same[k], ref[k]), k
    cfg3 = apply(cfg, {"runtime.resume": "auto", "runtime.out_dir": str(three)})
    resharded = _spawn(3, cfg3, tmp_path / "three_out")  # 4 classes over 3 ranks: [0, 2), [2, 3), [3, 4)
    assert [s["obj.centers"].shape[0] for s in resharded] == [2, 1, 1]
    got = _gathered(resharded)
    for k in ref:  # another world size: the same global batches, reduction order differs
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    assert ck.read_checkpoint(three).state["shards"]["class_ranges"] == [[0, 2], [2, 3], [3, 4]]


def test_cli_leaves_without_teardown_only_as_a_rank_of_a_multiprocess_run(monkeypatch) -> None:
    """As a process entry under WORLD_SIZE > 1, ``main`` ends with ``os._exit(code)`` after flushing (see
    ``centerloss.engine.distributed.leave_process``); called as a function, or in a world of one, it returns the code."""
    left: list[int] = []
    monkeypatch.setattr(os, "_exit", left.append)
    monkeypatch.setattr(sys, "argv", ["centerloss", "train", "--preset", "no_such_preset"])
    for world, argv, want in (("2", None, [2]), ("1", None, []), ("2", sys.argv[1:], []), ("x", None, [])):
        left.clear()
        monkeypatch.setenv("WORLD_SIZE", world)
        assert cli.main(argv) == 2
        assert left == want, (world, argv)
