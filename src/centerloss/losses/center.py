"""Center loss (Wen et al., ECCV 2016), exactly as the paper states it.

Notation: a batch of ``B`` features ``x_i`` (width ``d``) with labels ``y_i`` and a table of ``C`` centers.

* Eq. 2, the loss:      L_C = 1/2 * sum_i || x_i - c_{y_i} ||^2
* Eq. 3, its gradient:  dL_C / dx_i = x_i - c_{y_i}
* Eq. 4, the update:    delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j]),
                        c_j <- c_j - alpha * delta_c_j

Everything here works on the gathered rows ``c[y]`` (B, d) and on the classes present in the batch, never on
a B x C distance matrix, so time and extra memory are O(B * d) whatever C is. Distances are taken in float32
as a direct difference ``x - c``, which stays exact when ``x`` and ``c`` are large and close (the expanded
``|x|^2 + |c|^2 - 2 x.c`` form used by popular ports cancels catastrophically there).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._validate import check_batch

Reduction = Literal["mean", "sum", "none"]
UpdateMode = Literal["paper", "learnable"]


def center_loss(features: Tensor, labels: Tensor, centers: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Eq. 2 from the gathered centers ``c[y]``.

    ``reduction="sum"`` is exactly Eq. 2; ``"mean"`` divides by the batch size as caffe-face does;
    ``"none"`` returns the per-sample terms ``1/2 |x_i - c_{y_i}|^2`` (B,). The result is float32 (or
    float64 for float64 inputs) even under autocast, and the gradient w.r.t. ``features`` is Eq. 3.

    >>> c = torch.zeros(3, 2); x = torch.tensor([[3.0, 4.0]]); y = torch.tensor([1])
    >>> center_loss(x, y, c, reduction="sum")
    tensor(12.5000)
    """
    work = torch.promote_types(features.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays fp64
    c_y = centers.index_select(0, labels).to(work)  # (B, d)
    diff = features.to(work) - c_y  # (B, d)
    per_sample = 0.5 * diff.pow(2).sum(dim=1)  # (B,)
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def center_deltas(features: Tensor, labels: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 4's ``delta_c_j`` for the classes present in the batch.

    Returns ``(classes (U,), delta (U, d))`` with ``delta_j = sum_{i: y_i=j} (c_j - x_i) / (1 + n_j)``,
    computed in the centers' dtype (float32 or float64). Classes absent from the batch are not listed and
    so never move. Cost is O(B * d), independent of the number of classes.
    """
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)  # (U,), (B,)
    diff = centers.index_select(0, labels) - features.detach().to(centers.dtype)  # (B, d): c_{y_i} - x_i
    sums = torch.zeros(classes.numel(), centers.shape[1], dtype=centers.dtype, device=centers.device)
    sums.index_add_(0, inverse, diff)  # (U, d)
    counts = torch.bincount(inverse, minlength=classes.numel()).to(centers.dtype)  # (U,)
    return classes, sums / (1.0 + counts).unsqueeze(1)


@torch.no_grad()
def center_update_(centers: Tensor, features: Tensor, labels: Tensor, alpha: float) -> Tensor:
    """Apply Eq. 4 in place: ``c_j <- c_j - alpha * delta_c_j`` for the classes in the batch.

    Returns ``centers``. This is not an SGD step: lambda does not scale it and no optimizer sees it.
    """
    classes, delta = center_deltas(features, labels, centers)
    centers.index_add_(0, classes, delta, alpha=-alpha)
    return centers


def _gather_global_batch(features: Tensor, labels: Tensor, ok: bool) -> tuple[Tensor, Tensor]:
    """All-gather the (variable-size) batches of every rank, in rank order.

    The first collective also exchanges each rank's validity flag, so a bad batch on one rank raises on
    every rank instead of leaving the others blocked in a collective.
    """
    world = dist.get_world_size()
    dev = features.device
    meta = torch.tensor([features.shape[0], int(ok)], dtype=torch.long, device=dev)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    sizes = [int(m[0]) for m in metas]
    bad = [r for r, m in enumerate(metas) if int(m[1]) == 0]
    if bad:
        raise ValueError(f"center loss: invalid input on rank(s) {bad}; no rank moved its centers")
    n_max = max(sizes)
    d = features.shape[1]
    f_pad = features.new_zeros(n_max, d)
    f_pad[: features.shape[0]] = features
    l_pad = labels.new_zeros(n_max)
    l_pad[: labels.shape[0]] = labels
    f_all = [torch.empty_like(f_pad) for _ in range(world)]
    l_all = [torch.empty_like(l_pad) for _ in range(world)]
    dist.all_gather(f_all, f_pad)
    dist.all_gather(l_all, l_pad)
    feats = torch.cat([f[:n] for f, n in zip(f_all, sizes)])  # (sum B_r, d)
    labs = torch.cat([lab[:n] for lab, n in zip(l_all, sizes)])  # (sum B_r,)
    return feats, labs


class CenterLoss(nn.Module):
    """Center loss with the paper's center update (Eq. 2-4), O(B*d) per step for any number of classes.

    Args:
        num_classes: C, the number of classes (rows of the center table).
        feat_dim: d, the feature width.
        alpha: the center learning rate of Eq. 4, in [0, 1] (paper: 0.5).
        update: ``"paper"`` keeps the centers in a float32 buffer moved by Eq. 4 once per training-mode
            forward (no optimizer involved). ``"learnable"`` makes them an ``nn.Parameter`` that your
            optimizer trains from the loss gradient, as the popular ports do; see the note below.
        reduction: ``"mean"`` (divide by batch size, caffe-face), ``"sum"`` (exactly Eq. 2) or ``"none"``.
        init: ``"zeros"`` (the update pulls each center to its class within a few visits) or ``"normal"``
            (N(0, 1/d), roughly caffe-face's Xavier filler).

    Timing (paper mode): the loss and its gradient use the centers *as they were before* this batch; the
    Eq. 4 update then happens inside ``forward`` in training mode. In eval mode the centers never move.

    Mixed precision: fp16/bf16 features (autocast) are compared with the float32 centers in float32.

    DDP: if ``torch.distributed`` is initialised, the update gathers every rank's features and labels and
    every rank applies the identical Eq. 4 step to the global batch, then rank 0's result is broadcast so
    the centers stay bit-identical even where a GPU's scatter-add is not deterministic. Keep this module out
    of ``DistributedDataParallel``'s buffer broadcast (``broadcast_buffers=False`` or do not wrap it): it
    already syncs itself, at O(B*d) instead of O(C*d) per step.

    Learnable mode and alpha: with ``reduction="sum"`` the gradient w.r.t. ``c_j`` is
    ``n_j c_j - sum_{y_i=j} x_i``, so one plain SGD step of rate ``eta`` moves ``c_j`` by
    ``eta * (n_j c_j - sum x_i)`` while Eq. 4 moves it by ``alpha * (n_j c_j - sum x_i) / (1 + n_j)``. They
    agree only if ``eta = alpha / (1 + n_j)`` for every class; with ``reduction="mean"`` the gradient is also
    divided by B, and inside ``L_S + lambda * L_C`` it is multiplied by lambda, which is why ports that use
    this mode move centers 5-100x less than the paper. ``alpha`` is ignored in learnable mode.

    >>> loss_fn = CenterLoss(num_classes=10, feat_dim=2)
    >>> x, y = torch.randn(8, 2, requires_grad=True), torch.randint(0, 10, (8,))
    >>> loss = loss_fn(x, y); loss.backward()
    """

    centers: Tensor

    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 0.5, update: UpdateMode = "paper",
                 reduction: Reduction = "mean", init: Literal["zeros", "normal"] = "zeros") -> None:
        super().__init__()
        if num_classes < 1 or feat_dim < 1:
            raise ValueError(f"num_classes and feat_dim must be >= 1, got {num_classes}, {feat_dim}")
        if not (0.0 <= alpha <= 1.0) or math.isnan(alpha):
            raise ValueError(f"alpha must lie in [0, 1] (Eq. 4), got {alpha}")
        if update not in ("paper", "learnable"):
            raise ValueError(f"update must be 'paper' or 'learnable', got {update!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.alpha = float(alpha)
        self.update = update
        self.reduction: Reduction = reduction
        table = torch.zeros(num_classes, feat_dim, dtype=torch.float32)
        if init == "normal":
            table.normal_(0.0, 1.0 / math.sqrt(feat_dim))
        elif init != "zeros":
            raise ValueError(f"init must be 'zeros' or 'normal', got {init!r}")
        if update == "paper":
            self.register_buffer("centers", table)
        else:
            self.centers = nn.Parameter(table)  # type: ignore[assignment]

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, alpha={self.alpha}, "
                f"update={self.update!r}, reduction={self.reduction!r}")

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Return Eq. 2 for ``features`` (B, d) and ``labels`` (B,); in paper mode and training mode, then
        apply Eq. 4 (the returned loss and its gradient use the pre-update centers)."""
        distributed = self.update == "paper" and self.training and dist.is_available() and dist.is_initialized()
        local_error: Exception | None = None
        try:
            check_batch(features, labels, self.feat_dim, self.num_classes)
            ok = True
        except (TypeError, ValueError) as e:
            if not distributed:
                raise
            ok, local_error = False, e
        if distributed:
            if ok:
                feats, labs = _gather_global_batch(features.detach().to(self.centers.dtype), labels.long(), ok)
            else:  # still take part in the first collective, so every rank raises together
                empty = self.centers.new_zeros(0, self.feat_dim)
                try:
                    _gather_global_batch(empty, torch.zeros(0, dtype=torch.long, device=empty.device), ok)
                except ValueError as e:
                    raise ValueError(f"{e}; this rank: {local_error}") from local_error
        labels = labels.long()
        loss = center_loss(features, labels, self.centers, self.reduction)
        if self.update == "paper" and self.training and self.alpha > 0:
            if distributed:
                classes, delta = center_deltas(feats, labs, self.centers)
                dist.broadcast(delta, src=0)  # make every rank's step bit-identical (see class docstring)
                with torch.no_grad():
                    self.centers.index_add_(0, classes, delta, alpha=-self.alpha)
            else:
                center_update_(self.centers, features, labels, self.alpha)
        return loss
