"""Running metrics and the non-finite guard, kept on the device between log steps.

A host sync (``.item()``, ``bool(tensor)``, ``.tolist()``) makes the CPU wait for the GPU to drain its queue;
one per step is enough to starve a fast GPU. So nothing in the steady-state step reads a device value:

* :class:`RunningMetrics` adds each step's losses and accuracy into a small float64 tensor on the device;
  :meth:`RunningMetrics.read` (at log steps only) all-reduces it over ranks and returns named means.
* :class:`NonFiniteGuard` turns "loss or gradient norm is not finite" into a device flag that is handed to the
  fused optimizer as ``found_inf``: the kernel skips the step on the device, so no parameter ever moves by a
  NaN update. The flag is sticky -- once a step is bad, every later one is skipped too -- and it is read at
  log and checkpoint steps, where the run stops with :class:`~centerloss.errors.NonFiniteLossError` naming the
  first bad step, before any checkpoint could be written from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .distributed import DistInfo


class RunningMetrics:
    """Per-step means of named scalars between two log steps, accumulated without host syncs."""

    names = ("loss", "softmax", "aux", "accuracy")

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(self.names) + 1, dtype=torch.float64, device=device)  # + step count

    def add(self, out) -> None:
        """``out``: a :class:`~centerloss.losses.JointOutput` (or anything with the named fields)."""
        vals = [getattr(out, n).detach().reshape(()).double() for n in self.names]
        self.sums += torch.stack([*vals, torch.ones((), dtype=torch.float64, device=self.sums.device)])

    def state(self) -> list[float]:
        return self.sums.tolist()

    def load(self, values: Sequence[float]) -> None:
        self.sums = torch.tensor(list(values), dtype=torch.float64, device=self.sums.device)

    def read(self, info: DistInfo) -> dict[str, float]:
        """Means since the last read, averaged over ranks (one all-reduce and one host sync), then reset."""
        s = self.sums.clone()
        if info.enabled:
            dist.all_reduce(s)
        vals = s.tolist()
        self.sums.zero_()
        n = max(vals[-1], 1.0)
        return {name: v / n for name, v in zip(self.names, vals)}


class NonFiniteGuard:
    """``bad`` is a sticky 0/1 float flag on the device: 1 once any step's loss or gradients were non-finite."""

    def __init__(self, device: torch.device) -> None:
        self.bad = torch.zeros((), dtype=torch.float32, device=device)
        self.bad_steps = torch.zeros((), dtype=torch.float32, device=device)

    def check(self, loss: Tensor, grad_norm: Tensor | None, info: DistInfo) -> Tensor:
        """Fold this step's loss and total gradient norm into the flag; returns it (for ``found_inf``)."""
        finite = torch.isfinite(loss.detach())
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm)
        step_bad = (~finite).float()
        if info.enabled:  # sharded rows' gradients differ per rank: every rank must skip together
            dist.all_reduce(step_bad, op=dist.ReduceOp.MAX)
        self.bad = torch.maximum(self.bad, step_bad)
        self.bad_steps += self.bad
        return self.bad

    def first_bad_step(self, step: int) -> int | None:
        """The 0-based index of the first non-finite step, or None (a host sync: call at log steps)."""
        n = int(self.bad_steps.item())
        return None if n == 0 else step - n


def total_grad_norm(params: Sequence[Tensor]) -> Tensor | None:
    """The global L2 norm of the gradients (one fused kernel, stays on the device), or None without any."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads)
