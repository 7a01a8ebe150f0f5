"""Center loss (Wen et al., ECCV 2016), exactly as the paper states it.

Notation: a batch of ``B`` features ``x_i`` (width ``d``) with labels ``y_i`` and a table of ``C`` centers.

* Eq. 2, the loss:      L_C = 1/2 * sum_i || x_i - c_{y_i} ||^2
* Eq. 3, its gradient:  dL_C / dx_i = x_i - c_{y_i}
* Eq. 4, the update:    delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j]),
                        c_j <- c_j - alpha * delta_c_j

Everything here works on the gathered rows ``c[y]`` (B, d) and on the classes present in the batch, never on
a B x C distance matrix, so time and extra memory are O(B * d) whatever C is (the batch's class counts come
from a B x B comparison, so the update needs neither an O(C) buffer nor a ``torch.unique``, which would
stall a GPU pipeline on a device-to-host sync). Distances are taken in float32
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
UpdateMode = Literal["paper", "learnable", "caffe"]
UPDATE_MODES = ("paper", "learnable", "caffe")


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


def center_step(features: Tensor, labels: Tensor, centers: Tensor, fold: bool = False) -> Tensor:
    """Each sample's share of Eq. 4: ``(c_{y_i} - x_i) / (1 + n_{y_i})`` (B, d), in the centers' dtype.

    Summing the rows of one class gives that class's ``delta_c_j``; :func:`center_update_` does this with an
    ``index_add_``. ``n_{y_i}`` is counted by comparing the labels with each other (B x B booleans), so
    nothing here depends on C or needs the host to know which classes are present.

    ``fold=True`` instead puts each class's whole ``delta_c_j`` on the row of its first sample and zeros on
    the others (a B x B x d product), so that adding the rows in any order gives the same bits: the DDP path
    uses it to keep every rank's centers bit-identical even where a GPU's ``index_add_`` is not
    deterministic.
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)  # (B, B)
    counts = same.sum(dim=1).to(centers.dtype)  # (B,) n_{y_i}
    diff = centers.index_select(0, labels) - features.detach().to(centers.dtype)  # (B, d): c_{y_i} - x_i
    if fold:
        first = ~torch.tril(same, diagonal=-1).any(dim=1)  # (B,) i is the first sample of its class
        diff = (same.to(centers.dtype) @ diff) * first.unsqueeze(1).to(centers.dtype)
    return diff / (1.0 + counts).unsqueeze(1)


@torch.no_grad()
def center_update_(centers: Tensor, features: Tensor, labels: Tensor, alpha: float,
                   enabled: Tensor | None = None) -> Tensor:
    """Apply Eq. 4 in place: ``c_j <- c_j - alpha * delta_c_j`` for the classes in the batch.

    ``enabled`` (a 0-dim bool tensor) makes the update conditional on the device, without a host sync: the
    engine passes "the features are finite", so a NaN batch never moves a center. Returns ``centers``.
    This is not an SGD step: lambda does not scale it and no optimizer sees it.
    """
    share = center_step(features, labels, centers)
    if enabled is not None:
        share = torch.where(enabled, share, torch.zeros_like(share))
    centers.index_add_(0, labels, share, alpha=-alpha)
    return centers


class _CaffeCenterGradient(torch.autograd.Function):
    """Identity on the loss; in backward the centers receive Eq. 4's delta *without* alpha, as their gradient.

    This is what caffe-face's ``CenterLossLayer::Backward`` writes into the centers' diff: neither the loss
    weight (lambda) nor the incoming gradient scales it. The solver then applies lr, momentum and weight decay.
    """

    @staticmethod
    def forward(ctx, loss: Tensor, centers: Tensor, share: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(share, labels)
        ctx.shape = centers.shape
        return loss.view_as(loss)

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        share, labels = ctx.saved_tensors
        grad_c = share.new_zeros(ctx.shape).index_add_(0, labels, share)  # (C, d), absent classes: 0
        return grad_loss, grad_c, None, None


def _gather_global_batch(features: Tensor, labels: Tensor, ok: bool) -> tuple[Tensor, Tensor]:
    """All-gather the (variable-size) batches of every rank, in rank order.

    The first collective also exchanges each rank's validity flag, so a bad batch on one rank raises on
    every rank instead of leaving the others blocked in a collective. (This reads the sizes on the host;
    :func:`_gather_equal_batches` is the sync-free path for equal batches.)
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


def _gather_equal_batches(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """All-gather batches that have the same size on every rank (the engine's case): no host sync."""
    world = dist.get_world_size()
    feats = features.new_empty(world * features.shape[0], features.shape[1])
    labs = labels.new_empty(world * labels.shape[0])
    dist.all_gather_into_tensor(feats, features.contiguous())
    dist.all_gather_into_tensor(labs, labels.contiguous())
    return feats, labs


class CenterLoss(nn.Module):
    """Center loss (Eq. 2) with a choice of center update, O(B*d) per step for any number of classes.

    Args:
        num_classes: C, the number of classes (rows of the center table).
        feat_dim: d, the feature width.
        alpha: the center learning rate of Eq. 4, in [0, 1] (paper: 0.5). Used by ``update="paper"`` only.
        update: how the centers move (docs/METHOD.md, "Which update rule?"):

            * ``"paper"``: a float32 buffer moved by Eq. 4 with rate ``alpha`` once per training-mode forward,
              after the loss was taken with the old centers. No optimizer is involved; lambda does not scale it.
            * ``"learnable"``: an ``nn.Parameter`` trained by your optimizer from the loss gradient
              (``lambda * (c_j - x_i)`` per sample), as the popular ports do; see the note below.
            * ``"caffe"``: what caffe-face, the reference code, really does. The centers are a parameter; the
              forward pass leaves them alone, and after backward their gradient is Eq. 4's
              ``sum_{y_i=j} (c_j - x_i) / (1 + n_j)`` -- without alpha, and not scaled by lambda. The solver
              then applies lr (lr_mult 1), momentum and weight decay x 2 (decay_mult 2), so in effect alpha
              follows the learning-rate schedule. The engine builds that optimizer group from
              :attr:`optim_overrides`. Not compatible with fp16 loss scaling (the gradient ignores the scale).
        reduction: ``"mean"`` (divide by batch size, caffe-face), ``"sum"`` (exactly Eq. 2) or ``"none"``.
        init: ``"zeros"`` (the update pulls each center to its class within a few visits) or ``"normal"``
            (N(0, 1/d), roughly caffe-face's Xavier filler).
        validate: check every batch's values (label range, NaN/Inf) before anything moves, at the cost of one
            device-to-host sync per call. The training engine turns it off: it checks the labels once per
            dataset, and a non-finite batch then leaves the centers untouched on the device (the engine's
            guard stops the run at its next log step).

    Mixed precision: fp16/bf16 features (autocast) are compared with the float32 centers in float32.

    DDP (paper mode): if ``torch.distributed`` is initialised, the update gathers every rank's features and
    labels and every rank applies the identical Eq. 4 step to the global batch, then rank 0's result is
    broadcast so the centers stay bit-identical even where a GPU's scatter-add is not deterministic. Keep this
    module out of ``DistributedDataParallel``'s buffer broadcast (``broadcast_buffers=False``): it already
    syncs itself, at O(B*d) instead of O(C*d) per step. In learnable and caffe mode the centers are ordinary
    parameters whose gradients DDP averages, as caffe's multi-GPU solver does.

    Learnable mode and alpha: with ``reduction="sum"`` the gradient w.r.t. ``c_j`` is
    ``n_j c_j - sum_{y_i=j} x_i``, so one plain SGD step of rate ``eta`` moves ``c_j`` by
    ``eta * (n_j c_j - sum x_i)`` while Eq. 4 moves it by ``alpha * (n_j c_j - sum x_i) / (1 + n_j)``. They
    agree only if ``eta = alpha / (1 + n_j)`` for every class; with ``reduction="mean"`` the gradient is also
    divided by B, and inside ``L_S + lambda * L_C`` it is multiplied by lambda, which is why ports that use
    this mode move centers 5-100x less than the paper.

    >>> loss_fn = CenterLoss(num_classes=10, feat_dim=2)
    >>> x, y = torch.randn(8, 2, requires_grad=True), torch.randint(0, 10, (8,))
    >>> loss = loss_fn(x, y); loss.backward()
    """

    centers: Tensor

    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 0.5, update: UpdateMode = "paper",
                 reduction: Reduction = "mean", init: Literal["zeros", "normal"] = "zeros",
                 validate: bool = True) -> None:
        super().__init__()
        if num_classes < 1 or feat_dim < 1:
            raise ValueError(f"num_classes and feat_dim must be >= 1, got {num_classes}, {feat_dim}")
        if not (0.0 <= alpha <= 1.0) or math.isnan(alpha):
            raise ValueError(f"alpha must lie in [0, 1] (Eq. 4), got {alpha}")
        if update not in UPDATE_MODES:
            raise ValueError(f"update must be one of {UPDATE_MODES}, got {update!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if init not in ("zeros", "normal"):
            raise ValueError(f"init must be 'zeros' or 'normal', got {init!r}")
        self.num_classes, self.feat_dim = num_classes, feat_dim
        self.alpha, self.update, self.reduction = float(alpha), update, reduction
        self.validate = validate
        table = torch.zeros(num_classes, feat_dim, dtype=torch.float32)
        if init == "normal":
            table.normal_(0.0, 1.0 / math.sqrt(feat_dim))
        if update == "paper":
            self.register_buffer("centers", table)
        else:
            self.centers = nn.Parameter(table)  # type: ignore[assignment]

    @property
    def optim_overrides(self) -> dict[str, float] | None:
        """How the engine's optimizer treats :attr:`centers` (multipliers of the base lr and weight decay):
        learnable centers get no weight decay; caffe's get lr_mult 1 and decay_mult 2, as in caffe-face's
        prototxt. None in paper mode (a buffer no optimizer sees)."""
        return {"paper": None, "learnable": {"lr_mult": 1.0, "decay_mult": 0.0},
                "caffe": {"lr_mult": 1.0, "decay_mult": 2.0}}[self.update]

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, alpha={self.alpha}, "
                f"update={self.update!r}, reduction={self.reduction!r}")

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Return Eq. 2 for ``features`` (B, d) and ``labels`` (B,); then, in paper mode and training mode,
        apply Eq. 4 (the returned loss and its gradient use the pre-update centers)."""
        moves = self.update == "paper" and self.training and self.alpha > 0
        distributed = moves and dist.is_available() and dist.is_initialized()
        if self.validate:
            feats, labs = self._checked_global_batch(features, labels, distributed)
        else:
            check_batch(features, labels, self.feat_dim, values=False)
            labs = labels.long()
            feats = features.detach().to(self.centers.dtype)
            if distributed:
                feats, labs = _gather_equal_batches(feats, labs)
        labels = labels.long()
        if self.update == "caffe":
            loss = center_loss(features, labels, self.centers.detach(), self.reduction)
            if self.training and torch.is_grad_enabled():
                share = center_step(features, labels, self.centers.detach())
                loss = _CaffeCenterGradient.apply(loss, self.centers, share, labels)
            return loss
        loss = center_loss(features, labels, self.centers, self.reduction)
        if moves:
            ok = None if self.validate else torch.isfinite(feats).all()
            if distributed:
                share = center_step(feats, labs, self.centers, fold=True)
                if ok is not None:
                    share = torch.where(ok, share, torch.zeros_like(share))
                dist.broadcast(share, src=0)  # make every rank's step bit-identical (see class docstring)
                with torch.no_grad():
                    self.centers.index_add_(0, labs, share, alpha=-self.alpha)
            else:
                center_update_(self.centers, feats, labs, self.alpha, enabled=ok)
        return loss

    def _checked_global_batch(self, features: Tensor, labels: Tensor, distributed: bool) -> tuple[Tensor, Tensor]:
        """Validate (one host sync) and, under DDP, gather; a bad batch on any rank raises on every rank."""
        try:
            check_batch(features, labels, self.feat_dim, self.num_classes)
            ok, local_error = True, None
        except (TypeError, ValueError) as e:
            if not distributed:
                raise
            ok, local_error = False, e
        if not distributed:
            return features.detach().to(self.centers.dtype), labels.long()
        if ok:
            return _gather_global_batch(features.detach().to(self.centers.dtype), labels.long(), ok)
        empty = self.centers.new_zeros(0, self.feat_dim)  # still take part, so that every rank raises together
        try:
            _gather_global_batch(empty, torch.zeros(0, dtype=torch.long, device=empty.device), ok)
        except ValueError as e:
            raise ValueError(f"{e}; this rank: {local_error}") from local_error
        raise AssertionError("unreachable")  # pragma: no cover
