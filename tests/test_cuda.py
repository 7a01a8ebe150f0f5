"""CUDA-only checks (skipped on CPU machines such as CI): AMP, device placement, DDP over CUDA tensors."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from centerloss import CenterLoss, center_loss
from centerloss.losses import center_update_

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda_matches_float32_reference(amp):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 512).cuda()
    inp = torch.randn(256, 64, device="cuda")
    y = torch.randint(0, 1000, (256,), device="cuda")
    m = CenterLoss(1000, 512, init="normal").cuda()
    c0 = m.centers.clone()
    with torch.autocast("cuda", dtype=amp):
        feats = lin(inp)
        assert feats.dtype == amp
        loss = m(feats, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref = center_loss(feats.detach().float(), y, c0)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all()
    expected = c0.clone()
    center_update_(expected, feats.detach().float(), y, 0.5)
    torch.testing.assert_close(m.centers, expected, rtol=1e-6, atol=1e-6)


def test_large_features_fp16_do_not_overflow():
    # |x|^2 of fp16 features can exceed 65504; distances are taken in float32
    m = CenterLoss(10, 512).cuda()
    x = torch.full((8, 512), 200.0, device="cuda", dtype=torch.float16, requires_grad=True)
    loss = m(x, torch.arange(8, device="cuda"))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, backend: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    dev = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    torch.manual_seed(0)
    m = CenterLoss(100_000, 128, init="normal").to(dev)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(2 * 64, 128, generator=g)
        y = torch.randint(0, 1000, (2 * 64,), generator=g)
        xs = x[rank * 64 : (rank + 1) * 64].to(dev).requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(xs.to(torch.bfloat16), y[rank * 64 : (rank + 1) * 64].to(dev))
        loss.backward()
    np.save(os.path.join(out_dir, f"c{rank}.npy"), m.centers.cpu().numpy())
    dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_ddp_centers_identical_across_ranks_on_cuda(tmp_path, backend):
    if backend == "nccl" and torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs one GPU per rank")
    mp.spawn(_worker, args=(2, _free_port(), backend, str(tmp_path)), nprocs=2, join=True)
    c0 = np.load(tmp_path / "c0.npy")
    assert np.array_equal(c0, np.load(tmp_path / "c1.npy"))
    # and equal (up to CUDA scatter-add rounding) to one process fed the same global batches
    torch.manual_seed(0)
    ref = CenterLoss(100_000, 128, init="normal").cuda()
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(2 * 64, 128, generator=g)
        y = torch.randint(0, 1000, (2 * 64,), generator=g)
        ref(x.to(torch.bfloat16).cuda(), y.cuda())
    np.testing.assert_allclose(c0, ref.centers.cpu().numpy(), rtol=0, atol=1e-5)
