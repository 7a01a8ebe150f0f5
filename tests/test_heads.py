"""Margin heads (NormFace, CosFace, ArcFace, SphereFace) against slow per-sample loops of the papers' formulas,
plus the properties each head claims (ArcFace's theta + m > pi guard, SphereFace's lambda annealing)."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn

from centerloss import CenterLoss, JointLoss
from centerloss.losses import HEADS, HeadOutput, SphereFaceHead
from centerloss.losses.margins import (
    arcface_margin,
    chebyshev_cos,
    cosface_margin,
    sphereface_lambda,
    sphereface_psi,
)

B, C, D = 10, 5, 4
MARGIN_HEADS = ("normface", "cosface", "arcface", "sphereface")
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}
# angles between each feature and its own class row: every regime of every head, none on a branch boundary
THETAS = torch.linspace(0.15, 3.05, B, dtype=torch.float64)

# (head, kwargs, sphereface iteration to start from). Every kwarg the reference needs is spelt out.
CASES = [
    ("normface", dict(s=16.0), 0),
    ("normface", dict(s=2.5), 0),
    ("cosface", dict(s=30.0, m=0.35), 0),
    ("cosface", dict(s=4.0, m=0.9), 0),
    ("arcface", dict(s=64.0, m=0.5, easy_margin=False), 0),
    ("arcface", dict(s=8.0, m=1.2, easy_margin=False), 0),
    ("arcface", dict(s=8.0, m=0.5, easy_margin=True), 0),
    ("sphereface", dict(m=4, base=0.0, gamma=0.0, power=1.0, lambda_min=0.0), 0),  # A-softmax, no annealing
    ("sphereface", dict(m=4, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0), 300),  # lambda = 27
    ("sphereface", dict(m=3, base=1.0, gamma=0.0, power=1.0, lambda_min=0.0), 0),
    ("sphereface", dict(m=2, base=0.5, gamma=0.0, power=1.0, lambda_min=0.0), 0),
    ("sphereface", dict(m=1, base=0.0, gamma=0.0, power=1.0, lambda_min=0.0), 0),
]
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" for n, kw, _ in CASES]


# ------------------------------------------------------------------ slow references, written from the papers


def slow_lambda(kw, it):
    """SphereFace's annealing: max(lambda_min, base * (1 + gamma * it)^-power)."""
    return max(kw["lambda_min"], kw["base"] * (1.0 + kw["gamma"] * it) ** (-kw["power"]))


def slow_psi(theta, m):
    """psi(theta) = (-1)^k cos(m theta) - 2k on [k pi/m, (k+1) pi/m] (theta a 0-dim tensor or a float)."""
    k = min(int(math.floor(m * float(theta.detach() if torch.is_tensor(theta) else theta) / math.pi)), m - 1)
    cos_m = torch.cos(m * theta) if torch.is_tensor(theta) else math.cos(m * theta)
    return (-1) ** k * cos_m - 2 * k


def slow_logit(name, kw, cos, norm_x, is_target, lam):
    """One logit, from the papers: the margin only on the target class."""
    if name == "sphereface":  # weights normalised, features not
        if not is_target:
            return norm_x * cos
        theta = torch.acos(cos)
        return (lam * norm_x * cos + norm_x * slow_psi(theta, kw["m"])) / (1.0 + lam)
    s = kw["s"]
    if not is_target or name == "normface":
        return s * cos
    if name == "cosface":
        return s * (cos - kw["m"])
    m, theta = kw["m"], torch.acos(cos)  # arcface, in angle space
    if kw["easy_margin"]:
        return s * torch.cos(theta + m) if cos > 0 else s * cos
    return s * torch.cos(theta + m) if theta + m <= math.pi else s * (cos - m * math.sin(m))


def slow_loss(name, kw, x, w, y, lam=0.0):
    """Mean over samples of -log softmax(logits)_y, one pair (i, j) at a time; also the plain logits."""
    total, plain = 0.0, []
    for i in range(x.shape[0]):
        norm_x = torch.sqrt(sum(x[i, k] ** 2 for k in range(x.shape[1])))
        logits, row = [], []
        for j in range(w.shape[0]):
            norm_w = torch.sqrt(sum(w[j, k] ** 2 for k in range(w.shape[1])))
            cos = sum(x[i, k] * w[j, k] for k in range(x.shape[1])) / (norm_x * norm_w)
            logits.append(slow_logit(name, kw, cos, norm_x, j == int(y[i]), lam))
            row.append(slow_logit(name, kw, cos, norm_x, False, lam))
        total = total + torch.log(sum(torch.exp(z) for z in logits)) - logits[int(y[i])]
        plain.append(torch.stack(row))
    return total / x.shape[0], torch.stack(plain)


def batch_at_angles(weight, y, thetas, seed=0):
    """Features at the given angles from their own class rows, in a random direction, with norms in [1, 3]."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, t in enumerate(thetas.tolist()):
        u = weight[y[i]] / weight[y[i]].norm()
        r = torch.randn(weight.shape[1], generator=g, dtype=weight.dtype)
        r = r - (r @ u) * u
        norm = 1.0 + 2.0 * torch.rand((), generator=g, dtype=weight.dtype)
        rows.append(norm * (math.cos(t) * u + math.sin(t) * r / r.norm()))
    return torch.stack(rows)


def make_case(name, kw, it, dtype, b=B, c=C, d=D, seed=0):
    torch.manual_seed(seed)
    head = HEADS.create(name, feat_dim=d, num_classes=c, **kw).to(dtype)
    if name == "sphereface":
        head.it.fill_(it)
    y = torch.randint(0, c, (b,), generator=torch.Generator().manual_seed(seed + 1))
    x = batch_at_angles(head.weight.detach(), y, THETAS[:b].to(dtype), seed=seed + 2)
    return head, x, y


# ------------------------------------------------------------------ every head against its reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, kw, it", CASES, ids=IDS)
def test_loss_logits_and_gradients_match_slow_reference(name, kw, it, dtype):
    head, x, y = make_case(name, kw, it, dtype)
    x = x.requires_grad_()
    out = head(x, y)
    out.loss.backward()
    x64 = x.detach().double().requires_grad_()
    w64 = head.weight.detach().double().requires_grad_()
    lam = slow_lambda(kw, it) if name == "sphereface" else 0.0
    ref_loss, ref_plain = slow_loss(name, kw, x64, w64, y, lam)
    ref_loss.backward()
    assert out.loss.dtype == dtype and out.loss.shape == ()
    torch.testing.assert_close(out.loss, ref_loss.detach().to(dtype), **TOL[dtype])
    torch.testing.assert_close(out.logits, ref_plain.detach().to(dtype), **TOL[dtype])
    torch.testing.assert_close(x.grad, x64.grad.to(dtype), **TOL[dtype])
    torch.testing.assert_close(head.weight.grad, w64.grad.to(dtype), **TOL[dtype])
    ref_acc = sum(int(ref_plain[i].argmax()) == int(y[i]) for i in range(B)) / B
    assert out.accuracy.shape == () and float(out.accuracy) == pytest.approx(ref_acc)
    if name == "sphereface":
        assert int(head.it) == it + 1  # one training-mode forward


@pytest.mark.parametrize("name, kw, it", CASES, ids=IDS)
def test_gradcheck_float64(name, kw, it):
    head, x, y = make_case(name, kw, it, torch.float64, b=6, c=4, d=3, seed=5)
    head.eval()  # keeps SphereFace's lambda fixed across gradcheck's many calls
    w = head.weight.detach().clone().requires_grad_()

    def f(x_, w_):
        out = torch.func.functional_call(head, {"weight": w_}, (x_, y))
        return out.loss, out.logits

    assert torch.autograd.gradcheck(f, (x.requires_grad_(), w))


@pytest.mark.parametrize("name, kw, it", CASES, ids=IDS)
def test_margin_moves_only_the_target_logit_and_only_down(name, kw, it):
    head, x, y = make_case(name, kw, it, torch.float64)
    with_margin, plain = head.logits(x, y)
    target = torch.nn.functional.one_hot(y, C).bool()
    assert torch.equal(with_margin[~target], plain[~target])
    gap = (plain - with_margin)[target]  # (B,)
    no_margin = name == "normface" or (name == "sphereface" and kw["m"] == 1)
    if no_margin:
        torch.testing.assert_close(gap, torch.zeros_like(gap), rtol=0, atol=1e-12)
    elif kw.get("easy_margin"):  # no margin past 90 degrees
        ahead = THETAS < math.pi / 2
        assert (gap[ahead] > 0).all() and torch.equal(gap[~ahead], torch.zeros_like(gap[~ahead])), gap
    else:
        assert (gap > 0).all(), gap


@pytest.mark.parametrize("name", ["cosface", "arcface"])
def test_zero_margin_is_normface(name):
    torch.manual_seed(0)
    ref = HEADS.create("normface", feat_dim=D, num_classes=C, s=10.0)
    head = HEADS.create(name, feat_dim=D, num_classes=C, s=10.0, m=0.0)
    head.load_state_dict(ref.state_dict())
    x, y = torch.randn(B, D), torch.randint(0, C, (B,))
    torch.testing.assert_close(head(x, y).loss, ref(x, y).loss, rtol=1e-6, atol=1e-6)


def test_margin_functions():
    cos = torch.linspace(-1, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(cosface_margin(cos, 0.35), cos - 0.35)
    theta = torch.acos(cos[1:-1])
    torch.testing.assert_close(arcface_margin(cos[1:-1], 0.3, easy_margin=True)[theta < math.pi / 2],
                               torch.cos(theta + 0.3)[theta < math.pi / 2])


# ------------------------------------------------------------------ ArcFace: theta + m > pi


@pytest.mark.parametrize("m", [0.1, 0.5, 1.0, 1.5])
def test_arcface_target_is_monotone_over_0_pi(m):
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    t = arcface_margin(torch.cos(theta), m, easy_margin=False)
    assert (t[1:] - t[:-1] <= 1e-12).all()
    inside, past = theta + m < math.pi - 1e-9, theta + m > math.pi + 1e-9
    torch.testing.assert_close(t[inside], torch.cos(theta[inside] + m))
    torch.testing.assert_close(t[past], torch.cos(theta[past]) - m * math.sin(m))
    raw = torch.cos(theta + m)  # without the guard the target rises again past pi - m
    assert (raw[1:] - raw[:-1] > 1e-6).any()
    # the same through the head: class 0's row along e_1, features rotating away from it in the plane
    head = HEADS.create("arcface", feat_dim=2, num_classes=2, s=64.0, m=m).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(2, dtype=torch.float64))
    x = 2.0 * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)  # (N, 2)
    with_margin, _ = head.logits(x, torch.zeros(len(theta), dtype=torch.long))
    torch.testing.assert_close(with_margin[:, 0] / 64.0, t)


def test_arcface_easy_margin_applies_only_below_90_degrees():
    m = 0.5
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    cos = torch.cos(theta)
    t = arcface_margin(cos, m, easy_margin=True)
    ahead = cos > 0
    torch.testing.assert_close(t[ahead], torch.cos(theta[ahead] + m))
    assert torch.equal(t[~ahead], cos[~ahead])  # no margin past 90 degrees
    jump = (t[1:] - t[:-1]).max()  # not monotone: up from -sin m to ~0 at pi/2
    assert jump == pytest.approx(math.sin(m), abs=1e-3)


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_arcface_near_opposite_features(noise):
    torch.manual_seed(0)
    kw = dict(s=64.0, m=0.5, easy_margin=False)
    head = HEADS.create("arcface", feat_dim=D, num_classes=C, **kw).double()
    y = torch.arange(6) % C
    x = -3.0 * head.weight.detach()[y] + noise * torch.randn(6, D, dtype=torch.float64)
    x.requires_grad_()
    out = head(x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    with_margin, plain = head.logits(x.detach(), y)
    cos_y = plain.gather(1, y[:, None]).squeeze(1) / 64.0
    assert (cos_y < math.cos(math.pi - 0.5)).all()  # all past the guard
    torch.testing.assert_close(with_margin.gather(1, y[:, None]).squeeze(1), 64.0 * (cos_y - 0.5 * math.sin(0.5)))
    if noise > 0:  # away from acos's infinite slope at -1, the reference's gradient exists too
        x64, w64 = x.detach().clone().requires_grad_(), head.weight.detach().clone().requires_grad_()
        ref, _ = slow_loss("arcface", kw, x64, w64, y)
        ref.backward()
        torch.testing.assert_close(out.loss, ref.detach(), **TOL[torch.float64])
        torch.testing.assert_close(x.grad, x64.grad, **TOL[torch.float64])


# ------------------------------------------------------------------ SphereFace: psi and the lambda annealing


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_sphereface_psi(m):
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    psi = sphereface_psi(torch.cos(theta), m)
    ref = torch.tensor([slow_psi(t, m) for t in theta.tolist()], dtype=torch.float64)
    torch.testing.assert_close(psi, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(chebyshev_cos(torch.cos(theta), m), torch.cos(m * theta))
    assert (psi[1:] - psi[:-1] <= 1e-12).all()  # monotone decreasing over [0, pi]
    assert float(psi[0]) == pytest.approx(1.0) and float(psi[-1]) == pytest.approx(1.0 - 2 * m)


def test_sphereface_lambda_schedule_over_iterations():
    kw = dict(m=4, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0)
    head, x, y = make_case("sphereface", kw, 0, torch.float64)
    for n in range(12):  # each training-mode forward uses lambda at the current it, then advances it
        assert head.it.dtype == torch.int64 and int(head.it) == n
        assert float(head.current_lambda()) == pytest.approx(slow_lambda(kw, n), rel=1e-12)
        ref, _ = slow_loss("sphereface", kw, x, head.weight.detach(), y, slow_lambda(kw, n))
        torch.testing.assert_close(head(x, y).loss, ref, **TOL[torch.float64])
    for n in (100, 1658, 1659, 10**6):  # 1659 is where 1000 / (1 + 0.12 n) drops below the floor of 5
        head.it.fill_(n)
        assert float(head.current_lambda()) == pytest.approx(slow_lambda(kw, n), rel=1e-12)
    assert float(head.current_lambda()) == 5.0
    other = dict(base=50.0, gamma=0.3, power=2.5, lambda_min=0.1)
    for n in (0, 3, 40):
        got = sphereface_lambda(torch.tensor(n), **other)
        assert float(got) == pytest.approx(slow_lambda(other, n), rel=1e-12)


def test_sphereface_eval_does_not_advance():
    head, x, y = make_case("sphereface", dict(m=4), 7, torch.float32)
    head.eval()
    first, second = head(x, y).loss, head(x, y).loss
    assert int(head.it) == 7 and torch.equal(first, second)
    head.train()
    head(x, y)
    assert int(head.it) == 8


def test_sphereface_state_dict_round_trip_resumes_the_annealing():
    safetensors_torch = pytest.importorskip("safetensors.torch")
    head, x, y = make_case("sphereface", dict(m=4), 0, torch.float32)
    straight = [head(x, y).loss for _ in range(40)]
    run, _, _ = make_case("sphereface", dict(m=4), 0, torch.float32)
    for _ in range(25):
        run(x, y)
    state = run.state_dict()
    assert state["it"].dtype == torch.int64 and int(state["it"]) == 25
    blob = safetensors_torch.save(dict(state))  # the project's checkpoint format
    torch.manual_seed(99)
    resumed = SphereFaceHead(D, C, m=4)
    assert int(resumed.it) == 0
    resumed.load_state_dict(safetensors_torch.load(blob))
    assert int(resumed.it) == 25
    for n in range(25, 40):
        assert torch.equal(resumed(x, y).loss, straight[n])
    assert int(resumed.it) == 40


# ------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_autocast_computes_in_float32(name, low):
    torch.manual_seed(0)
    net, head = nn.Linear(6, D), HEADS.create(name, feat_dim=D, num_classes=C).eval()
    inp, y = torch.randn(32, 6), torch.randint(0, C, (32,))
    full = head(net(inp), y)
    with torch.autocast("cpu", dtype=low):
        feats = net(inp)
        out = head(feats, y)
    assert feats.dtype == low  # the head really was fed low-precision features
    assert out.loss.dtype == torch.float32 and out.logits.dtype == torch.float32
    # float32 inside the head: identical to the float32 head on the same (rounded) features
    exact = head(feats.detach().float(), y)
    torch.testing.assert_close(out.loss, exact.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-3, atol=1e-3)  # only the features' rounding
    out.loss.backward()
    assert net.weight.grad.dtype == torch.float32 and torch.isfinite(net.weight.grad).all()


# ------------------------------------------------------------------ with the center loss (Eq. 5)


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_combines_with_center_loss(name):
    torch.manual_seed(0)
    joint = JointLoss(D, C, head=HEADS.create(name, feat_dim=D, num_classes=C), aux=CenterLoss(C, D), lam=0.01)
    head_alone = copy.deepcopy(joint.head)
    x = torch.randn(B, D) * 2
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])  # classes 3 and 4 absent
    c0 = joint.aux.centers.clone()
    xj = x.clone().requires_grad_()
    out = joint(xj, y)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, out.softmax + 0.01 * out.aux)
    assert not torch.allclose(joint.aux.centers[:3], c0[:3])  # Eq. 4 moved the centers of the batch's classes
    assert torch.equal(joint.aux.centers[3:], c0[3:])
    g = joint.head.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    xh = x.clone().requires_grad_()
    head_alone(xh, y).loss.backward()  # dL/dx = dL_S/dx + lambda (x - c_y) / B (Eq. 3, mean reduction)
    torch.testing.assert_close(xj.grad, xh.grad + 0.01 * (x - c0[y]) / B, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ every registered head


@pytest.mark.parametrize("name", HEADS.names())
def test_every_registered_head(name):
    assert set(MARGIN_HEADS) | {"linear"} <= set(HEADS.names())
    if getattr(HEADS.get(name), "takes_aux", False):
        pytest.skip(f"head {name!r} builds the whole objective (aux included); it has its own tests")
    torch.manual_seed(0)
    head = HEADS.create(name, feat_dim=D, num_classes=C)
    x, y = torch.randn(B, D, requires_grad=True), torch.arange(B) % C
    out = head(x, y)
    assert isinstance(out, HeadOutput)
    assert out.loss.shape == () and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    if out.logits is not None:
        assert out.logits.shape == (B, C) and torch.isfinite(out.logits).all()
    assert out.accuracy.shape == () and 0.0 <= float(out.accuracy) <= 1.0
    out.loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in head.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_accuracy_is_one_when_features_are_the_class_rows(name):
    torch.manual_seed(0)
    head = HEADS.create(name, feat_dim=D, num_classes=C)
    x = 2.5 * head.weight.detach().clone()  # row j points along class j's row: cos = 1 there, < 1 elsewhere
    assert float(head(x, torch.arange(C)).accuracy) == 1.0
    assert float(head(x, (torch.arange(C) + 1) % C).accuracy) == 0.0
    out = head(x.requires_grad_(), torch.arange(C))
    out.loss.backward()  # cos = 1 exactly: the gradient must still be finite
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_weight_init_is_nn_linear_and_seeded(name):
    torch.manual_seed(3)
    head = HEADS.create(name, feat_dim=D, num_classes=C)
    torch.manual_seed(3)
    linear = nn.Linear(D, C, bias=False)
    assert isinstance(head.weight, nn.Parameter) and head.weight.shape == (C, D)
    assert torch.equal(head.weight, linear.weight)
    assert [n for n, _ in head.named_parameters()] == ["weight"]  # no bias
    torch.manual_seed(4)
    assert not torch.equal(HEADS.create(name, feat_dim=D, num_classes=C).weight, head.weight)


BAD = [
    ("normface", "s", 0.0), ("normface", "s", -1.0), ("normface", "s", float("inf")), ("normface", "s", float("nan")),
    ("cosface", "s", 0), ("cosface", "m", -0.1), ("cosface", "m", 1.0),
    ("arcface", "s", -64.0), ("arcface", "m", math.pi / 2), ("arcface", "m", -1e-3), ("arcface", "easy_margin", "no"),
    ("sphereface", "m", 0), ("sphereface", "m", 5), ("sphereface", "m", 2.5), ("sphereface", "m", True),
    ("sphereface", "base", -1.0), ("sphereface", "gamma", -0.1), ("sphereface", "power", -1.0),
    ("sphereface", "lambda_min", float("nan")),
    ("arcface", "feat_dim", 0), ("cosface", "num_classes", 0), ("sphereface", "num_classes", 2.0),
]


@pytest.mark.parametrize("name, key, value", BAD, ids=[f"{n}-{k}={v!r}" for n, k, v in BAD])
def test_bad_constructor_arguments_raise(name, key, value):
    kwargs = dict(feat_dim=D, num_classes=C)
    kwargs[key] = value
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}\b") as e:
        HEADS.create(name, **kwargs)
    assert repr(value) in str(e.value)


def test_linear_head_blocks_init_equals_the_sharded_rows() -> None:
    from centerloss.losses.sharded import init_rows

    h = HEADS.create("linear", feat_dim=8, num_classes=3000, bias=True, init="blocks", seed=5)
    w, b = init_rows(0, 3000, 8, seed=5, bias=True)
    assert torch.equal(h.weight.detach(), w) and torch.equal(h.bias.detach(), b)
    with pytest.raises(ValueError, match="init must be"):
        HEADS.create("linear", feat_dim=8, num_classes=3, init="xavier")
