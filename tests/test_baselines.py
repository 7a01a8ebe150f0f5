"""Contrastive, triplet and joint losses against slow loops over hand-made embeddings."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from centerloss import CenterLoss, ContrastiveLoss, JointLoss, TripletLoss, contrastive_loss, triplet_loss
from centerloss.losses import AUX, HEADS


def batch(dtype=torch.float64, b=10, d=3, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.randint(0, k, (b,), generator=g)


def dist(a, b):
    return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b)))


def slow_contrastive(x, y, margin):
    terms = []
    for i, j in itertools.combinations(range(len(y)), 2):
        d = dist(x[i], x[j])
        terms.append(0.5 * d * d if y[i] == y[j] else 0.5 * max(0.0, margin - d) ** 2)
    return terms


def slow_triplet_batch_hard(x, y, margin):
    out = []
    for a in range(len(y)):
        pos = [dist(x[a], x[p]) for p in range(len(y)) if p != a and y[p] == y[a]]
        neg = [dist(x[a], x[n]) for n in range(len(y)) if y[n] != y[a]]
        if pos and neg:
            out.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(out) / len(out)


def slow_triplet_all(x, y, margin):
    out = []
    for a, p, n in itertools.product(range(len(y)), repeat=3):
        if p != a and y[p] == y[a] and y[n] != y[a]:
            out.append(max(0.0, dist(x[a], x[p]) - dist(x[a], x[n]) + margin))
    return sum(out) / len(out)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_contrastive_matches_slow_loop(dtype, tol):
    x, y = batch(dtype)
    terms = slow_contrastive(x, y, margin=2.0)
    assert contrastive_loss(x, y, 2.0, "mean").item() == pytest.approx(sum(terms) / len(terms), rel=tol, abs=tol)
    assert ContrastiveLoss(2.0, "sum")(x, y).item() == pytest.approx(sum(terms), rel=tol, abs=tol)


def test_contrastive_balanced():
    x, y = batch()
    same = [y[i] == y[j] for i, j in itertools.combinations(range(len(y)), 2)]
    terms = slow_contrastive(x, y, 2.0)
    pos = [t for t, s in zip(terms, same) if s]
    neg = [t for t, s in zip(terms, same) if not s]
    expected = sum(pos) / len(pos) + sum(neg) / len(neg)
    assert contrastive_loss(x, y, 2.0, "balanced").item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_triplet_matches_slow_loop(dtype, tol):
    x, y = batch(dtype, b=9)
    assert TripletLoss(0.5)(x, y).item() == pytest.approx(slow_triplet_batch_hard(x, y, 0.5), rel=tol, abs=tol)
    assert triplet_loss(x, y, 0.5, "all").item() == pytest.approx(slow_triplet_all(x, y, 0.5), rel=tol, abs=tol)


def test_pairwise_losses_gradcheck_and_precision():
    x, y = batch(b=6)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: contrastive_loss(a, y, 3.0), (x,))
    assert torch.autograd.gradcheck(lambda a: triplet_loss(a, y, 1.0, "all"), (x,))
    assert torch.autograd.gradcheck(lambda a: triplet_loss(a, y, 1.0, "batch_hard"), (x,))
    assert torch.autograd.gradcheck(lambda a: contrastive_loss(a, y, 3.0, "balanced"), (x,))
    # large common offset, small spread: distances stay right in float32
    xb, yb = batch(torch.float64, b=8)
    big = (xb * 1e-2 + 1e4).float()  # the float32 inputs themselves; reference in float64 from them
    ref = contrastive_loss(big.double(), yb, 0.05).item()
    assert contrastive_loss(big, yb, 0.05).item() == pytest.approx(ref, rel=1e-3)


def test_degenerate_batches():
    x = torch.randn(4, 3, requires_grad=True)
    # no positives -> batch-hard has no valid anchor -> 0 with a gradient path
    loss = triplet_loss(x, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # the masked +-inf never leak a NaN into the gradient
    # balanced contrastive with no positive pair: the negative mean alone
    xs, ys = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    assert contrastive_loss(xs, ys, 2.0, "balanced").item() == pytest.approx(
        contrastive_loss(xs, ys, 2.0, "mean").item(), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        contrastive_loss(torch.randn(1, 3), torch.tensor([0]))
    # identical features: finite gradient despite |x_i - x_j| = 0
    same = torch.ones(4, 3, requires_grad=True)
    contrastive_loss(same, torch.tensor([0, 1, 0, 1]), 1.0).backward()
    assert torch.isfinite(same.grad).all()


def test_joint_loss_is_softmax_plus_lambda_aux():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 5, (8,))
    center = CenterLoss(5, 4, alpha=0.5)
    j = JointLoss(4, 5, aux=center, lam=0.1)
    out = j(x, y)
    l_s = torch.nn.functional.cross_entropy(x @ j.head.weight.t() + j.head.bias, y)
    torch.testing.assert_close(out.softmax, l_s)
    l_c = 0.5 * (x - torch.zeros(5, 4)[y]).pow(2).sum(1).mean()  # Eq. 2 / B with the initial (zero) centers
    torch.testing.assert_close(out.aux, l_c)
    torch.testing.assert_close(out.loss, l_s + 0.1 * l_c)
    assert out.logits.shape == (8, 5)
    a = JointLoss(4, 5)(x, y)
    assert a.aux.item() == 0.0 and torch.equal(a.loss, a.softmax)


def test_registries_build_every_part_from_name_and_kwargs():
    assert set(AUX.names()) >= {"center", "contrastive", "triplet"}
    c = AUX.create("center", num_classes=3, feat_dim=2, alpha=0.25)
    assert isinstance(c, CenterLoss) and c.alpha == 0.25 and tuple(c.centers.shape) == (3, 2)
    assert "linear" in HEADS.names()
    h = HEADS.create("linear", feat_dim=2, num_classes=3, bias=False)
    assert tuple(h.weight.shape) == (3, 2) and h.bias is None
    with pytest.raises(KeyError, match="unknown aux loss 'arcface'"):
        AUX.create("arcface")


def test_joint_loss_validates_before_cross_entropy():
    j = JointLoss(4, 5, aux=CenterLoss(5, 4))
    before = j.aux.centers.clone()
    with pytest.raises(ValueError, match="labels must lie in"):
        j(torch.randn(3, 4), torch.tensor([0, 1, 7]))
    with pytest.raises(ValueError, match="width 3"):
        j(torch.randn(3, 3), torch.tensor([0, 1, 2]))
    assert torch.equal(j.aux.centers, before)
    out = j(torch.randn(3, 4), torch.tensor([0, 1, 2], dtype=torch.int32))  # int32 labels are fine
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="lambda"):
        JointLoss(4, 5, lam=float("nan"))
    with pytest.raises(ValueError, match="reduction"):
        ContrastiveLoss(reduction="avg")


@pytest.mark.parametrize("loss_fn", [lambda f, y: contrastive_loss(f, y, 1.0), lambda f, y: triplet_loss(f, y, 0.5)])
def test_pairwise_distances_stay_float32_under_autocast(loss_fn):
    # near-duplicate pairs: a bf16 Gram matrix would turn their small distances into 0 or noise
    torch.manual_seed(0)
    base = torch.randn(4, 64)
    feats = torch.cat([base, base + 0.05 * torch.randn(4, 64)])
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    lin = torch.nn.Linear(64, 64)
    ref = loss_fn(lin(feats).float(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f16 = lin(feats)
        assert f16.dtype == torch.bfloat16
        got = loss_fn(f16, y)
    # the only error left is the bf16 rounding of the features themselves
    ref16 = loss_fn(f16.detach().float(), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref16, rtol=1e-5, atol=1e-6)
    assert abs(got.item() - ref.item()) < 0.05 * abs(ref.item()) + 1e-3
