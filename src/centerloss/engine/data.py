"""Batches for the engine: data order as a pure function of (seed, epoch), one DataLoader per run.

* :class:`EpochSampler` is ``DistributedSampler(shuffle=True, seed, drop_last=True)``'s order for one epoch,
  minus the batches a resumed run already consumed, and it yields ``(index, epoch)`` keys. The dataset
  derives the epoch's augmentation (the flip bit) from the key, so the worker processes need no state from
  the main process and can live for the whole run.
* Workers are started once (``persistent_workers``) with **forkserver**, not fork: a process that has
  already used OpenCV's (or any library's) thread pool cannot safely fork, and a forked worker hung forever
  inside ``cv2.setNumThreads`` that way. Workers ignore Ctrl-C (the main process handles it and exits with one
  line) and use one intra-op thread each.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..errors import DataError
from ..utils.signals import ctrl_c_held


class EpochSampler(Sampler[tuple[int, int]]):
    """``(index, epoch)`` for this rank's share of the epoch's permutation, after skipping ``skip`` samples."""

    def __init__(self, n: int, world_size: int, rank: int, seed: int) -> None:
        self.n, self.world_size, self.rank, self.seed = n, world_size, rank, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _order(self) -> list[int]:
        ds = DistributedSampler(range(self.n), num_replicas=self.world_size, rank=self.rank, shuffle=True,  # type: ignore[arg-type]
                                seed=self.seed, drop_last=True)
        ds.set_epoch(self.epoch)
        return list(ds)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self._order()[self.skip:]:
            yield i, self.epoch

    def __len__(self) -> int:
        return self.n // self.world_size - self.skip


class EpochKeyed(Dataset):
    """Adapts a dataset whose ``__getitem__`` takes a plain index (and may have ``set_epoch``) to
    ``(index, epoch)`` keys; the engine's own datasets take the keys directly."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        i, epoch = key
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        return self.dataset[i]


def takes_epoch_keys(dataset: Dataset) -> bool:
    from ..data.identity_folder import FaceDataset
    from ..data.mnist import MnistDataset

    return isinstance(dataset, (FaceDataset, MnistDataset))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle, once
    # A worker's only user of sys.excepthook is multiprocessing's resource-sharer thread, whose accept() fails
    # while the worker is being stopped after a Ctrl-C; its traceback would follow the one "interrupted" line.
    # Failures of the worker's own loop still reach the main process through the DataLoader's result queue.
    sys.excepthook = lambda *exc: None


def _start_forkserver() -> None:
    """Start the worker server with Ctrl-C held (:func:`~centerloss.utils.signals.ctrl_c_held`): the server and
    every worker it forks inherit the blocked mask, so a Ctrl-C while it imports cannot print a traceback there,
    and one that lands in that window is raised here, once, when it has started (not lost: the run would go on)."""
    import multiprocessing.forkserver as fs

    with ctrl_c_held():
        fs.ensure_running()


def start_batches(loader: DataLoader) -> Iterator[Any]:
    """``iter(loader)`` with Ctrl-C held while it starts the workers: a parent that stopped midway would remove
    the queues' semaphores while a worker still unpickles them (a traceback from the worker)."""
    with ctrl_c_held():
        return iter(loader)


def make_loader(dataset: Dataset, sampler: EpochSampler, batch_size: int, workers: int, pin_memory: bool,
                seed: int) -> DataLoader:
    """One DataLoader for the whole run; call ``sampler.set_epoch(epoch, skip)`` before each ``iter()``."""
    ds = dataset if takes_epoch_keys(dataset) else EpochKeyed(dataset)
    extra: dict[str, Any] = {}
    if workers > 0:
        _start_forkserver()
        extra = {"multiprocessing_context": "forkserver", "persistent_workers": True, "prefetch_factor": 4,
                 "worker_init_fn": _worker_init}
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed), **extra)


def dataset_labels(dataset: Dataset) -> tuple[list[str], np.ndarray | None]:
    """The label map (``classes``) and labels of a dataset, checked once so that no step needs to: every
    label must lie in ``[0, len(classes))``. Datasets without a ``labels`` array are checked batch by batch
    on the CPU (still no device sync)."""
    labels = getattr(dataset, "labels", None)
    classes = getattr(dataset, "classes", None)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"dataset labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if classes is None:
        if labels is None:
            raise DataError("the dataset needs a 'classes' list or a 'labels' array to size the classifier")
        classes = [str(i) for i in range(int(labels.max()) + 1)]
    classes = list(classes)
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"dataset labels span [{labels.min()}, {labels.max()}] but there are {len(classes)} "
                        "classes")
    return classes, labels
