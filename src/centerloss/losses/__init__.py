"""Losses: center loss (paper, learnable and caffe updates), classification heads, the contrastive and
triplet baselines, and the joint objective of Eq. 5.

Every loss is an ``nn.Module`` called as ``loss(features, labels)``; the center, contrastive and triplet
losses have pure-function twins. Two registries make them swappable from config (``{name, kwargs}``):

* ``HEADS``: features -> logits -> ``L_S`` (``linear`` softmax; margin heads; ``sharded`` for millions of
  classes). ``HEADS.create(name, feat_dim=d, num_classes=C, **kwargs)``.
* ``AUX``: the auxiliary term ``L_aux`` (``center``, ``contrastive``, ``triplet``).
  ``AUX.create(name, feat_dim=d, num_classes=C, **kwargs)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._registry import Registry
from .center import CenterLoss, center_deltas, center_loss, center_step, center_update_
from .contrastive import ContrastiveLoss, contrastive_loss
from .heads import HEADS, HeadOutput, LinearHead, register_head
from .joint import JointLoss, JointOutput
from .margins import ArcFaceHead, CosFaceHead, NormFaceHead, SphereFaceHead  # registers the margin heads
from .triplet import TripletLoss, triplet_loss

AUX: Registry[nn.Module] = Registry("aux loss")


@AUX.register("center")
def _center(feat_dim: int, num_classes: int, **kwargs: Any) -> CenterLoss:
    return CenterLoss(num_classes, feat_dim, **kwargs)


@AUX.register("contrastive")
def _contrastive(feat_dim: int, num_classes: int, **kwargs: Any) -> ContrastiveLoss:
    return ContrastiveLoss(**kwargs)


@AUX.register("triplet")
def _triplet(feat_dim: int, num_classes: int, **kwargs: Any) -> TripletLoss:
    return TripletLoss(**kwargs)


__all__ = [
    "AUX",
    "ArcFaceHead",
    "HEADS",
    "CenterLoss",
    "ContrastiveLoss",
    "CosFaceHead",
    "HeadOutput",
    "JointLoss",
    "JointOutput",
    "LinearHead",
    "NormFaceHead",
    "SphereFaceHead",
    "TripletLoss",
    "center_deltas",
    "center_loss",
    "center_step",
    "center_update_",
    "contrastive_loss",
    "register_head",
    "triplet_loss",
]
