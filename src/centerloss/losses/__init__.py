"""Losses: center loss (paper and learnable updates) and the softmax / contrastive / triplet baselines.

Every loss is an ``nn.Module`` called as ``loss(features, labels)`` with a pure-function twin.
``LOSSES.create(name, **kw)`` builds an auxiliary loss by name.
"""

from __future__ import annotations

from .._registry import Registry
from .center import CenterLoss, center_deltas, center_loss, center_update_
from .contrastive import ContrastiveLoss, contrastive_loss
from .joint import JointLoss, JointOutput
from .triplet import TripletLoss, triplet_loss

LOSSES: Registry = Registry("loss")
LOSSES.register("center")(CenterLoss)
LOSSES.register("contrastive")(ContrastiveLoss)
LOSSES.register("triplet")(TripletLoss)

__all__ = [
    "LOSSES",
    "CenterLoss",
    "ContrastiveLoss",
    "JointLoss",
    "JointOutput",
    "TripletLoss",
    "center_deltas",
    "center_loss",
    "center_update_",
    "contrastive_loss",
    "triplet_loss",
]
