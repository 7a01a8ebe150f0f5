"""Losses: center loss (paper, learnable and caffe updates), classification heads, the contrastive and
triplet baselines, and the joint objective of Eq. 5.

Every loss is an ``nn.Module`` called as ``loss(features, labels)``; the center, contrastive and triplet
losses have pure-function twins. Two registries make them swappable from config (``{name, kwargs}``):

* ``HEADS``: features -> logits -> ``L_S`` (``linear`` softmax; ``normface``, ``cosface``, ``arcface``,
  ``sphereface``; ``sharded`` for millions of classes, which also shards the centers).
  ``HEADS.create(name, feat_dim=d, num_classes=C, **kwargs)``.
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
from .sharded import ShardedJointLoss, class_split
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


@HEADS.register("sharded")
def _sharded(feat_dim: int, num_classes: int, aux: Any = None, sample_rate: float = 1.0, bias: bool = False,
             seed: int = 0) -> ShardedJointLoss:
    """The sharded softmax head (:class:`ShardedJointLoss`) for millions of classes. It builds the whole
    objective: its centers are sharded like its classifier rows, so ``aux`` must be ``none`` or ``center``
    (whose ``lam`` and ``alpha`` it takes)."""
    name = getattr(aux, "name", "none")
    if name not in ("none", "center"):
        raise ValueError(f"the sharded head shards the center loss only; aux {name!r} is not supported with it")
    akw = dict(getattr(aux, "kwargs", {}) or {})
    unsupported = {k: v for k, v in akw.items() if k != "alpha" and (k, v) not in {("update", "paper"),
                                                                                 ("reduction", "mean")}}
    if unsupported:
        raise ValueError(f"the sharded head implements the paper's update with reduction 'mean' only; "
                         f"got aux.kwargs {unsupported}")
    return ShardedJointLoss(feat_dim, num_classes, lam=aux.lam if name == "center" else 0.0,
                            alpha=akw.get("alpha", 0.5), sample_rate=sample_rate, bias=bias, seed=seed)


_sharded.takes_aux = True  # type: ignore[attr-defined]

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
    "ShardedJointLoss",
    "SphereFaceHead",
    "TripletLoss",
    "center_deltas",
    "class_split",
    "center_loss",
    "center_step",
    "center_update_",
    "contrastive_loss",
    "register_head",
    "triplet_loss",
]
