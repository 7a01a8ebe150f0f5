"""The joint objective of Eq. 5: ``L = L_S + lambda * L_aux``.

A head (:mod:`.heads`: softmax, or a margin head) turns features into ``L_S``; an auxiliary loss (center,
contrastive, triplet) adds ``lambda * L_aux``. Networks end at the feature layer: the classifier belongs to
the objective. The same class serves model A (no aux loss), model B (contrastive) and model C (center).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch.distributed as dist
from torch import Tensor, nn

from ._validate import check_batch
from .heads import LinearHead


class JointOutput(NamedTuple):
    loss: Tensor  # L_S + lambda * L_aux, what you call .backward() on
    softmax: Tensor  # L_S: the head's classification loss (batch mean; with the margin for margin heads)
    aux: Tensor  # L_aux (0 when there is no auxiliary loss)
    logits: Tensor | None  # (B, C) plain class scores, or None for heads that never form them (sharded)
    accuracy: Tensor  # () fraction of the batch the head classifies right (no host sync)


class JointLoss(nn.Module):
    """``loss(features, labels)`` -> :class:`JointOutput` with ``L = L_S + lambda * L_aux`` (Eq. 5).

    Args:
        feat_dim: feature width d.
        num_classes: C.
        aux: the auxiliary loss (``CenterLoss``, ``ContrastiveLoss``, ``TripletLoss``) or ``None`` for softmax.
        lam: lambda. ``lam = 0`` still runs the aux loss (so centers keep tracking) but does not back-prop it.
        bias: whether the default softmax head has a bias (caffe-face's LeNets++ classifier has none).
        head: the classification head (default: ``LinearHead(feat_dim, num_classes, bias)``, plain softmax);
            any module ``head(features, labels) -> HeadOutput``, e.g. ``HEADS.create("arcface", ...)``.
        validate: check label range before the head runs (one host sync); the engine turns it off and
            checks its dataset's labels once instead.
    """

    def __init__(self, feat_dim: int, num_classes: int, aux: nn.Module | None = None, lam: float = 0.0,
                 bias: bool = True, head: nn.Module | None = None, validate: bool = True) -> None:
        super().__init__()
        if not lam >= 0 or math.isinf(lam):
            raise ValueError(f"lambda must be a finite number >= 0, got {lam}")
        self.feat_dim, self.num_classes = feat_dim, num_classes
        self.head = head if head is not None else LinearHead(feat_dim, num_classes, bias=bias)
        self.aux = aux
        self.lam = float(lam)
        self.validate = validate

    def extra_repr(self) -> str:
        return f"lambda={self.lam}"

    def forward(self, features: Tensor, labels: Tensor) -> JointOutput:
        self._check(features, labels)
        labels = labels.long()
        h = self.head(features, labels)
        if self.aux is None:
            return JointOutput(h.loss, h.loss, h.loss.detach() * 0.0, h.logits, h.accuracy)
        l_a = self.aux(features, labels)
        return JointOutput(h.loss + self.lam * l_a, h.loss, l_a, h.logits, h.accuracy)

    def _check(self, features: Tensor, labels: Tensor) -> None:
        """Validate before the head, whose own errors are cryptic (and a device assert on CUDA)."""
        try:
            check_batch(features, labels, self.feat_dim, self.num_classes, check_finite=False,
                        values=self.validate)
        except (TypeError, ValueError):
            if self.validate and self.aux is not None and dist.is_available() and dist.is_initialized():
                # a collective aux loss (CenterLoss) raises on every rank together instead of leaving
                # the other ranks blocked in its all-gather
                self.aux(features, labels)
            raise
