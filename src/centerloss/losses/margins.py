"""Margin heads: NormFace, CosFace (AM-softmax), ArcFace and SphereFace (A-softmax), registered in ``HEADS``.

They are the classification term ``L_S`` of Eq. 5 that center loss is compared against (and can be combined
with: ``JointLoss(d, C, head=HEADS.create("arcface", ...), aux=CenterLoss(C, d), lam=0.01)``).

All four work on the cosine ``cos theta_j = <x/|x|, w_j/|w_j|>`` between a feature and the normalised class
rows, and differ only in (a) the scale that multiplies it and (b) the margin, a small pure function that
changes the *target* cosine ``cos theta_y`` alone and is kept apart from the classifier weights (as
InsightFace's arcface_torch does), so it can be read and tested on its own:

==============  ============================  ========================================================
head            scale                         target cosine (the margin function)
==============  ============================  ========================================================
``normface``    s                             ``cos theta_y`` (no margin)
``cosface``     s                             :func:`cosface_margin`: ``cos theta_y - m``
``arcface``     s                             :func:`arcface_margin`: ``cos(theta_y + m)``
``sphereface``  ``|x|`` (features unnormed)   ``(lambda cos theta_y + psi(theta_y)) / (1 + lambda)``
==============  ============================  ========================================================

Every head returns ``HeadOutput(loss, logits, accuracy)`` where ``loss`` is the batch-mean cross-entropy
on the logits *with* the margin, and ``logits`` are the plain scores without it (``s cos theta_j``, or
``|x| cos theta_j`` for SphereFace): prediction, and hence ``accuracy``, uses the plain scores, since at
test time there is no label to put a margin on. Everything is computed in float32 (float64 for float64
inputs) with autocast turned off inside the head, because ``s cos theta`` with s = 64 in bf16 has a
resolution of 0.25-0.5 logit near the top, larger than the margins being learnt.

Weights: ``self.weight`` (C, d), no bias, initialised like ``nn.Linear`` (kaiming-uniform, a = sqrt(5),
i.e. U(-1/sqrt(d), 1/sqrt(d)); the same draws under ``torch.manual_seed``). Only the rows' directions enter
the loss; the init fixes their norm at about ``1/sqrt(3)`` whatever d and C are, which matters because the
gradient of a normalised row scales as ``1/|w_j|``. InsightFace's N(0, 0.01) gives ``|w_j| = 0.01 sqrt(d)``
(0.23 at d = 512, 0.014 at d = 2): at the 2-D MNIST width that is a ~1700x larger angular step per SGD
step than with this init (the step in angle scales as ``1/|w_j|^2``). To reproduce it anyway,
``nn.init.normal_(head.weight, std=0.01)``.

Papers: NormFace (Wang, Xiang, Cheng, Yuille 2017, arXiv:1704.06369); SphereFace (Liu et al. 2017,
arXiv:1704.08063); AM-softmax (Wang, Cheng, Liu, Liu 2018, arXiv:1801.05599) and CosFace (Wang, Hao et al.
2018, arXiv:1801.09414), the same loss; ArcFace (Deng et al. 2019, arXiv:1801.07698).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import HeadOutput, register_head, top1

__all__ = [
    "ArcFaceHead",
    "CosFaceHead",
    "NormFaceHead",
    "SphereFaceHead",
    "arcface_margin",
    "chebyshev_cos",
    "cosface_margin",
    "sphereface_lambda",
    "sphereface_psi",
]

# ------------------------------------------------------------------------------ margin functions (pure)


def cosface_margin(cos_y: Tensor, m: float) -> Tensor:
    """CosFace / AM-softmax target cosine: ``cos theta_y - m`` (an additive cosine margin)."""
    return cos_y - m


def arcface_margin(cos_y: Tensor, m: float, easy_margin: bool = False) -> Tensor:
    """ArcFace target cosine ``cos(theta_y + m)``, taken as ``cos cos m - sin sin m`` with ``sin >= 0``.

    ``cos(theta + m)`` stops decreasing once ``theta + m > pi`` (it turns back up towards ``cos m`` at
    ``theta = pi``), so near-opposite features would be *rewarded* for moving further away. Hence:

    * ``easy_margin=False`` (default, InsightFace): where ``theta_y + m > pi``, i.e. ``cos theta_y <=
      cos(pi - m)``, use ``cos theta_y - m sin m`` instead. At ``theta = pi - m`` this steps down from -1 to
      ``-cos m - m sin m`` (<= -1 because ``cos m + m sin m`` grows from 1 for m in [0, pi/2)), then falls
      with ``cos theta`` to ``-1 - m sin m`` at pi: the target is monotonically non-increasing in theta over
      [0, pi] (with one downward jump, of 0.117 at m = 0.5), and stays a fixed ``m sin m`` below
      ``cos theta`` there, a CosFace-like margin.
    * ``easy_margin=True``: apply the margin only where ``cos theta_y > 0`` (theta < pi/2) and leave the
      target at ``cos theta_y`` elsewhere. This is *not* monotone: the target jumps up from ``-sin m`` to 0
      at theta = pi/2, so samples beyond 90 degrees train without a margin.

    The input is clamped to [-1, 1], and ``1 - cos^2`` is floored at the dtype's smallest normal number
    before the square root: that changes no value that can occur other than an exact 0 (theta = 0 or pi),
    where it keeps the gradient finite (zero through the sine) instead of ``inf * 0 = nan``.
    """
    c = cos_y.clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - c * c).clamp_min(torch.finfo(c.dtype).tiny))
    shifted = c * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
    if easy_margin:
        return torch.where(c > 0.0, shifted, c)
    return torch.where(c > math.cos(math.pi - m), shifted, c - m * math.sin(m))


def chebyshev_cos(cos: Tensor, m: int) -> Tensor:
    """``cos(m theta)`` from ``cos theta`` by the Chebyshev polynomial ``T_m``, via the recurrence
    ``T_0 = 1, T_1 = c, T_{k+1} = 2 c T_k - T_{k-1}`` (m = 4: ``8c^4 - 8c^2 + 1``, SphereFace's caffe
    layer). Needs no ``acos``, whose derivative is infinite at +-1."""
    prev, cur = torch.ones_like(cos), cos
    for _ in range(m - 1):
        prev, cur = cur, 2.0 * cos * cur - prev
    return cur


def sphereface_psi(cos_y: Tensor, m: int) -> Tensor:
    """SphereFace's ``psi(theta) = (-1)^k cos(m theta) - 2k`` for theta in ``[k pi/m, (k+1) pi/m]``.

    ``psi`` equals ``cos(m theta)`` on ``[0, pi/m]`` and is extended so that it is continuous (with a
    continuous derivative) and monotonically decreasing over [0, pi], from 1 to ``1 - 2m``. ``k`` is found
    by comparing ``cos theta`` with ``cos(j pi/m)``, j = 1..m-1 (no ``acos``); ``cos(m theta)`` is
    :func:`chebyshev_cos`.
    """
    c = cos_y.clamp(-1.0, 1.0)
    k = torch.zeros_like(c)
    for j in range(1, m):
        k = k + (c < math.cos(j * math.pi / m)).to(c.dtype)  # theta > j pi / m
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
    return sign * chebyshev_cos(c, m) - 2.0 * k


def sphereface_lambda(it: Tensor, base: float, gamma: float, power: float, lambda_min: float) -> Tensor:
    """SphereFace's annealing weight ``lambda = max(lambda_min, base * (1 + gamma * it)^(-power))``.

    ``it`` is a tensor (the head's iteration buffer), so this runs on the device without a host sync; the
    result is float64 (float32 on MPS, which has no float64).
    """
    t = it.to(torch.float32 if it.device.type == "mps" else torch.float64)
    return torch.clamp_min(base * (1.0 + gamma * t) ** (-power), lambda_min)


# ------------------------------------------------------------------------------ argument checks


def _check_sizes(feat_dim: int, num_classes: int) -> None:
    for name, v in (("feat_dim", feat_dim), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def _check_real(name: str, v: float, lo: float, hi: float = math.inf, lo_open: bool = False,
                hi_open: bool = True) -> float:
    """``v`` as a float if it is a finite real number in the interval, else a ValueError naming it."""
    ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must be a finite number in {left}{lo:g}, {hi:g}{right}, got {v!r}")
    return float(v)


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64: never bf16/fp16."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ------------------------------------------------------------------------------ heads


class _CosineHead(nn.Module):
    """Shared body: class rows ``weight`` (C, d), the cosine matrix, the target swap and the loss.

    Subclasses say what multiplies the cosines (:meth:`scale`) and what the target cosine becomes
    (:meth:`target`); nothing else differs between the heads.
    """

    def __init__(self, feat_dim: int, num_classes: int) -> None:
        super().__init__()
        _check_sizes(feat_dim, num_classes)
        self.feat_dim, self.num_classes = int(feat_dim), int(num_classes)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.feat_dim))  # (C, d)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's draws (module docstring)

    def scale(self, x: Tensor) -> Tensor | float:
        raise NotImplementedError

    def target(self, cos_y: Tensor) -> Tensor:
        """The target cosine with the margin, (B,) -> (B,)."""
        raise NotImplementedError

    def logits(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(with_margin, plain)``, both (B, C) in float32 (float64 for float64 inputs); no side effects.

        ``with_margin`` differs from ``plain`` only in each row's target column.
        """
        labels = labels.long()
        work = _work_dtype(features, self.weight)
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = features.to(work)  # (B, d)
            w = F.normalize(self.weight.to(work), dim=1)  # (C, d)
            cos = F.linear(F.normalize(x, dim=1), w)  # (B, C)
            scale = self.scale(x)  # () or (B, 1)
            idx = labels.unsqueeze(1)  # (B, 1)
            cos_y = cos.gather(1, idx).squeeze(1)  # (B,)
            with_margin = cos.scatter(1, idx, self.target(cos_y).unsqueeze(1))  # (B, C)
            return scale * with_margin, scale * cos

    def forward(self, features: Tensor, labels: Tensor) -> HeadOutput:
        with_margin, plain = self.logits(features, labels)
        with torch.autocast(device_type=features.device.type, enabled=False):
            loss = F.cross_entropy(with_margin, labels.long())  # () batch mean
        return HeadOutput(loss, plain, top1(plain.detach(), labels))


class _ScaledCosineHead(_CosineHead):
    """NormFace/CosFace/ArcFace: features and rows both normalised, cosines times a fixed scale ``s``."""

    def __init__(self, feat_dim: int, num_classes: int, s: float) -> None:
        super().__init__(feat_dim, num_classes)
        self.s = _check_real("s (the scale)", s, 0.0, lo_open=True)

    def scale(self, x: Tensor) -> float:
        return self.s


@register_head("normface")
class NormFaceHead(_ScaledCosineHead):
    """NormFace: softmax on ``s cos theta_j`` (normalised features and class rows, no bias, no margin).

    Args:
        feat_dim: d.
        num_classes: C.
        s: the scale (NormFace's ``l^2``), default 16. With unit vectors the logits are bounded, and
            NormFace shows the softmax probability of the right class can reach at most P only if
            ``s >= (C-1)/C * log((C-1) P / (1-P))``; 16 clears that for P = 0.9 up to C = 987k (the bound is
            11.5 for CASIA-WebFace's 10.5k identities, 4.0 for MNIST's 10 digits), without the near-one-hot
            softmax of s = 64, which leaves little gradient when there is no margin to fight.
    """

    def __init__(self, feat_dim: int, num_classes: int, s: float = 16.0) -> None:
        super().__init__(feat_dim, num_classes, s)

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, s={self.s}"

    def target(self, cos_y: Tensor) -> Tensor:
        return cos_y


@register_head("cosface")
class CosFaceHead(_ScaledCosineHead):
    """CosFace / AM-softmax: target logit ``s (cos theta_y - m)``, others ``s cos theta_j``.

    Args:
        feat_dim: d.
        num_classes: C.
        s: the scale, default 30: AM-softmax's setting, trained on CASIA-WebFace (10.5k identities), the
            scale of data this project trains on. CosFace's paper uses s = 64, m = 0.35 and InsightFace's
            arcface_torch s = 64, m = 0.4, both for much larger identity sets, where the scale needed grows
            with log C (see :class:`NormFaceHead` for the bound).
        m: the cosine margin, in [0, 1), default 0.35 (AM-softmax and CosFace). m = 0 is NormFace.
    """

    def __init__(self, feat_dim: int, num_classes: int, s: float = 30.0, m: float = 0.35) -> None:
        super().__init__(feat_dim, num_classes, s)
        self.m = _check_real("m (the cosine margin)", m, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, s={self.s}, m={self.m}"

    def target(self, cos_y: Tensor) -> Tensor:
        return cosface_margin(cos_y, self.m)


@register_head("arcface")
class ArcFaceHead(_ScaledCosineHead):
    """ArcFace: target logit ``s cos(theta_y + m)``, others ``s cos theta_j``.

    Args:
        feat_dim: d.
        num_classes: C.
        s: the scale, default 64 (ArcFace's paper and InsightFace).
        m: the angular margin in radians, in [0, pi/2), default 0.5 (ArcFace; 0.5 rad = 28.6 degrees).
        easy_margin: how ``theta_y + m > pi`` is handled (see :func:`arcface_margin`): False (default, as
            InsightFace) uses ``cos theta_y - m sin m`` there, which keeps the target logit monotonically
            non-increasing in theta over [0, pi]; True applies the margin only where ``cos theta_y > 0``.
    """

    def __init__(self, feat_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False) -> None:
        super().__init__(feat_dim, num_classes, s)
        self.m = _check_real("m (the angular margin, radians)", m, 0.0, math.pi / 2)
        if not isinstance(easy_margin, bool):
            raise ValueError(f"easy_margin must be True or False, got {easy_margin!r}")
        self.easy_margin = easy_margin

    def extra_repr(self) -> str:
        return (f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, s={self.s}, m={self.m}, "
                f"easy_margin={self.easy_margin}")

    def target(self, cos_y: Tensor) -> Tensor:
        return arcface_margin(cos_y, self.m, self.easy_margin)


@register_head("sphereface")
class SphereFaceHead(_CosineHead):
    """SphereFace (A-softmax): rows normalised, features not; target ``|x| psi(theta_y)``, annealed.

    The logits are ``|x| cos theta_j`` (= ``x . w_j/|w_j|``), and the target becomes
    ``f_y = (lambda |x| cos theta_y + |x| psi(theta_y)) / (1 + lambda)`` with :func:`sphereface_psi` and
    ``lambda = max(lambda_min, base (1 + gamma it)^(-power))``: training starts as (weight-normalised)
    softmax and the margin fades in, as A-softmax does not converge from scratch with m = 4.

    Args:
        feat_dim: d.
        num_classes: C.
        m: the integer angular margin, 1-4, default 4 (the paper's). m = 1 is the softmax with normalised rows.
        base, gamma, power, lambda_min: the annealing; defaults 1000, 0.12, 1, 5 are SphereFace's released
            CASIA-WebFace recipe (``margin_inner_product_param`` of ``sphereface_model.prototxt``): lambda
            starts at 1000 and reaches its floor of 5 at ``it = 1659``.

    ``it`` is an int64 buffer counting training-mode forwards: each uses lambda at the current ``it``, then
    advances it by one (eval-mode forwards use it and leave it). Being a buffer it is in the state dict, so a
    resumed run continues the annealing exactly. (The caffe layer increments before use, so its n-th batch
    sees ``it = n`` where this head's sees ``n - 1``: one iteration's offset.)

    Gradients are autograd's, i.e. the exact derivative of this loss; SphereFace's caffe layer back-props a
    re-normalised direction for the target row and ignores the row normalisation in the weight gradient.
    """

    it: Tensor

    def __init__(self, feat_dim: int, num_classes: int, m: int = 4, base: float = 1000.0, gamma: float = 0.12,
                 power: float = 1.0, lambda_min: float = 5.0) -> None:
        super().__init__(feat_dim, num_classes)
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m not in (1, 2, 3, 4):
            raise ValueError(f"m (the angular margin) must be an integer in {{1, 2, 3, 4}}, got {m!r}")
        self.m = int(m)
        self.base = _check_real("base (lambda at iteration 0)", base, 0.0)
        self.gamma = _check_real("gamma", gamma, 0.0)
        self.power = _check_real("power", power, 0.0)
        self.lambda_min = _check_real("lambda_min", lambda_min, 0.0)
        self.register_buffer("it", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, m={self.m}, base={self.base}, "
                f"gamma={self.gamma}, power={self.power}, lambda_min={self.lambda_min}")

    def current_lambda(self) -> Tensor:
        """lambda at the current iteration, a 0-dim tensor on the buffer's device (``float()`` to log it)."""
        return sphereface_lambda(self.it, self.base, self.gamma, self.power, self.lambda_min)

    def scale(self, x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (B, 1) |x|

    def target(self, cos_y: Tensor) -> Tensor:
        lam = self.current_lambda().to(cos_y.dtype)
        return (lam * cos_y + sphereface_psi(cos_y, self.m)) / (1.0 + lam)

    def forward(self, features: Tensor, labels: Tensor) -> HeadOutput:
        out = super().forward(features, labels)
        if self.training:
            with torch.no_grad():
                self.it.add_(1)
        return out
