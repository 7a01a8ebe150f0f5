"""Classification heads: features -> logits -> the classification loss of Eq. 5 (``L_S``).

A head owns its class weights (the classifier rows; networks end at the feature layer) and is called as
``head(features, labels) -> HeadOutput``. :class:`~centerloss.losses.JointLoss` adds the auxiliary term.
``HEADS.create(name, feat_dim=d, num_classes=C, **kwargs)`` builds one by name; the engine does this from
the config's ``head: {name, kwargs}``.

Adding a head: write a module with this call shape in one file, decorate its class (or factory) with
``@register_head("name")``, and import the file in :mod:`centerloss.losses`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import Registry

__all__ = ["HEADS", "HeadOutput", "LinearHead", "register_head"]

HEADS: Registry[nn.Module] = Registry("head")


def register_head(name: str):
    """Decorator: ``@register_head("cosface")`` on a head class (or a factory returning one)."""
    return HEADS.register(name)


class HeadOutput(NamedTuple):
    loss: Tensor  # () float32: the classification loss, mean over the batch
    logits: Tensor | None  # (B, C) plain class scores (no margin), what prediction uses; None if not formed
    accuracy: Tensor  # () float32: fraction of the batch whose top score is its own class


def top1(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose argmax is the label, as a 0-dim float tensor (no host sync)."""
    return (logits.argmax(dim=1) == labels).float().mean()


@register_head("linear")
class LinearHead(nn.Module):
    """Softmax loss of Eq. 5: ``L_S = -log softmax(W x + b)_y`` (the paper's and models A/B/C's head).

    Args:
        feat_dim: d.
        num_classes: C.
        bias: whether the classifier has a bias (caffe-face's LeNets++ classifier has none).
        init: ``"linear"`` draws like ``nn.Linear(d, C)`` from torch's global generator (the same values);
            ``"blocks"`` draws the same distribution the way the sharded head does
            (:func:`centerloss.losses.sharded.init_rows` with ``seed``), so that a dense run starts exactly
            where a sharded run of the same seed starts -- what comparing the two needs.
        seed: the seed of ``init="blocks"`` (the engine passes the run's seed).

    The cross-entropy is taken in float32 even when autocast made the logits bf16/fp16.
    """

    def __init__(self, feat_dim: int, num_classes: int, bias: bool = True, init: str = "linear",
                 seed: int = 0) -> None:
        super().__init__()
        if feat_dim < 1 or num_classes < 1:
            raise ValueError(f"feat_dim and num_classes must be >= 1, got {feat_dim}, {num_classes}")
        if init not in ("linear", "blocks"):
            raise ValueError(f"init must be 'linear' or 'blocks', got {init!r}")
        self.feat_dim, self.num_classes = feat_dim, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, feat_dim))  # (C, d)
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        with torch.no_grad():
            if init == "blocks":
                from .sharded import init_rows

                w, b = init_rows(0, num_classes, feat_dim, seed=seed, bias=bias)
                self.weight.copy_(w)
                if self.bias is not None:
                    self.bias.copy_(b)
            else:  # nn.Linear's initialisation, the same draws
                nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
                if self.bias is not None:
                    nn.init.uniform_(self.bias, -1.0 / math.sqrt(feat_dim), 1.0 / math.sqrt(feat_dim))

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, bias={self.bias is not None}"

    def forward(self, features: Tensor, labels: Tensor) -> HeadOutput:
        logits = F.linear(features, self.weight, self.bias)  # (B, C)
        loss = F.cross_entropy(logits.float(), labels)
        return HeadOutput(loss, logits, top1(logits.detach(), labels))
