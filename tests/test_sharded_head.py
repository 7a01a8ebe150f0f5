"""ShardedJointLoss against the dense JointLoss + CenterLoss in one process: real 2- and 3-process gloo runs
with uneven class shards (and uneven batches), Partial FC sampling, bf16 autocast, failure on every rank
together, and a world of one. Each world size is one spawn whose workers record what they saw; the tests
rebuild the dense reference here and compare."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from centerloss import CenterLoss
from centerloss.engine.distributed import hold_until_exit, leave_process
from centerloss.losses import JointLoss
from centerloss.losses.sharded import (
    INIT_BLOCK,
    ShardedJointLoss,
    _ShardedCrossEntropy,
    class_split,
    init_rows,
)

C, D, STEPS, LR, SEED = 11, 5, 3, 0.5, 7
UNEVEN = {2: (5, 3), 3: (3, 4, 2)}  # per-rank batch sizes of the validate=True run
EQUAL_B = 4  # per-rank batch size of the validate=False runs (the engine's mode needs equal batches)
SC, SB, RATE = 60, 2, 0.3  # sampling: classes, per-rank batch, sample rate
EXACT = {  # name: (validate, lam, bias, uneven batches)
    "checked": (True, 0.1, True, True),
    "fast": (False, 0.1, False, False),
    "lam0": (False, 0.0, False, False),
}


def global_batches(n: int, classes: int, steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, D, generator=g) * 2, torch.randint(0, classes, (n,), generator=g)) for _ in range(steps)]


def _offsets(sizes) -> list[int]:
    return [sum(sizes[:r]) for r in range(len(sizes))]


@contextlib.contextmanager
def no_host_sync():
    """Tripwire: any host read of a tensor value (item/bool/int/tolist), torch.unique/nonzero or boolean-mask
    indexing raises."""
    def trip(*_a, **_k):
        raise AssertionError("host sync in a validate=False forward")

    def getitem(self, idx, _orig=torch.Tensor.__getitem__):
        items = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items):
            trip()
        return _orig(self, idx)

    saved = {n: getattr(torch.Tensor, n) for n in ("item", "tolist", "__bool__", "__int__", "__float__",
                                                    "nonzero", "__getitem__")}
    saved_fn = {n: getattr(torch, n) for n in ("unique", "nonzero", "masked_select")}
    try:
        for n in saved:
            setattr(torch.Tensor, n, getitem if n == "__getitem__" else trip)
        for n in saved_fn:
            setattr(torch, n, trip)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
        for n, f in saved_fn.items():
            setattr(torch, n, f)


# ---------------------------------------------------------------- what each rank does


def _sgd_(m: ShardedJointLoss) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p -= LR * p.grad
            p.grad = None


def _run_exact(rank: int, world: int, name: str) -> dict:
    validate, lam, bias, uneven = EXACT[name]
    sizes = UNEVEN[world] if uneven else (EQUAL_B,) * world
    off = _offsets(sizes)[rank]
    m = ShardedJointLoss(D, C, lam=lam, alpha=0.5, bias=bias, validate=validate, seed=SEED)
    rec: dict = {"range": m.class_range, "w0": m.classifier.weight.detach().clone(), "steps": []}
    if bias:
        rec["b0"] = m.classifier.bias.detach().clone()
    for x, y in global_batches(sum(sizes), C, STEPS, seed=1):
        xs = x[off: off + sizes[rank]].clone().requires_grad_()
        with contextlib.nullcontext() if validate else no_host_sync():
            out = m(xs, y[off: off + sizes[rank]])
            out.loss.backward()
        step = {k: getattr(out, k).detach().clone() for k in ("loss", "softmax", "aux", "accuracy")}
        step.update(xgrad=xs.grad.clone(), wgrad=m.classifier.weight.grad.clone())
        if bias:
            step["bgrad"] = m.classifier.bias.grad.clone()
        rec["steps"].append(step)
        _sgd_(m)
    rec["centers"] = m.centers.clone()
    return rec


def _run_bf16(rank: int, world: int) -> dict:
    m = ShardedJointLoss(D, C, lam=0.1, validate=False, seed=SEED)
    x, y = global_batches(world * EQUAL_B, C, 1, seed=2)[0]
    xs = x[rank * EQUAL_B: (rank + 1) * EQUAL_B].clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(xs @ torch.eye(D), y[rank * EQUAL_B: (rank + 1) * EQUAL_B])  # bf16 features, as a backbone's
    out.loss.backward()
    return {"loss": out.loss.detach(), "dtype": str(out.loss.dtype), "softmax_dtype": str(out.softmax.dtype),
            "xgrad": xs.grad.clone(), "wgrad": m.classifier.weight.grad.clone()}


def _run_sampling(rank: int, world: int) -> dict:
    m = ShardedJointLoss(D, SC, lam=0.1, sample_rate=RATE, validate=False, seed=SEED)
    rec: dict = {"range": m.class_range, "k": m.num_sampled(world * SB), "steps": []}
    batches = global_batches(world * SB, SC, STEPS + 1, seed=3)
    for x, y in batches[:STEPS]:
        rows = m.sample_rows(y)
        xs = x[rank * SB: (rank + 1) * SB].clone().requires_grad_()
        w = m.classifier.weight.detach().clone()
        with no_host_sync():
            out = m(xs, y[rank * SB: (rank + 1) * SB])
            out.loss.backward()
        rec["steps"].append({"rows": rows + m.class_range[0], "w": w, "loss": out.loss.detach(),
                             "accuracy": out.accuracy, "xgrad": xs.grad.clone(),
                             "wgrad": m.classifier.weight.grad.clone()})
        _sgd_(m)
    twin = ShardedJointLoss(D, SC, sample_rate=RATE, seed=SEED)
    other = ShardedJointLoss(D, SC, sample_rate=RATE, seed=SEED + 1)
    rec["replay"] = [twin.sample_rows(y, step=s) + m.class_range[0] for s, (_, y) in enumerate(batches[:STEPS])]
    rec["other_seed"] = [other.sample_rows(y, step=s) + m.class_range[0] for s, (_, y) in enumerate(batches[:STEPS])]
    resumed = ShardedJointLoss(D, SC, sample_rate=RATE, seed=SEED)
    resumed.load_state_dict(m.state_dict())
    y_next = batches[STEPS][1]
    rec["resume"] = (resumed.sample_rows(y_next), m.sample_rows(y_next), int(resumed.step))
    return rec


def _run_ddp(rank: int, world: int) -> dict:
    """A backbone in DistributedDataParallel, the head outside it (the engine's layout): one step."""
    torch.manual_seed(0)
    backbone = torch.nn.Linear(D, D)
    net = torch.nn.parallel.DistributedDataParallel(backbone)
    hold_until_exit(net)  # freeing a gloo DDP can deadlock
    head = ShardedJointLoss(D, C, lam=0.1, validate=False, seed=SEED)
    x, y = global_batches(world * EQUAL_B, C, 1, seed=9)[0]
    sl = slice(rank * EQUAL_B, (rank + 1) * EQUAL_B)
    head(net(x[sl]), y[sl]).loss.backward()
    return {"weight": backbone.weight.grad.clone(), "bias": backbone.bias.grad.clone()}


def _run_failures(rank: int, world: int) -> dict:
    rec: dict = {}
    m = ShardedJointLoss(D, C, lam=0.1, validate=False, seed=SEED)
    x = torch.randn(EQUAL_B, D)
    if rank == 0:
        x[1, 2] = float("nan")
    out = m(x, torch.arange(EQUAL_B) % C)
    rec["nan"] = (bool(torch.isnan(out.loss)), bool(torch.all(m.centers == 0)))
    m = ShardedJointLoss(D, C, lam=0.1, validate=True, seed=SEED)
    y = torch.arange(EQUAL_B) % C
    if rank == world - 1:
        y[0] = C  # out of range on the last rank only
    try:
        m(torch.randn(EQUAL_B, D), y)
        rec["bad"] = ("no error", "")
    except (TypeError, ValueError) as e:
        rec["bad"] = (type(e).__name__, str(e))
    rec["bad_untouched"] = bool(torch.all(m.centers == 0)) and int(m.step) == 0
    out = m(torch.randn(EQUAL_B, D), torch.arange(EQUAL_B) % C)  # the ranks are still in step afterwards
    rec["after"] = out.loss.detach()
    return rec


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        rec = {name: _run_exact(rank, world, name) for name in EXACT}
        rec.update(bf16=_run_bf16(rank, world), sampling=_run_sampling(rank, world), ddp=_run_ddp(rank, world),
                   failures=_run_failures(rank, world))
        torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    leave_process(0)  # _run_ddp holds its DDP until the process leaves: see hold_until_exit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def ranks(request, tmp_path_factory):
    """Run the workers of one world size (at most 90 s: a hang fails the test instead of blocking it)."""
    world = request.param
    out = tmp_path_factory.mktemp(f"sharded{world}")
    ctx = mp.spawn(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=False)
    deadline = time.monotonic() + 90
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world}-process run hung")
    return world, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


# ---------------------------------------------------------------- dense references


def _dense(name: str, w0: torch.Tensor, b0: torch.Tensor | None, sizes, aux: bool = True) -> list[dict]:
    """The dense objective in one process on the concatenated global batches, SGD on the rows between steps."""
    _, lam, bias, _ = EXACT[name]
    ref = JointLoss(D, C, aux=CenterLoss(C, D, alpha=0.5) if aux else None, lam=lam, bias=bias)
    with torch.no_grad():
        ref.head.weight.copy_(w0)
        if bias:
            ref.head.bias.copy_(b0)
    steps = []
    for x, y in global_batches(sum(sizes), C, STEPS, seed=1):
        x = x.clone().requires_grad_()
        out = ref(x, y)
        out.loss.backward()
        steps.append({"loss": out.loss.detach(), "softmax": out.softmax.detach(), "aux": out.aux.detach(),
                      "accuracy": out.accuracy, "xgrad": x.grad, "wgrad": ref.head.weight.grad.clone(),
                      "bgrad": ref.head.bias.grad.clone() if bias else None})
        with torch.no_grad():
            for p in ref.head.parameters():
                p -= LR * p.grad
                p.grad = None
    steps.append({"centers": ref.aux.centers.clone() if aux else None})
    return steps


def _sizes(name: str, world: int):
    return UNEVEN[world] if EXACT[name][3] else (EQUAL_B,) * world


@pytest.mark.parametrize("name", list(EXACT))
def test_matches_dense_objective(ranks, name):
    world, recs = ranks
    sizes = _sizes(name, world)
    assert [tuple(r[name]["range"]) for r in recs] == class_split(C, world)
    w0 = torch.cat([r[name]["w0"] for r in recs])
    b0 = torch.cat([r[name]["b0"] for r in recs]) if EXACT[name][2] else None
    ref = _dense(name, w0, b0, sizes)
    for s in range(STEPS):
        for r, (lo, hi) in enumerate(class_split(C, world)):
            got, want = recs[r][name]["steps"][s], ref[s]
            for key in ("loss", "softmax", "aux", "accuracy"):  # identical on every rank, equal to dense
                torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=f"{key} step {s}")
            o = _offsets(sizes)[r]
            torch.testing.assert_close(got["xgrad"] / world, want["xgrad"][o: o + sizes[r]], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["wgrad"], want["wgrad"][lo:hi], rtol=1e-5, atol=1e-6)
            if EXACT[name][2]:
                torch.testing.assert_close(got["bgrad"], want["bgrad"][lo:hi], rtol=1e-5, atol=1e-6)
    centers = torch.cat([r[name]["centers"] for r in recs])
    torch.testing.assert_close(centers, ref[-1]["centers"], rtol=1e-5, atol=1e-6)
    assert centers.abs().sum() > 0  # they moved (also with lam = 0: model A still tracks the centers)


def test_init_is_the_same_matrix_for_every_world_size(ranks):
    world, recs = ranks
    full, bias = init_rows(0, C, D, seed=SEED, bias=True)
    torch.testing.assert_close(torch.cat([r["checked"]["w0"] for r in recs]), full, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([r["checked"]["b0"] for r in recs]), bias, rtol=0, atol=0)
    assert full.abs().max() <= 1 / math.sqrt(D)  # nn.Linear's U(-1/sqrt(d), 1/sqrt(d))


def test_backbone_gradient_after_ddp_averaging_is_the_dense_one(ranks):
    world, recs = ranks
    torch.manual_seed(0)
    backbone = torch.nn.Linear(D, D)
    ref = JointLoss(D, C, aux=CenterLoss(C, D), lam=0.1, bias=False)
    with torch.no_grad():
        ref.head.weight.copy_(torch.cat([r["fast"]["w0"] for r in recs]))
    x, y = global_batches(world * EQUAL_B, C, 1, seed=9)[0]
    ref(backbone(x), y).loss.backward()
    for r in recs:
        torch.testing.assert_close(r["ddp"]["weight"], backbone.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["ddp"]["bias"], backbone.bias.grad, rtol=1e-5, atol=1e-6)


def test_lam0_equals_softmax_only(ranks):
    world, recs = ranks
    sizes = _sizes("lam0", world)
    w0 = torch.cat([r["lam0"]["w0"] for r in recs])
    ref = _dense("lam0", w0, None, sizes, aux=False)
    for s in range(STEPS):
        torch.testing.assert_close(recs[0]["lam0"]["steps"][s]["loss"], ref[s]["loss"], rtol=1e-5, atol=1e-6)
        xgrad = torch.cat([r["lam0"]["steps"][s]["xgrad"] for r in recs]) / world
        torch.testing.assert_close(xgrad, ref[s]["xgrad"], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_float32_statistics(ranks):
    world, recs = ranks
    assert {r["bf16"]["dtype"] for r in recs} == {"torch.float32"}
    assert {r["bf16"]["softmax_dtype"] for r in recs} == {"torch.float32"}
    w0 = torch.cat([r["fast"]["w0"] for r in recs])
    x, y = global_batches(world * EQUAL_B, C, 1, seed=2)[0]
    x.requires_grad_()
    ref = JointLoss(D, C, aux=CenterLoss(C, D), lam=0.1, bias=False)
    with torch.no_grad():
        ref.head.weight.copy_(w0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # LinearHead: bf16 logits, float32 cross-entropy
        out = ref(x @ torch.eye(D), y)
    out.loss.backward()
    for r in recs:  # same bf16 logits, float32 statistics: close to the dense autocast run
        torch.testing.assert_close(r["bf16"]["loss"], out.loss.detach(), rtol=1e-4, atol=1e-4)
    xgrad = torch.cat([r["bf16"]["xgrad"] for r in recs]) / world
    torch.testing.assert_close(xgrad, x.grad, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(torch.cat([r["bf16"]["wgrad"] for r in recs]), ref.head.weight.grad,
                               rtol=2e-2, atol=2e-3)


def test_sampling_matches_dense_softmax_over_the_sample(ranks):
    world, recs = ranks
    ranges = class_split(SC, world)
    batches = global_batches(world * SB, SC, STEPS, seed=3)
    centers = CenterLoss(SC, D, alpha=0.5)
    for s, (x, y) in enumerate(batches):
        rows = [r["sampling"]["steps"][s]["rows"] for r in recs]
        for r, (lo, hi) in enumerate(ranges):
            k = recs[r]["sampling"]["k"]
            assert k == min(hi - lo, max(math.ceil(RATE * (hi - lo)), world * SB)) < hi - lo
            assert rows[r].shape == (k,) and torch.all((rows[r] >= lo) & (rows[r] < hi))
            pos = y[(y >= lo) & (y < hi)]
            assert torch.isin(pos, rows[r]).all(), "a positive class was not sampled"
        sample = torch.cat(rows)  # sorted: ranks in order, rows sorted
        w = torch.cat([r["sampling"]["steps"][s]["w"] for r in recs])
        x = x.clone().requires_grad_()
        wk = w[sample].clone().requires_grad_()
        target = torch.searchsorted(sample, y)
        assert torch.equal(sample[target], y)
        logits = x @ wk.t()
        loss = F.cross_entropy(logits, target) + 0.1 * centers(x, y)
        loss.backward()
        for r, (lo, hi) in enumerate(ranges):
            got = recs[r]["sampling"]["steps"][s]
            torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["accuracy"], (logits.argmax(1) == target).float().mean())
            torch.testing.assert_close(got["xgrad"] / world, x.grad[r * SB: (r + 1) * SB], rtol=1e-5, atol=1e-6)
            local = rows[r] - lo
            torch.testing.assert_close(got["wgrad"][local], wk.grad[torch.isin(sample, rows[r])],
                                       rtol=1e-5, atol=1e-6)
            unsampled = torch.ones(hi - lo, dtype=torch.bool)
            unsampled[local] = False
            assert torch.count_nonzero(got["wgrad"][unsampled]) == 0, "an unsampled row got a gradient"


def test_sampling_is_reproducible_and_varies(ranks):
    world, recs = ranks
    for r in recs:
        got = [st["rows"] for st in r["sampling"]["steps"]]
        assert all(torch.equal(a, b) for a, b in zip(got, r["sampling"]["replay"])), "not a function of (seed, step)"
        assert not all(torch.equal(got[0], g) for g in got[1:]), "every step drew the same negatives"
        assert not all(torch.equal(a, b) for a, b in zip(got, r["sampling"]["other_seed"]))
        resumed, original, step = r["sampling"]["resume"]
        assert step == STEPS and torch.equal(resumed, original), "a resumed run samples differently"


def test_failures_on_one_rank_raise_on_every_rank(ranks):
    world, recs = ranks
    for r, rec in enumerate(recs):
        f = rec["failures"]
        assert f["nan"] == (True, True), "validate=False: a NaN batch must leave every center untouched"
        kind, msg = f["bad"]
        if r == world - 1:
            assert kind == "ValueError" and "labels must lie in [0, 10]" in msg, msg
        else:
            assert kind == "ValueError" and f"rank(s) [{world - 1}]" in msg, msg
        assert f["bad_untouched"]
        torch.testing.assert_close(f["after"], recs[0]["failures"]["after"], rtol=0, atol=0)


# ---------------------------------------------------------------- a world of one (no torch.distributed)


def test_class_split():
    assert class_split(11, 3) == [(0, 4), (4, 8), (8, 11)]
    assert class_split(10, 5) == [(2 * r, 2 * r + 2) for r in range(5)]
    for c, w in ((7, 7), (1000, 64), (13, 1)):
        ranges = class_split(c, w)
        assert ranges[0][0] == 0 and ranges[-1][1] == c and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(h - lo for lo, h in ranges) - min(h - lo for lo, h in ranges) <= 1
    with pytest.raises(ValueError, match="at least one class"):
        class_split(2, 3)


def test_init_rows_blocks_are_independent_of_the_split():
    full, _ = init_rows(0, 3 * INIT_BLOCK + 5, 3, seed=1)
    part, _ = init_rows(INIT_BLOCK - 2, 2 * INIT_BLOCK + 3, 3, seed=1)
    assert torch.equal(part, full[INIT_BLOCK - 2: 2 * INIT_BLOCK + 3])
    assert not torch.equal(init_rows(0, 4, 3, seed=2)[0], full[:4])


def test_world_of_one_equals_dense():
    m = ShardedJointLoss(D, C, lam=0.1, bias=True, seed=SEED)
    assert m.class_range == (0, C) and m.world == 1
    ref = JointLoss(D, C, aux=CenterLoss(C, D, alpha=0.5), lam=0.1, bias=True)
    with torch.no_grad():
        ref.head.weight.copy_(m.classifier.weight)
        ref.head.bias.copy_(m.classifier.bias)
    for x, y in global_batches(9, C, STEPS, seed=4):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = m(xa, y), ref(xb, y)
        a.loss.backward()
        b.loss.backward()
        assert a.logits is None
        for key in ("loss", "softmax", "aux", "accuracy"):
            torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(m.classifier.weight.grad, ref.head.weight.grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(m.centers, ref.aux.centers, rtol=1e-6, atol=1e-7)
        with torch.no_grad():
            for p, q in ((m.classifier.weight, ref.head.weight), (m.classifier.bias, ref.head.bias)):
                p -= LR * p.grad
                q -= LR * q.grad
                p.grad = q.grad = None
    assert int(m.step) == STEPS


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.tensor([0, 3, 1, 0, 2, 2])
    owned = torch.tensor([True, True, False, True, False, True])  # rows whose class another rank holds
    assert torch.autograd.gradcheck(lambda z: _ShardedCrossEntropy.apply(z, target, owned, 1, None)[0], (logits,))
    m = ShardedJointLoss(D, C, lam=0.5, alpha=0.0, bias=True, seed=SEED).double()
    x = torch.randn(7, D, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, C, (7,), generator=g)
    w = m.classifier.weight.detach().clone().requires_grad_()
    b = m.classifier.bias.detach().clone().requires_grad_()
    m.centers.normal_(generator=g)

    def loss(x, w, b):
        return torch.func.functional_call(m, {"classifier.weight": w, "classifier.bias": b}, (x, y)).loss
    assert torch.autograd.gradcheck(loss, (x, w, b))


def test_eval_mode_neither_samples_nor_moves():
    m = ShardedJointLoss(D, SC, lam=0.1, sample_rate=RATE, seed=SEED).eval()
    x, y = global_batches(6, SC, 1, seed=5)[0]
    out = m(x, y)
    ref = F.cross_entropy(x @ m.classifier.weight.t(), y)  # every class
    torch.testing.assert_close(out.softmax, ref)
    assert int(m.step) == 0 and torch.all(m.centers == 0)


def test_alpha0_keeps_the_centers():
    m = ShardedJointLoss(D, C, lam=0.1, alpha=0.0)
    x, y = global_batches(6, C, 1, seed=5)[0]
    m(x, y).loss.backward()
    assert torch.all(m.centers == 0) and int(m.step) == 1


def test_state_dict_is_row_sharded_and_resumes_the_sampling():
    m = ShardedJointLoss(D, SC, sample_rate=RATE, bias=True, seed=SEED)
    x, y = global_batches(4, SC, 1, seed=6)[0]
    m(x, y)
    sd = m.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"classifier.weight": (SC, D), "classifier.bias": (SC,),
                                                          "centers": (SC, D), "step": ()}
    twin = ShardedJointLoss(D, SC, sample_rate=RATE, bias=True, seed=SEED)
    assert not torch.equal(twin.sample_rows(y), m.sample_rows(y))  # step 0 vs step 1
    twin.load_state_dict(sd)
    assert torch.equal(twin.sample_rows(y), m.sample_rows(y))


def test_validate_false_has_no_host_sync_and_the_tripwire_works():
    x, y = global_batches(6, SC, 1, seed=7)[0]
    fast = ShardedJointLoss(D, SC, lam=0.1, sample_rate=RATE, validate=False)
    with no_host_sync():
        fast(x.requires_grad_(), y).loss.backward()
    with pytest.raises(AssertionError, match="host sync"), no_host_sync():
        ShardedJointLoss(D, SC, validate=True)(x, y)


@pytest.mark.parametrize("bad, err, match", [
    ("label", ValueError, r"labels must lie in \[0, 10\]"),
    ("nan", ValueError, "NaN or Inf"),
    ("width", ValueError, "feat_dim=5"),
    ("float_labels", TypeError, "integer tensor"),
])
def test_validation_errors_are_centerloss_errors(bad, err, match):
    x, y = torch.randn(4, D), torch.arange(4)
    if bad == "label":
        y[2] = C
    elif bad == "nan":
        x[0, 0] = float("inf")
    elif bad == "width":
        x = torch.randn(4, D + 1)
    else:
        y = y.float()
    m = ShardedJointLoss(D, C)
    with pytest.raises(err, match=match):
        m(x, y)
    with pytest.raises(err, match=match):
        CenterLoss(C, D)(x, y)
    assert torch.all(m.centers == 0) and int(m.step) == 0


def test_bad_arguments():
    for kwargs in ({"alpha": 1.5}, {"lam": -1.0}, {"sample_rate": 0.0}, {"sample_rate": 1.5}):
        with pytest.raises(ValueError):
            ShardedJointLoss(D, C, **kwargs)
