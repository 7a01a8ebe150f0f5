"""Identity-folder datasets (``root/<identity>/<image>``) of aligned face crops: CASIA-WebFace, VGGFace2, LFW.

Indexing a 500k-file tree must take seconds, not minutes, so the index is built from ``os.scandir`` entries
only (directory reads; no per-file ``stat`` or ``open``), sorted for a reproducible label order, and can be
cached to a JSON file that is revalidated with one ``stat`` per identity directory. Images are decoded only
when a sample is requested, by the package's one decoder (:mod:`centerloss.utils.images`, the same one
evaluation uses). A file that cannot be decoded -- including a truncated JPEG, which is refused rather than
grey-filled -- raises :class:`DataError` naming it, and training stops there (a documented choice: a crop
that does not decode means the aligned set is broken; ``centerloss align`` lists such files).

The label map (label -> identity name) is ``index.classes``; the engine saves it with every checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from ..utils.atomic import write_json
from ..utils.images import IMAGE_EXTENSIONS, read_rgb
from .transforms import to_tensor

_CACHE_VERSION = 1


@dataclass
class FolderIndex:
    """What is on disk: ``classes[label]`` is an identity name, ``files[i]`` a path relative to ``root``."""

    root: str
    classes: list[str]
    files: list[str]
    labels: np.ndarray = field(repr=False)  # (N,) int64
    dropped: dict[str, int] = field(default_factory=dict)  # identity -> images, left out for min_images

    def __len__(self) -> int:
        return len(self.files)

    def counts(self) -> np.ndarray:
        """Images per class (C,)."""
        return np.bincount(self.labels, minlength=len(self.classes))


def _scan_class(path: str, exts: tuple[str, ...]) -> list[str]:
    # DirEntry.is_file() answers from the directory entry's d_type on Linux: no stat per file.
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.name.lower().endswith(exts) and e.is_file())


def _class_dirs(root: str) -> list[os.DirEntry]:
    with os.scandir(root) as it:
        return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _load_cache(cache: Path, root: str, dirs: list[os.DirEntry], exts: tuple[str, ...]) -> dict[str, list[str]] | None:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("version") != _CACHE_VERSION or data.get("root") != root or data.get("extensions") != list(exts):
        return None
    entries = data.get("classes", {})
    if set(entries) != {d.name for d in dirs}:
        return None
    for d in dirs:  # a directory's mtime changes when a file is added, removed or renamed in it
        if entries[d.name][0] != d.stat().st_mtime_ns:
            return None
    return {name: v[1] for name, v in entries.items()}


def index_identity_folder(root: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS,
                          min_images: int = 1, identities: Iterable[str] | None = None,
                          on_empty: str = "error", cache: str | os.PathLike[str] | None = None,
                          exclude: Iterable[str] | None = None) -> FolderIndex:
    """Index ``root/<identity>/<image>`` (one level; deeper folders and files at the top are ignored).

    Args:
        min_images: drop identities with fewer images (softmax needs >= 2 per class to generalise at all).
        identities: keep only these identity names (e.g. the ones disjoint from a test protocol).
        exclude: never use these identity names (e.g. everyone in a test protocol's pairs).
        on_empty: ``"error"`` raises :class:`DataError` for an identity folder without images (a sign of a
            broken copy or a wrong extension list); ``"skip"`` drops it.
        cache: optional JSON file for the listing; reused when every identity folder's mtime is unchanged.

    Labels are assigned in sorted identity-name order *after* filtering, so they are ``0 .. C-1``.
    """
    root_s = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_s):
        raise DataError(f"identity folder {root_s} does not exist or is not a directory")
    if on_empty not in ("error", "skip"):
        raise ValueError(f"on_empty must be 'error' or 'skip', got {on_empty!r}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    dirs = _class_dirs(root_s)
    if identities is not None:
        wanted = set(identities)
        missing = sorted(wanted - {d.name for d in dirs})
        if missing:
            raise DataError(f"{root_s}: {len(missing)} requested identities have no folder, e.g. {missing[:5]}")
        dirs = [d for d in dirs if d.name in wanted]
    if exclude is not None:
        banned = set(exclude)
        dirs = [d for d in dirs if d.name not in banned]
    listing = _load_cache(Path(cache), root_s, dirs, exts) if cache is not None and Path(cache).is_file() else None
    if listing is None:
        listing = {d.name: _scan_class(d.path, exts) for d in dirs}
        if cache is not None:
            payload = {"version": _CACHE_VERSION, "root": root_s, "extensions": list(exts),
                       "classes": {d.name: [d.stat().st_mtime_ns, listing[d.name]] for d in dirs}}
            write_json(cache, payload, indent=None)
    empty = [d.name for d in dirs if not listing[d.name]]
    if empty and on_empty == "error":
        raise DataError(f"{root_s}: {len(empty)} identity folder(s) contain no image with extension {list(exts)}, "
                        f"e.g. {os.path.join(root_s, empty[0])}; remove them or pass on_empty='skip'")
    classes = [d.name for d in dirs if len(listing[d.name]) >= max(min_images, 1)]
    dropped = {d.name: len(listing[d.name]) for d in dirs if 0 < len(listing[d.name]) < max(min_images, 1)}
    if not classes:
        raise DataError(f"{root_s}: no identity folder has >= {max(min_images, 1)} images {list(exts)}")
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        names = listing[name]
        files.extend(f"{name}/{f}" for f in names)
        labels.extend([label] * len(names))
    return FolderIndex(root_s, classes, files, np.asarray(labels, dtype=np.int64), dropped)


def index_from_file_list(root: str | os.PathLike[str], files: Iterable[str], min_images: int = 1) -> FolderIndex:
    """Index an explicit list of ``identity/image`` paths relative to ``root`` (a split file, or the images an
    aligner kept). Nothing is read from disk here; a missing file fails when it is loaded, naming the file."""
    root_s = os.path.abspath(os.fspath(root))
    by_class: dict[str, list[str]] = {}
    for n, f in enumerate(files, 1):
        f = f.strip().replace(os.sep, "/")
        if not f:
            continue
        parts = f.split("/")
        if len(parts) != 2 or not all(parts):
            raise DataError(f"file list entry {n} ({f!r}) must look like '<identity>/<image>'")
        by_class.setdefault(parts[0], []).append(f)
    classes = sorted(c for c, v in by_class.items() if len(v) >= max(min_images, 1))
    dropped = {c: len(v) for c, v in sorted(by_class.items()) if len(v) < max(min_images, 1)}
    if not classes:
        raise DataError(f"the file list for {root_s} has no identity with >= {max(min_images, 1)} images")
    out_files: list[str] = []
    labels: list[int] = []
    for label, c in enumerate(classes):
        names = sorted(set(by_class[c]))
        out_files.extend(names)
        labels.extend([label] * len(names))
    return FolderIndex(root_s, classes, out_files, np.asarray(labels, dtype=np.int64), dropped)


def check_hw(img: np.ndarray, expected_hw: Sequence[int] | None, where: str) -> np.ndarray:
    if expected_hw is not None and tuple(img.shape[:2]) != tuple(expected_hw):
        raise DataError(f"{where}: image is {img.shape[0]}x{img.shape[1]} (HxW), expected aligned crops of "
                        f"{expected_hw[0]}x{expected_hw[1]}; align the data first (`centerloss align`)")
    return img


def flip_bit(seed: int, epoch: int, index: int) -> bool:
    """Whether sample ``index`` is mirrored in ``epoch``: a pure function (splitmix64), so the augmentation of a
    resumed run, any number of DataLoader workers, and any rank of a DDP run agree exactly."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return bool((z ^ (z >> 31)) & 1)


class FaceDataset(Dataset):
    """Base for face datasets: ``ds[i] -> (image (3, H, W) float normalised (x-127.5)/128, label)``.

    Random horizontal flip (the paper's only augmentation) is decided by :func:`flip_bit` from
    ``(seed, epoch, i)``; call :meth:`set_epoch` before each epoch, like ``DistributedSampler.set_epoch``.
    """

    classes: list[str]
    labels: np.ndarray

    def __init__(self, flip: bool = True, seed: int = 0, expected_hw: Sequence[int] | None = (112, 96)) -> None:
        self.flip = flip
        self.seed = seed
        self.epoch = 0
        self.expected_hw = tuple(expected_hw) if expected_hw is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_rgb(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        """``ds[i]`` uses the epoch set by :meth:`set_epoch`; ``ds[(i, epoch)]`` names it (the engine's sampler
        does this, so persistent DataLoader workers need no state from the main process)."""
        i, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        x = to_tensor(self.load_rgb(i))  # (3, H, W)
        if self.flip and flip_bit(self.seed, epoch, i):
            x = torch.flip(x, dims=[-1])
        return x, int(self.labels[i])


class IdentityFolderDataset(FaceDataset):
    """Aligned crops in ``root/<identity>/<image>``; see :func:`index_identity_folder` for the options."""

    def __init__(self, root: str | os.PathLike[str] | FolderIndex, flip: bool = True, seed: int = 0,
                 expected_hw: Sequence[int] | None = (112, 96), **index_kw) -> None:
        super().__init__(flip, seed, expected_hw)
        self.index = root if isinstance(root, FolderIndex) else index_identity_folder(root, **index_kw)
        self.classes = self.index.classes
        self.labels = self.index.labels

    def path(self, i: int) -> str:
        return os.path.join(self.index.root, self.index.files[i])

    def load_rgb(self, i: int) -> np.ndarray:
        return check_hw(read_rgb(self.path(i)), self.expected_hw, self.path(i))
