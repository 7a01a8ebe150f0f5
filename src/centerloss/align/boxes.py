"""Box arithmetic for the MTCNN cascade, in torch (no torchvision).

Boxes are ``(N, 4)`` float tensors ``x1, y1, x2, y2`` in *edge* coordinates: a box that covers exactly the
pixels with column index ``a..b`` has ``x1 = a``, ``x2 = b + 1``, so its width is ``x2 - x1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pairwise_iou", "nms", "batched_nms", "nms_reference", "to_square", "apply_regression"]

# Above this many boxes the (N, N) overlap matrix gets large; switch to the O(K*N) sequential scan.
_MATRIX_NMS_MAX = 3000


def pairwise_iou(a: Tensor, b: Tensor, mode: str = "union") -> Tensor:
    """Overlap of every box in ``a`` (N, 4) with every box in ``b`` (M, 4) -> (N, M).

    ``mode="union"``: intersection / union (IoU). ``mode="min"``: intersection / smaller area, which MTCNN's
    last stage uses so that a small box nested in a big one is removed.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)  # (N,)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # (M,)
    iw = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = iw * ih  # (N, M)
    if mode == "union":
        denom = area_a[:, None] + area_b[None, :] - inter
    else:
        denom = torch.minimum(area_a[:, None], area_b[None, :])
    return inter / denom.clamp(min=1e-12)


def nms(boxes: Tensor, scores: Tensor, threshold: float, mode: str = "union") -> Tensor:
    """Greedy non-maximum suppression -> indices of the kept boxes, highest score first.

    Exactly the classic greedy rule (visit boxes by descending score, stable for ties; drop any box whose
    overlap with an already kept box is ``> threshold``), but vectorised: with ``over[j, i]`` = "j precedes i
    and overlaps it", the kept set is the unique fixed point of ``keep_i = not any_j(keep_j and over[j, i])``.
    Iterating from "keep all" fixes at least one more leading box per round, and in practice converges in a
    handful of (N, N) boolean reductions instead of N Python steps.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    order = torch.sort(scores, descending=True, stable=True).indices
    if n > _MATRIX_NMS_MAX:
        return _nms_sequential(boxes, order, threshold, mode)
    b = boxes[order]
    over = torch.triu(pairwise_iou(b, b, mode) > threshold, diagonal=1)  # (N, N), j < i
    keep = torch.ones(n, dtype=torch.bool)
    for _ in range(n):
        new = ~(over & keep[:, None]).any(dim=0)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, threshold: float, mode: str = "union") -> Tensor:
    """:func:`nms` run independently within each group id (e.g. per image and pyramid scale), in one call.

    Each group is shifted far enough along both axes that boxes of different groups never overlap.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long)
    b = boxes.double()
    span = float(b.max() - b.min()) + 1.0
    shift = (groups.double() * span)[:, None]  # (N, 1)
    return nms(b + shift, scores, threshold, mode)


def _nms_sequential(boxes: Tensor, order: Tensor, threshold: float, mode: str) -> Tensor:
    """Greedy NMS by the textbook loop over kept boxes; memory O(N) for very many candidates."""
    kept = []
    remaining = order
    while remaining.numel() > 0:
        i = remaining[0]
        kept.append(i)
        if remaining.numel() == 1:
            break
        ov = pairwise_iou(boxes[i][None], boxes[remaining[1:]], mode)[0]
        remaining = remaining[1:][ov <= threshold]
    return torch.stack(kept)


def nms_reference(boxes: Tensor, scores: Tensor, threshold: float, mode: str = "union") -> list[int]:
    """Slow, obvious greedy NMS (pure Python loops), used by the tests as the reference."""
    idx = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # sorted() is stable
    kept: list[int] = []
    for i in idx:
        ok = True
        for k in kept:
            if float(pairwise_iou(boxes[k][None], boxes[i][None], mode)[0, 0]) > threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def to_square(boxes: Tensor) -> Tensor:
    """Grow each box to a square of side max(w, h) about the same centre (MTCNN's ``rerec``)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    cx = boxes[:, 0] + 0.5 * w
    cy = boxes[:, 1] + 0.5 * h
    return torch.stack([cx - 0.5 * side, cy - 0.5 * side, cx + 0.5 * side, cy + 0.5 * side], dim=1)


def apply_regression(boxes: Tensor, reg: Tensor) -> Tensor:
    """Shift each edge by the predicted fraction of the box size: (N, 4) boxes, (N, 4) dx1, dy1, dx2, dy2."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes + reg * torch.stack([w, h, w, h], dim=1)
