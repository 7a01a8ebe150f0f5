"""Thin helpers over ``torch.distributed``: nothing here replaces PyTorch's own stack.

A run started by ``torchrun`` (or anything that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``)
joins the process group through ``env://`` with NCCL on GPUs and gloo on CPUs. A plain ``python`` run is a
world of one and never touches ``torch.distributed``. Nothing happens at import time.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from ..utils.device import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by the environment (``env://``), or return a world of one."""
    if dist.is_available() and dist.is_initialized():  # the caller set it up (e.g. a test harness)
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world, local, resolve_device(device, local), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device, 0))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://",
                            rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev, owns_group=True)


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def hold_until_exit(ddp: torch.nn.Module) -> None:
    """Never free a DDP wrapper over a **gloo** group: it lives as long as the process.

    Freeing DDP frees its C++ Reducer, which holds the last reference to the gloo process group. The group's
    destructor stops and joins its worker threads while the freeing thread holds the GIL, and a worker still holds
    its last finished collective, whose Python tensor it needs the GIL to release: a deadlock. py-spy showed
    ``~ProcessGroupGloo`` in ``std::thread::join`` under ``Reducer`` dealloc, and the worker in
    ``gil_scoped_acquire`` from ``decref_pyobject``, in the 3 torchrun runs that hung at the end here; releasing
    held wrappers from an ``atexit`` hook instead hung 3 of 10 runs. Freed during interpreter teardown, the same
    group can abort the process ("terminate called without an active exception"). So the reference is leaked on
    purpose (one extra refcount); the OS reclaims it at exit. :func:`leave_process` is the clean way out, and a
    script that calls ``Trainer.fit`` under torchrun on CPUs should end with it too: a plain exit still aborted 1
    of 10 such runs here, after their outputs were written."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(ddp))


def leave_process(code: int) -> NoReturn:
    """End a rank of a multi-process run once its outputs are written: no ``atexit`` hooks, no interpreter teardown,
    so no gloo group is torn down (:func:`hold_until_exit`). Every write is atomic and complete by the time a
    command returns, so nothing is lost. The CLI calls this under ``WORLD_SIZE`` > 1, and so do the tests' workers."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_true(flag: bool, info: DistInfo) -> bool:
    """Logical AND of ``flag`` over all ranks (one tiny all-reduce), so every rank takes the same branch."""
    if not info.enabled:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=info.device)
    dist.all_reduce(t)
    return bool(t.item() == 0.0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order (small, trusted in-process data such as RNG states)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
