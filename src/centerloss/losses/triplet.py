"""Triplet loss (Schroff et al. 2015) on triplets mined inside the batch; batch-hard by default
(Hermans et al. 2017).

For an anchor a, a positive p (same label, p != a) and a negative n (other label):
    l(a, p, n) = max(0, d(a, p) - d(a, n) + margin),  d = Euclidean distance.
``mining="batch_hard"`` keeps, per anchor, the farthest positive and the nearest negative and averages over
anchors that have both. ``mining="all"`` averages over every valid triplet.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._distances import masked_mean, pairwise_sq_dists, safe_sqrt
from ._validate import check_batch


def triplet_loss(features: Tensor, labels: Tensor, margin: float = 0.2, mining: str = "batch_hard",
                 validate: bool = True) -> Tensor:
    check_batch(features, labels, values=validate)  # values: one host sync (NaN/Inf); the engine skips it
    dist = safe_sqrt(pairwise_sq_dists(features))  # (B, B)
    n = features.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)  # (B, B)
    pos_mask = same & ~eye
    neg_mask = ~same
    # masked means (0 when nothing is valid): no data-dependent shape, no host sync
    if mining == "batch_hard":
        valid = pos_mask.any(1) & neg_mask.any(1)  # anchors with at least one positive and one negative
        hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(1)  # (B,); -inf: no positive
        hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(1)  # (B,); +inf: no negative
        return masked_mean((hardest_pos - hardest_neg + margin).clamp_min(0.0), valid)
    if mining == "all":
        # (a, p, n) valid iff pos_mask[a, p] and neg_mask[a, n]
        trip = pos_mask.unsqueeze(2) & neg_mask.unsqueeze(1)  # (B, B, B)
        l_all = (dist.unsqueeze(2) - dist.unsqueeze(1) + margin).clamp_min(0.0)  # (B, B, B)
        return masked_mean(l_all, trip)
    raise ValueError(f"mining must be 'batch_hard' or 'all', got {mining!r}")


class TripletLoss(nn.Module):
    """Module twin of :func:`triplet_loss`; ``loss(features, labels)``."""

    def __init__(self, margin: float = 0.2, mining: str = "batch_hard", validate: bool = True) -> None:
        super().__init__()
        self.validate = validate  # check NaN/Inf per batch (one host sync); the engine turns it off
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if mining not in ("batch_hard", "all"):
            raise ValueError(f"mining must be 'batch_hard' or 'all', got {mining!r}")
        self.margin = float(margin)
        self.mining = mining

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}"

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return triplet_loss(features, labels, self.margin, self.mining, self.validate)
