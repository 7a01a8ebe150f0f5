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
    x = torch.randn(32, 8)
    y = torch.randint(0, 1_000_000, (32,))
    m(x, y)
    moved = (m.centers != 0).any(1).nonzero().flatten()
    assert set(moved.tolist()) <= set(y.tolist())


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
