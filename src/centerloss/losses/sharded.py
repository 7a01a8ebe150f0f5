"""Softmax + center loss for millions of identities: classifier rows and centers sharded over ranks.

The dense objective of Eq. 5, ``L = L_S + lambda * L_C`` with the softmax head of ``LinearHead`` and the
center loss of Eq. 2 (mean over the batch) updated by Eq. 4, replicates a (C, d) classifier, its gradient,
its momentum and a (C, d) center table on every GPU and all-reduces the whole (C, d) gradient every step.
At C = 10M, d = 512 that is 20 GB of state per GPU and 20 GB on the wire per step. Here (after Partial FC,
An et al. 2021, InsightFace's ``partial_fc_v2``) rank r of W owns the classes ``[lo, hi)`` of
:func:`class_split` and only their rows; what crosses the network is the (N, d) global batch of features
(N = sum of the ranks' batches) and a few (N,) statistics, independent of C. docs/METHOD.md has the method.

One step on every rank (collectives in brackets, the same order on every rank):

1. [all-gather] the features and labels of every rank -> ``x`` (N, d), ``y`` (N,), in rank order.
2. local logits ``x W_r^T`` (N, k) for the local rows (or the k sampled ones, Partial FC).
3. [all-reduce max, all-reduce sum] the exact softmax of Eq. 5 over all C (or all sampled) classes: each
   row's global max, its global sum of ``exp(z - max)`` and its target logit, which only the owner of the
   class contributes. The statistics are float32 also when autocast made the logits bf16/fp16.
4. Eq. 2 for each sample by the rank that owns its class; [all-reduce] of the partial sums.
5. backward: the gradient of the local logits is ``(softmax - onehot) / N`` (no collective); the gradient
   reaching ``x`` is each rank's partial one, summed over ranks by [reduce-scatter] in the all-gather's
   backward, which hands each rank the rows of its own samples.
6. Eq. 4 by each owner on its own rows only, after the loss used the old centers (training mode only).

The factor W in the all-gather's backward: every rank computes the same global loss ``L`` (a mean over N)
and back-props it, and the reduce-scatter gives rank r exactly ``dL/dx_i`` for its own samples. Its
backbone therefore gets ``dL/dtheta`` restricted to its own samples; DistributedDataParallel then *averages*
those over the W ranks, which would give ``(1/W) dL/dtheta``. Multiplying the gathered gradient by W (as
Partial FC does) makes the backbone's gradient after DDP's averaging equal to the gradient of the dense
objective computed in one process on the concatenated global batch. (``x.grad`` on a rank is therefore W
times the dense ``dL/dx_i``; the classifier rows and centers never go through DDP and get the dense values.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import check_batch
from .joint import JointOutput

__all__ = ["ShardedJointLoss", "class_split", "init_rows"]

INIT_BLOCK = 1024  # rows per independently seeded block of the classifier's initialisation
_MASK64 = (1 << 64) - 1


def class_split(num_classes: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous class ranges ``[(lo, hi), ...]`` of ``world_size`` ranks, in rank order; the first
    ``num_classes % world_size`` ranks get one class more. Every rank gets at least one class.

    >>> class_split(11, 3)
    [(0, 4), (4, 8), (8, 11)]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if num_classes < world_size:
        raise ValueError(f"num_classes ({num_classes}) must be >= the number of ranks ({world_size}): "
                         "every rank needs at least one class")
    base, extra = divmod(num_classes, world_size)
    bounds = [0]
    for r in range(world_size):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return list(zip(bounds[:-1], bounds[1:]))


def _mix(*words: int) -> int:
    """A 63-bit seed from a tuple of integers (splitmix64 over the words): independent streams per tuple."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = (h ^ (w & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def init_rows(lo: int, hi: int, feat_dim: int, seed: int = 0, bias: bool = False) -> tuple[Tensor, Tensor | None]:
    """Rows ``[lo, hi)`` of the (C, d) classifier initialisation, and of its bias; O((hi - lo) * d) work.

    The distribution is nn.Linear's (and ``LinearHead``'s): ``U(-1/sqrt(d), 1/sqrt(d))`` for weights and
    bias. The draws differ: block ``j`` of :data:`INIT_BLOCK` rows comes from its own generator seeded by
    ``(seed, j)`` (weights, then bias), so a rank draws only its own rows, the full matrix is the same for
    every world size (and does not depend on C beyond its length), and torch's global RNG is not touched.
    Reproducing nn.Linear's own draws would cost every rank O(C * d) generator steps (minutes at 100M
    classes), because the CPU generator cannot skip ahead.
    """
    if not 0 <= lo < hi or feat_dim < 1:
        raise ValueError(f"need 0 <= lo < hi and feat_dim >= 1, got lo={lo}, hi={hi}, feat_dim={feat_dim}")
    bound = 1.0 / math.sqrt(feat_dim)
    weight = torch.empty(hi - lo, feat_dim)  # (n, d)
    b = torch.empty(hi - lo) if bias else None  # (n,)
    block_w = torch.empty(INIT_BLOCK, feat_dim)
    block_b = torch.empty(INIT_BLOCK)
    for j in range(lo // INIT_BLOCK, (hi - 1) // INIT_BLOCK + 1):
        g = torch.Generator().manual_seed(_mix(seed, 0, j))
        block_w.uniform_(-bound, bound, generator=g)
        start, stop = max(lo, j * INIT_BLOCK), min(hi, (j + 1) * INIT_BLOCK)
        weight[start - lo: stop - lo] = block_w[start - j * INIT_BLOCK: stop - j * INIT_BLOCK]
        if b is not None:
            block_b.uniform_(-bound, bound, generator=g)
            b[start - lo: stop - lo] = block_b[start - j * INIT_BLOCK: stop - j * INIT_BLOCK]
    return weight, b


# ---------------------------------------------------------------- collectives (looked up at call time)


def _gather_into(out: Tensor, x: Tensor, group: Any) -> None:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, x.contiguous(), group=group)


def _reduce_scatter_into(out: Tensor, x: Tensor, group: Any) -> None:
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, x.contiguous(), group=group)


def _rows_index(sizes: Sequence[int], device: torch.device) -> Tensor:
    """Positions of the real rows in the padded (W * n_max) gather of batches of ``sizes`` rows."""
    n_max = max(sizes)
    return torch.cat([torch.arange(r * n_max, r * n_max + s, device=device) for r, s in enumerate(sizes)])


def _gather_rows(x: Tensor, world: int, group: Any, sizes: Sequence[int] | None) -> Tensor:
    """All-gather ``x`` (b_r, ...) of every rank into (sum b_r, ...), in rank order (no autograd).

    ``sizes=None`` means every rank has the same b (no host sync); otherwise the batches are padded to the
    largest one and the padding is dropped again.
    """
    if sizes is None:
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        _gather_into(out, x, group)
        return out
    n_max = max(sizes)
    pad = x.new_zeros((n_max, *x.shape[1:]))
    pad[: x.shape[0]] = x
    out = x.new_empty((world * n_max, *x.shape[1:]))
    _gather_into(out, pad, group)
    return out.index_select(0, _rows_index(sizes, x.device))


class _AllGatherRows(torch.autograd.Function):
    """All-gather whose backward reduce-scatters: rank r gets ``W * sum_over_ranks(grad)`` of its own rows.

    The factor W undoes DistributedDataParallel's averaging of the backbone's gradients (module docstring).
    """

    @staticmethod
    def forward(ctx, x: Tensor, world: int, group: Any, sizes: tuple[int, ...] | None) -> Tensor:  # type: ignore[override]
        ctx.world, ctx.group, ctx.sizes, ctx.b = world, group, sizes, x.shape[0]
        return _gather_rows(x, world, group, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous()  # (N, d)
        if ctx.sizes is not None:  # back into the padded layout of the forward gather
            n_max = max(ctx.sizes)
            padded = grad.new_zeros((ctx.world * n_max, *grad.shape[1:]))
            grad = padded.index_copy_(0, _rows_index(ctx.sizes, grad.device), grad)
        out = grad.new_empty((grad.shape[0] // ctx.world, *grad.shape[1:]))
        _reduce_scatter_into(out, grad, ctx.group)
        return out[: ctx.b].mul_(ctx.world), None, None, None


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) of a rank's partial loss; backward passes the gradient through unchanged.

    Every rank back-props the same global loss, so rank r owes only the gradient of its own partial term;
    the reduce-scatter of :class:`_AllGatherRows` then adds the ranks' contributions to each sample.
    """

    @staticmethod
    def forward(ctx, partial: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        total = partial.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Eq. 5's softmax loss, mean over the N rows, when each rank holds only some columns of the logits.

    Inputs: this rank's logits (N, k), each row's target column ``target`` (N,) among them and ``owned``
    (N,), whether this rank holds that column at all. Returns ``(loss, accuracy)``, both 0-dim and identical
    on every rank, float32 (float64 for float64 logits) also under autocast. The gradient w.r.t. the local
    logits is ``(softmax - onehot) / N``: no collective in backward. (Writing it into the saved softmax in
    place, as Partial FC does, would save one (N, k) buffer in backward but forbid ``retain_graph`` and
    gradcheck; the forward's peak already holds two such buffers, so the peak barely changes.)
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, owned: Tensor, world: int,  # type: ignore[override]
                group: Any) -> tuple[Tensor, Tensor]:
        with torch.autocast(logits.device.type, enabled=False):
            z = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (N, k) fp32 also under autocast
            m = z.max(dim=1).values  # (N,)
            if world > 1:
                dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
            e = (z - m.unsqueeze(1)).exp_()  # (N, k), <= 1
            t = torch.where(owned, z.gather(1, target.unsqueeze(1)).squeeze(1), torch.zeros_like(m))  # (N,)
            stats = torch.stack([e.sum(dim=1), t], dim=1)  # (N, 2)
            if world > 1:
                dist.all_reduce(stats, group=group)
            s, t = stats.unbind(1)
            loss = (s.log() + m - t).mean()  # -log softmax_y, averaged over the global batch
            accuracy = (t >= m).to(z.dtype).mean()  # the target logit is the global max
            softmax = e.div_(s.unsqueeze(1))  # (N, k)
        ctx.save_for_backward(softmax, target, owned)
        ctx.dtype = logits.dtype
        ctx.mark_non_differentiable(accuracy)
        return loss, accuracy

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_acc: Tensor):  # type: ignore[override]
        p, target, owned = ctx.saved_tensors
        scale = grad_loss.to(p.dtype) / p.shape[0]  # () d(mean)/d(row)
        grad = p * scale  # (N, k)
        onehot = torch.where(owned, -scale, torch.zeros_like(scale)).unsqueeze(1)  # (N, 1)
        grad.scatter_add_(1, target.unsqueeze(1), onehot)
        return grad.to(ctx.dtype), None, None, None, None


# ---------------------------------------------------------------- the module


class _Rows(nn.Module):
    """The local rows of the classifier: ``weight`` (n, d) and optional ``bias`` (n,)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None


class ShardedJointLoss(nn.Module):
    """``L = L_S + lambda * L_C`` (Eq. 5) with the classifier rows and centers sharded over ranks.

    The sharded twin of ``JointLoss(d, C, aux=CenterLoss(C, d, alpha), lam=lam, bias=bias)`` (model A when
    ``lam = 0``: the centers still track the classes, as in JointLoss): with ``sample_rate = 1`` its loss,
    the classifier rows' gradients and the centers equal the dense objective on the concatenated global
    batch, and a world of one is the dense objective. The module docstring lists the collectives.

    Args:
        feat_dim: d.
        num_classes: C, split over the ranks of ``group`` by :func:`class_split`.
        lam: lambda of Eq. 5 (0: softmax only, the centers still move).
        alpha: Eq. 4's center rate in [0, 1]; 0 keeps the centers fixed.
        sample_rate: Partial FC. Below 1, each training step this rank keeps every class of the global batch
            it owns plus uniformly random negatives, ``k = min(n, max(ceil(sample_rate * n), N))`` rows of its
            n (N: global batch size, an upper bound on the positives, so k never depends on the labels and
            no shape needs a host sync; it equals ``max(ceil(sample_rate * n), #positives)`` whenever
            ``ceil(sample_rate * n) >= N``, e.g. n = 125k, N = 2048; with many ranks and few classes each,
            e.g. 64 x 256 samples over 31k rows per rank, k is N rather than r * n). The softmax is over the sampled
            classes; the other rows are not read and get an exactly zero gradient (an optimizer with
            momentum or weight decay may still move them). The sample depends only on (seed, step, rank).
            Evaluation mode uses every class.
        bias: classifier bias (the default: none, like caffe-face's).
        group: the process group (default: the world; a world of one without torch.distributed).
        seed: seeds the classifier's initialisation (:func:`init_rows`; torch's global RNG is not used) and
            the sampling.
        validate: check every batch (label range, NaN/Inf, shapes) with one host sync, on every rank
            together so that a bad batch on one rank raises on all; per-rank batches may differ in size. The
            engine's ``validate=False`` has no host sync in forward: batches must have the same size on every
            rank, and a non-finite global batch leaves the centers untouched (on the device).

    State: ``classifier.weight`` (n, d), ``classifier.bias`` (n,), ``centers`` (n, d) float32 (zeros, as
    CenterLoss's default) hold the rows ``class_range = (lo, hi)``; ``step`` (int64, 0-dim, the same on every
    rank) counts training forwards and keys the sampling, so a resumed run samples exactly as it would have.

    Keep this module out of DistributedDataParallel (its rows differ per rank; ``sharded = True`` tells the
    engine); wrap only the backbone. Every rank must call forward and backward (they hold collectives).

    >>> loss_fn = ShardedJointLoss(feat_dim=8, num_classes=100, lam=0.01)   # world of one
    >>> out = loss_fn(torch.randn(4, 8, requires_grad=True), torch.tensor([1, 2, 3, 1]))
    >>> out.loss.backward()
    """

    sharded = True  # the engine keeps its parameters out of DDP and checkpoints them per rank
    centers: Tensor
    step: Tensor

    def __init__(self, feat_dim: int, num_classes: int, lam: float = 0.0, alpha: float = 0.5,
                 sample_rate: float = 1.0, bias: bool = False, group: Any = None, seed: int = 0,
                 validate: bool = True) -> None:
        super().__init__()
        if feat_dim < 1 or num_classes < 1:
            raise ValueError(f"feat_dim and num_classes must be >= 1, got {feat_dim}, {num_classes}")
        if not lam >= 0 or math.isinf(lam):
            raise ValueError(f"lambda must be a finite number >= 0, got {lam}")
        if not (0.0 <= alpha <= 1.0):
            raise ValueError(f"alpha must lie in [0, 1] (Eq. 4), got {alpha}")
        if not (0.0 < sample_rate <= 1.0):
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        self.feat_dim, self.num_classes = feat_dim, num_classes
        self.lam, self.alpha, self.sample_rate = float(lam), float(alpha), float(sample_rate)
        self.seed, self.validate, self._group = int(seed), validate, group
        self.rank, self.world = _rank_and_world(group)
        self.class_range: tuple[int, int] = class_split(num_classes, self.world)[self.rank]
        lo, hi = self.class_range
        self.classifier = _Rows(*init_rows(lo, hi, feat_dim, self.seed, bias))
        self.register_buffer("centers", torch.zeros(hi - lo, feat_dim, dtype=torch.float32))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._host_step = 0  # mirrors ``step`` so that sampling never reads a device tensor

    @property
    def num_local(self) -> int:
        return self.class_range[1] - self.class_range[0]

    def extra_repr(self) -> str:
        return (f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, class_range={self.class_range}, "
                f"rank={self.rank}/{self.world}, lambda={self.lam}, alpha={self.alpha}, "
                f"sample_rate={self.sample_rate}, bias={self.classifier.bias is not None}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        step = state_dict.get(prefix + "step")
        if isinstance(step, Tensor) and step.numel() == 1:
            self._host_step = int(step)  # loading is not the hot path: a host read is fine here
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def num_sampled(self, global_batch: int) -> int:
        """k, the rows this rank uses per training step for a global batch of ``global_batch`` samples."""
        n = self.num_local
        if self.sample_rate >= 1.0:
            return n
        return min(n, max(math.ceil(self.sample_rate * n), global_batch))

    def sample_rows(self, global_labels: Tensor, step: int | None = None) -> Tensor | None:
        """The sorted local rows (k,) a training step at ``step`` (default: the current one) uses for the global
        batch's labels, or None when that is every row. Deterministic in (seed, step, rank); no host sync:
        random keys, the positives forced above them, and a top-k of fixed size."""
        n, k = self.num_local, self.num_sampled(global_labels.shape[0])
        if k >= n:
            return None
        lo, hi = self.class_range
        dev = global_labels.device
        g = torch.Generator(device=dev).manual_seed(_mix(self.seed, 1, self._host_step if step is None else step,
                                                         self.rank))
        keys = torch.rand(n + 1, generator=g, device=dev)  # (n + 1,) in [0, 1); slot n: other ranks' labels
        owned = (global_labels >= lo) & (global_labels < hi)
        keys.index_fill_(0, torch.where(owned, global_labels - lo, n), 2.0)  # positives always win
        return keys[:n].topk(k).indices.sort().values  # (k,)

    def forward(self, features: Tensor, labels: Tensor) -> JointOutput:
        """``features`` (b, d) and ``labels`` (b,) of this rank -> :class:`JointOutput` of the global batch
        (``logits`` is None: no rank forms them all). Training mode moves the centers (Eq. 4) afterwards and
        advances ``step``."""
        sizes = self._checked_sizes(features, labels)
        labels = labels.long()
        x, y = features, labels
        if self.world > 1:
            x = _AllGatherRows.apply(features, self.world, self._group, sizes)  # (N, d)
            y = _gather_rows(labels, self.world, self._group, sizes)  # (N,)
        lo, hi = self.class_range
        owned = (y >= lo) & (y < hi)  # (N,) this rank holds the sample's class
        local = torch.where(owned, y - lo, torch.zeros_like(y))  # (N,) its row here (0 where not owned)
        rows = self.sample_rows(y) if self.training else None
        weight, bias = self.classifier.weight, self.classifier.bias
        target = local
        if rows is not None:
            weight = weight.index_select(0, rows)  # (k, d): only the sampled rows are read
            bias = bias.index_select(0, rows) if bias is not None else None
            target = torch.searchsorted(rows, local).clamp_(max=rows.shape[0] - 1)  # owned: exact position
        logits = F.linear(x, weight, bias)  # (N, k)
        softmax, accuracy = _ShardedCrossEntropy.apply(logits, target, owned, self.world, self._group)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.lam > 0):  # lam = 0: reported, not trained
            aux = self._center_loss(x, local, owned)
        loss = softmax + self.lam * aux if self.lam > 0 else softmax
        if self.training:
            self._move_centers(x.detach(), y, local, owned)
            self.step.add_(1)
            self._host_step += 1
        return JointOutput(loss, softmax, aux if self.lam > 0 else aux.detach(), None, accuracy)

    def _center_loss(self, x: Tensor, local: Tensor, owned: Tensor) -> Tensor:
        """Eq. 2, mean over the global batch: each sample's term from the rank owning its class, summed."""
        work = torch.promote_types(x.dtype, torch.float32)
        diff = x.to(work) - self.centers.index_select(0, local).to(work)  # (N, d)
        per_sample = torch.where(owned, 0.5 * diff.pow(2).sum(dim=1), torch.zeros((), dtype=work, device=x.device))
        total = per_sample.sum()
        if self.world > 1:
            total = _SumOverRanks.apply(total, self._group)
        return total / x.shape[0]

    @torch.no_grad()
    def _move_centers(self, x: Tensor, y: Tensor, local: Tensor, owned: Tensor) -> None:
        """Eq. 4 on this rank's rows: ``c_j -= alpha * sum_{y_i=j} (c_j - x_i) / (1 + n_j)``, for the global batch.

        ``n_j`` comes from the sorted labels (O(N log N), no N x N table, no host sync). Unless ``validate``
        already refused them, non-finite features leave every center where it was.
        """
        if self.alpha <= 0:
            return
        srt = torch.sort(y).values  # (N,)
        counts = (torch.searchsorted(srt, y, right=True) - torch.searchsorted(srt, y)).to(self.centers.dtype)
        diff = self.centers.index_select(0, local) - x.to(self.centers.dtype)  # (N, d): c_{y_i} - x_i
        keep = owned.unsqueeze(1)
        if not self.validate:
            keep = keep & torch.isfinite(x).all()
        share = torch.where(keep, diff / (1.0 + counts).unsqueeze(1), torch.zeros((), dtype=diff.dtype,
                                                                                   device=diff.device))
        self.centers.index_add_(0, local, share, alpha=-self.alpha)

    def _checked_sizes(self, features: Tensor, labels: Tensor) -> tuple[int, ...] | None:
        """Check the batch; with ``validate``, also agree with every rank (one small all-gather) so that a bad
        batch anywhere raises everywhere before any collective of the step. Returns the per-rank batch
        sizes when they differ, None when they are all equal (or not checked)."""
        if not self.validate:
            check_batch(features, labels, self.feat_dim, values=False)
            return None
        try:
            check_batch(features, labels, self.feat_dim, self.num_classes)
            local_error = None
        except (TypeError, ValueError) as e:
            if self.world == 1:
                raise
            local_error = e
        if self.world == 1:
            return None
        b = features.shape[0] if local_error is None else 0
        meta = torch.tensor([b, int(local_error is None)], dtype=torch.long, device=self.centers.device)
        metas = meta.new_empty(2 * self.world)
        _gather_into(metas, meta, self._group)
        flat = metas.tolist()
        sizes, oks = flat[0::2], flat[1::2]
        bad = [r for r, ok in enumerate(oks) if not ok]
        if local_error is not None:
            raise type(local_error)(f"{local_error} (rank {self.rank}; every rank of the group raised)") \
                from local_error
        if bad:
            raise ValueError(f"sharded head: invalid input on rank(s) {bad}; no rank moved its centers")
        return None if len(set(sizes)) == 1 else tuple(sizes)


def _rank_and_world(group: Any) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("a process group was given but torch.distributed is not initialised")
        return 0, 1
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the given process group")
    return rank, dist.get_world_size(group)
