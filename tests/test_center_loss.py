"""CenterLoss against a slow, obvious per-sample loop of the paper's Eqs. 2-4."""

from __future__ import annotations

import pytest
import torch

from centerloss import CenterLoss, center_loss
from centerloss.losses import center_update_

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


# ------------------------------------------------------------------ slow references, written from the paper


def slow_loss(x, y, c):
    """Eq. 2, one sample at a time: 1/2 sum_i |x_i - c_{y_i}|^2."""
    total = 0.0
    for i in range(x.shape[0]):
        d = x[i] - c[y[i]]
        total = total + 0.5 * (d * d).sum()
    return total


def slow_update(x, y, c, alpha):
    """Eq. 4 class by class: c_j -= alpha * sum_{y_i=j}(c_j - x_i) / (1 + n_j)."""
    new = c.clone()
    for j in range(c.shape[0]):
        num = torch.zeros_like(c[j])
        n_j = 0
        for i in range(x.shape[0]):
            if int(y[i]) == j:
                num += c[j] - x[i]
                n_j += 1
        new[j] = c[j] - alpha * num / (1 + n_j)
    return new


def make_batch(dtype, b=12, c=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype) * 3
    y = torch.randint(0, c - 2, (b,), generator=g)  # the last two classes never appear
    centers = torch.randn(c, d, generator=g, dtype=dtype)
    return x, y, centers


def make_module(centers, alpha=0.5, **kw):
    m = CenterLoss(centers.shape[0], centers.shape[1], alpha=alpha, **kw).to(centers.dtype)
    with torch.no_grad():
        m.centers.copy_(centers)
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_forward_gradient_and_update_match_slow_loop(dtype, reduction):
    x, y, c0 = make_batch(dtype)
    m = make_module(c0, alpha=0.5, reduction=reduction)
    x = x.requires_grad_()
    loss = m(x, y)
    ref = slow_loss(x.detach(), y, c0)
    scale = 1.0 if reduction == "sum" else 1.0 / x.shape[0]
    torch.testing.assert_close(loss, (ref * scale).to(loss.dtype), **TOL[dtype])
    loss.backward()
    # Eq. 3 with the centers *before* the update
    torch.testing.assert_close(x.grad, (x.detach() - c0[y]) * scale, **TOL[dtype])
    # Eq. 4 including the 1 + n_j denominator; the absent classes stay exactly as they were
    expected = slow_update(x.detach(), y, c0, 0.5)
    torch.testing.assert_close(m.centers, expected, **TOL[dtype])
    absent = torch.tensor([5, 6])
    assert torch.equal(m.centers[absent], c0[absent])


def test_update_denominator_is_one_plus_count():
    # one class, n samples all at x: c <- c - alpha * n (c - x) / (1 + n)
    c = torch.zeros(3, 2)
    x = torch.tensor([[2.0, -4.0]] * 3)
    y = torch.tensor([1, 1, 1])
    center_update_(c, x, y, alpha=1.0)
    torch.testing.assert_close(c[1], torch.tensor([2.0, -4.0]) * 3 / 4)
    assert torch.equal(c[0], torch.zeros(2)) and torch.equal(c[2], torch.zeros(2))


def test_loss_uses_pre_update_centers_and_eval_mode_freezes():
    x, y, c0 = make_batch(torch.float64)
    m = make_module(c0)
    l_train = m(x, y)
    assert not torch.equal(m.centers, c0)  # training mode moved them
    torch.testing.assert_close(l_train, slow_loss(x, y, c0) / x.shape[0])
    m.eval()
    before = m.centers.clone()
    m(x, y)
    assert torch.equal(m.centers, before)


def test_alpha_zero_never_moves():
    x, y, c0 = make_batch(torch.float32)
    m = make_module(c0, alpha=0.0)
    m(x, y)
    assert torch.equal(m.centers, c0)


def test_paper_centers_are_a_float32_buffer_not_a_parameter():
    m = CenterLoss(10, 3)
    assert "centers" in dict(m.named_buffers()) and len(list(m.parameters())) == 0
    assert m.centers.dtype == torch.float32 and m.centers.shape == (10, 3)


def test_gradcheck_float64():
    x, y, c0 = make_batch(torch.float64, b=6, c=4, d=3)
    x.requires_grad_()
    c = c0.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: center_loss(a, y, b, "sum"), (x, c))
    assert torch.autograd.gradcheck(lambda a, b: center_loss(a, y, b, "mean"), (x, c))


def test_learnable_mode_gradient_and_no_update_in_forward():
    x, y, c0 = make_batch(torch.float64)
    m = make_module(c0, update="learnable", reduction="sum")
    assert isinstance(m.centers, torch.nn.Parameter)
    loss = m(x, y)
    assert torch.equal(m.centers.detach(), c0)  # forward never moves learnable centers
    loss.backward()
    # dL/dc_j = sum_{y_i=j} (c_j - x_i); absent classes get zero gradient
    expected = torch.zeros_like(c0)
    for i in range(x.shape[0]):
        expected[y[i]] += c0[y[i]] - x[i]
    torch.testing.assert_close(m.centers.grad, expected)


def test_learnable_sgd_step_equals_eq4_when_lr_is_alpha_over_one_plus_n():
    # documented relation: one SGD step of rate alpha/(1+n_j) on the summed loss == Eq. 4
    c0 = torch.randn(2, 3, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([1, 1, 1, 1])  # n_1 = 4
    m = make_module(c0, update="learnable", reduction="sum")
    opt = torch.optim.SGD(m.parameters(), lr=0.5 / (1 + 4))
    m(x, y).backward()
    opt.step()
    torch.testing.assert_close(m.centers.detach(), slow_update(x, y, c0, 0.5))


def test_precision_large_features_close_to_centers():
    # |x| ~ 1e4, |x - c| ~ 1e-2: the direct difference keeps float32 precision, the expanded form does not
    g = torch.Generator().manual_seed(0)
    c = (torch.randn(4, 64, generator=g) * 1e4).float()
    y = torch.tensor([0, 1, 2, 3])
    x = c[y] + 1e-2 * torch.randn(4, 64, generator=g)
    exact = slow_loss(x.double(), y, c.double())
    ours = center_loss(x, y, c, "sum")
    assert abs(ours.item() - exact.item()) / exact.item() < 1e-3
    dense = (x.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1) - 2 * x @ c.t()).gather(1, y[:, None]).sum() / 2
    assert abs(dense.item() - exact.item()) / exact.item() > 1e-1  # the ports' formulation is far off


def test_autocast_bf16_features_with_float32_centers():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4)
    inp = torch.randn(16, 8)
    y = torch.randint(0, 5, (16,))
    m = CenterLoss(5, 4, alpha=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = lin(inp)
        assert feats.dtype == torch.bfloat16
        loss = m(feats, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, slow_loss(feats.detach().float(), y, torch.zeros(5, 4)) / 16)
    loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    assert m.centers.dtype == torch.float32
    torch.testing.assert_close(m.centers, slow_update(feats.detach().float(), y, torch.zeros(5, 4), 0.5))


def test_half_features_cpu():
    x, y, c0 = make_batch(torch.float32)
    m = make_module(c0)
    xh = x.half().requires_grad_()
    loss = m(xh, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert xh.grad.dtype == torch.float16


def test_cost_does_not_touch_absent_rows_at_one_million_classes():
    m = CenterLoss(1_000_000, 8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    y = torch.cat([torch.randint(0, 1_000_000, (28,), generator=g), torch.tensor([7, 7, 7, 999_999])])
    m(x, y)
    moved = set((m.centers != 0).any(1).nonzero().flatten().tolist())
    assert moved == set(y.tolist())  # exactly the batch's classes moved ...
    rows = torch.tensor(sorted(moved))
    expected = torch.zeros(len(rows), 8, dtype=torch.float64)
    for k, j in enumerate(rows.tolist()):  # ... by Eq. 4 from zero centers: c_j = alpha * sum x_i / (1 + n_j)
        sel = x.double()[y == j]
        expected[k] = 0.5 * sel.sum(0) / (1 + sel.shape[0])
    torch.testing.assert_close(m.centers[rows].double(), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ the engine's sync-free path


def test_unvalidated_path_equals_validated_and_refuses_nan_on_the_device():
    x, y, c0 = make_batch(torch.float32)
    a, b = make_module(c0), make_module(c0, validate=False)
    torch.testing.assert_close(a(x, y), b(x, y))
    torch.testing.assert_close(a.centers, b.centers, rtol=1e-6, atol=1e-6)
    before = b.centers.clone()
    bad = x.clone()
    bad[3, 1] = float("nan")
    loss = b(bad, y)  # no exception and no host sync: the loss is NaN (the engine's guard sees it) ...
    assert not torch.isfinite(loss)
    assert torch.equal(b.centers, before)  # ... and no center moved


def test_folded_step_sums_to_the_same_update():
    from centerloss.losses import center_step

    x, y, c0 = make_batch(torch.float64)
    plain, folded = center_step(x, y, c0), center_step(x, y, c0, fold=True)
    a = c0.clone().index_add_(0, y, plain, alpha=-0.5)
    b = c0.clone().index_add_(0, y, folded, alpha=-0.5)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, slow_update(x, y, c0, 0.5))
    firsts = {int(y[i]) for i in range(len(y)) if (folded[i] != 0).any()}
    assert firsts == set(y.tolist()) and int(((folded != 0).any(1)).sum()) == len(set(y.tolist()))


# ------------------------------------------------------------------ caffe-face's update, against its own rule


def caffe_center_grad(x, y, c):
    """caffe-face's CenterLossLayer::Backward, one class at a time: sum_{y_i=j}(c_j - x_i) / (1 + n_j), no alpha."""
    g = torch.zeros_like(c)
    for j in range(c.shape[0]):
        members = [i for i in range(x.shape[0]) if int(y[i]) == j]
        for i in members:
            g[j] += c[j] - x[i]
        g[j] /= 1 + len(members)
    return g


@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0])
def test_caffe_mode_gradient_is_eq4_delta_without_alpha_or_lambda(lam):
    from centerloss import JointLoss

    x, y, c0 = make_batch(torch.float64)
    m = make_module(c0, update="caffe")
    assert isinstance(m.centers, torch.nn.Parameter) and m.optim_overrides == {"lr_mult": 1.0, "decay_mult": 2.0}
    j = JointLoss(5, 7, aux=m, lam=lam).double()
    x = x.requires_grad_()
    out = j(x, y)
    assert torch.equal(m.centers.detach(), c0)  # the forward pass leaves them alone
    out.loss.backward()
    torch.testing.assert_close(m.centers.grad, caffe_center_grad(x.detach(), y, c0))
    # the features still get Eq. 3, scaled by lambda (mean reduction: / B)
    j2 = JointLoss(5, 7, lam=0.0).double()
    j2.load_state_dict({k: v for k, v in j.state_dict().items() if k.startswith("head.")}, strict=False)
    x2 = x.detach().clone().requires_grad_()
    j2(x2, y).loss.backward()
    torch.testing.assert_close(x.grad - x2.grad, lam * (x.detach() - c0[y]) / x.shape[0])


def test_caffe_mode_with_the_solver_matches_a_slow_solver_loop():
    """caffe's solver on the centers: V = momentum V + (diff + 2 wd c); c -= lr V (PyTorch's SGD form), 3 steps."""
    lr, mom, wd = 0.1, 0.9, 5e-4
    m = make_module(torch.zeros(7, 5, dtype=torch.float64), update="caffe")
    opt = torch.optim.SGD([m.centers], lr=lr, momentum=mom, weight_decay=2 * wd)
    c, v = torch.zeros(7, 5, dtype=torch.float64), torch.zeros(7, 5, dtype=torch.float64)
    for seed in range(3):
        x, y, _ = make_batch(torch.float64, seed=seed)
        opt.zero_grad()
        m(x, y).backward()
        opt.step()
        g = caffe_center_grad(x, y, c) + 2 * wd * c
        v = g if seed == 0 else mom * v + g
        c = c - lr * v
    torch.testing.assert_close(m.centers.detach(), c)


def test_caffe_mode_eval_and_no_grad_leave_everything_alone():
    x, y, c0 = make_batch(torch.float64)
    m = make_module(c0, update="caffe").eval()
    loss = m(x.requires_grad_(), y)
    loss.backward()
    assert m.centers.grad is None and torch.equal(m.centers.detach(), c0)


# ------------------------------------------------------------------ bad input: clear error, centers untouched


@pytest.mark.parametrize(
    "make, err, match",
    [
        (lambda: (torch.randn(4, 3), torch.tensor([0, 1, 2, 10])), ValueError, "labels must lie in"),
        (lambda: (torch.randn(4, 3), torch.tensor([0, -1, 2, 3])), ValueError, "labels must lie in"),
        (lambda: (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 3.0])), TypeError, "integer"),
        (lambda: (torch.randn(4, 5), torch.tensor([0, 1, 2, 3])), ValueError, "width 5"),
        (lambda: (torch.randn(0, 3), torch.zeros(0, dtype=torch.long)), ValueError, "empty batch"),
        (lambda: (torch.tensor([[float("nan"), 0, 0]] * 2), torch.tensor([0, 1])), ValueError, "NaN or Inf"),
        (lambda: (torch.tensor([[float("inf"), 0, 0]] * 2), torch.tensor([0, 1])), ValueError, "NaN or Inf"),
        (lambda: (torch.randn(4, 3), torch.tensor([0, 1, 2])), ValueError, "batch size mismatch"),
        (lambda: (torch.randn(4, 3, 1), torch.tensor([0, 1, 2, 3])), ValueError, "shape"),
    ],
)
def test_bad_input_raises_and_leaves_centers(make, err, match):
    m = CenterLoss(10, 3, init="normal")
    before = m.centers.clone()
    x, y = make()
    with pytest.raises(err, match=match):
        m(x, y)
    assert torch.equal(m.centers, before)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="alpha"):
        CenterLoss(10, 2, alpha=1.5)
    with pytest.raises(ValueError, match="update"):
        CenterLoss(10, 2, update="sgd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        CenterLoss(10, 2, reduction="avg")  # type: ignore[arg-type]
