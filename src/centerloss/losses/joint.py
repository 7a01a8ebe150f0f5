"""The joint objective of Eq. 5: ``L = L_S + lambda * L_aux``.

The classifier (the softmax layer's W, b) belongs to the objective, not to the network: networks end at the
feature layer, and this module turns features into logits. The same class serves model A (no aux loss),
model B (contrastive) and model C (center).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import check_batch


class JointOutput(NamedTuple):
    loss: Tensor  # L_S + lambda * L_aux, what you call .backward() on
    softmax: Tensor  # L_S (batch mean)
    aux: Tensor  # L_aux (0 when there is no auxiliary loss)
    logits: Tensor  # (B, C)


class JointLoss(nn.Module):
    """``loss(features, labels)`` -> :class:`JointOutput` with ``L = L_S + lambda * L_aux`` (Eq. 5).

    Args:
        feat_dim: feature width d.
        num_classes: C.
        aux: the auxiliary loss (``CenterLoss``, ``ContrastiveLoss``, ``TripletLoss``) or ``None`` for softmax.
        lam: lambda. ``lam = 0`` still runs the aux loss (so centers keep tracking) but does not back-prop it.
        bias: whether the classifier has a bias (caffe-face's LeNets++ classifier has none).
    """

    def __init__(self, feat_dim: int, num_classes: int, aux: nn.Module | None = None, lam: float = 0.0,
                 bias: bool = True) -> None:
        super().__init__()
        if not lam >= 0 or math.isinf(lam):
            raise ValueError(f"lambda must be a finite number >= 0, got {lam}")
        self.classifier = nn.Linear(feat_dim, num_classes, bias=bias)
        self.aux = aux
        self.lam = float(lam)

    def extra_repr(self) -> str:
        return f"lambda={self.lam}"

    def forward(self, features: Tensor, labels: Tensor) -> JointOutput:
        try:  # before cross_entropy, whose own errors are cryptic (and a device assert on CUDA)
            check_batch(features, labels, self.classifier.in_features, self.classifier.out_features,
                        check_finite=False)
        except (TypeError, ValueError):
            if self.aux is not None and dist.is_available() and dist.is_initialized():
                # a collective aux loss (CenterLoss) raises on every rank together instead of leaving
                # the other ranks blocked in its all-gather
                self.aux(features, labels)
            raise
        labels = labels.long()
        logits = self.classifier(features)  # (B, C)
        l_s = F.cross_entropy(logits.float(), labels)
        if self.aux is None:
            l_a = l_s.detach() * 0.0
            return JointOutput(l_s, l_s, l_a, logits)
        l_a = self.aux(features, labels)
        return JointOutput(l_s + self.lam * l_a, l_s, l_a, logits)
