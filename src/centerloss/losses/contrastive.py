"""Contrastive loss over the pairs formed inside a batch (Hadsell et al. 2006; DeepID2), the paper's model B.

For every pair i < j of the batch, with ``d_ij = |x_i - x_j|``:
    same identity:       1/2 * d_ij^2
    different identity:  1/2 * max(0, margin - d_ij)^2
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._distances import masked_mean, pairwise_sq_dists, safe_sqrt
from ._validate import check_batch


def contrastive_loss(features: Tensor, labels: Tensor, margin: float = 1.0, reduction: str = "mean",
                     validate: bool = True) -> Tensor:
    """Contrastive loss over all B(B-1)/2 in-batch pairs.

    ``reduction="mean"`` averages over pairs, ``"sum"`` sums them, ``"balanced"`` averages positive and
    negative pairs separately and adds the two means (a batch has far more negative than positive pairs).
    """
    check_batch(features, labels, values=validate)  # values: one host sync (NaN/Inf); the engine skips it
    if features.shape[0] < 2:
        raise ValueError("contrastive loss needs at least 2 samples per batch")
    d2 = pairwise_sq_dists(features)  # (B, B)
    iu = torch.triu_indices(features.shape[0], features.shape[0], offset=1, device=features.device)
    d2 = d2[iu[0], iu[1]]  # (P,)
    same = labels[iu[0]] == labels[iu[1]]  # (P,)
    pos = 0.5 * d2
    neg = 0.5 * (margin - safe_sqrt(d2)).clamp_min(0.0).pow(2)
    if reduction == "balanced":
        return masked_mean(pos, same) + masked_mean(neg, ~same)  # an empty side contributes 0
    per_pair = torch.where(same, pos, neg)
    if reduction == "mean":
        return per_pair.mean()
    if reduction == "sum":
        return per_pair.sum()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'balanced', got {reduction!r}")


class ContrastiveLoss(nn.Module):
    """Module twin of :func:`contrastive_loss`; ``loss(features, labels)``."""

    def __init__(self, margin: float = 1.0, reduction: str = "mean", validate: bool = True) -> None:
        super().__init__()
        self.validate = validate  # check NaN/Inf per batch (one host sync); the engine turns it off
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        if reduction not in ("mean", "sum", "balanced"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'balanced', got {reduction!r}")
        self.margin = float(margin)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return contrastive_loss(features, labels, self.margin, self.reduction, self.validate)
