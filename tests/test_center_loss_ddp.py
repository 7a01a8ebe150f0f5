"""A real 2-process gloo run: centers stay identical on every rank and equal a 1-process run."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from centerloss import CenterLoss

C, D, STEPS = 9, 4, 5
SIZES = (5, 3)  # unequal per-rank batches: the gather must handle them


def global_batches():
    g = torch.Generator().manual_seed(123)
    return [(torch.randn(sum(SIZES), D, generator=g) * 2, torch.randint(0, C, (sum(SIZES),), generator=g))
            for _ in range(STEPS)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        m = CenterLoss(C, D, alpha=0.5, init="normal")  # same seed -> same initial table on every rank
        lo = sum(SIZES[:rank])
        losses = []
        for x, y in global_batches():
            xs = x[lo : lo + SIZES[rank]].clone().requires_grad_()
            loss = m(xs, y[lo : lo + SIZES[rank]])
            loss.backward()
            losses.append(loss.item())
        np.save(os.path.join(out_dir, f"centers{rank}.npy"), m.centers.numpy())
        # a bad batch on one rank must raise on every rank (no rank left blocked in a collective)
        before = m.centers.clone()
        x = torch.randn(SIZES[rank], D)
        if rank == 1:
            x[0, 0] = float("nan")
        try:
            m(x, torch.zeros(SIZES[rank], dtype=torch.long))
            status = "no error"
        except ValueError as e:
            status = "raised: " + str(e)
        assert torch.equal(m.centers, before)
        with open(os.path.join(out_dir, f"bad{rank}.txt"), "w") as f:
            f.write(status)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    c0 = np.load(tmp_path / "centers0.npy")
    c1 = np.load(tmp_path / "centers1.npy")
    assert np.array_equal(c0, c1), "centers differ between ranks"

    torch.manual_seed(0)
    single = CenterLoss(C, D, alpha=0.5, init="normal")
    for x, y in global_batches():
        single(x, y)
    np.testing.assert_allclose(c0, single.centers.numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(c0, CenterLoss(C, D).centers.numpy())  # they did move

    for r in (0, 1):
        status = (tmp_path / f"bad{r}.txt").read_text()
        assert status.startswith("raised") and "rank(s) [1]" in status, status
