"""Counting device-to-host synchronisations, on any device (the test and benchmark of "no sync per step").

On a GPU, an op whose result the host must see -- ``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``,
``torch.equal``, ``torch.unique``, boolean-mask indexing, ``nonzero``, ``bincount`` (whose output size depends
on the data) -- blocks the CPU until the GPU has finished everything queued before it.
``torch.cuda.set_sync_debug_mode`` catches these on CUDA only; :class:`SyncCounter` sees them at the dispatcher,
so the same count is measured on the CPU, where the tests run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SYNC_OPS = {
    "aten._local_scalar_dense.default",  # .item(), bool(), int(), float()
    "aten.equal.default",
    "aten._unique2.default", "aten.unique_dim.default", "aten.unique_consecutive.default",
    "aten.nonzero.default", "aten.masked_select.default", "aten.bincount.default",
    "aten.repeat_interleave.Tensor",
}


def _is_sync(func: Any, args: tuple) -> bool:
    name = str(func)
    if name in _SYNC_OPS:
        return True
    if name == "aten.index.Tensor":  # x[mask] with a boolean mask needs the count of True values
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []) if i is not None)
    return False


class SyncCounter(TorchDispatchMode):
    """``with SyncCounter() as s: ...`` then ``s.count`` (and ``s.ops``, a Counter by op name).

    ``Tensor.tolist()`` and ``Tensor.numpy()`` do not pass the dispatcher, so they are counted by patching
    the two methods for the duration of the block. The count covers the calling thread (autograd runs CPU
    backward passes on it, too).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_sync(func, args):
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._orig = (torch.Tensor.tolist, torch.Tensor.numpy)
        counter = self

        def tolist(t, *a, **k):
            counter.ops["Tensor.tolist"] += 1
            return counter._orig[0](t, *a, **k)

        def numpy(t, *a, **k):
            counter.ops["Tensor.numpy"] += 1
            return counter._orig[1](t, *a, **k)

        torch.Tensor.tolist, torch.Tensor.numpy = tolist, numpy  # type: ignore[method-assign]
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist, torch.Tensor.numpy = self._orig  # type: ignore[method-assign]
        return super().__exit__(*exc)
