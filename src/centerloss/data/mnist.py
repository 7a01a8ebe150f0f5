"""MNIST from the four original IDX files (gzip-compressed), read into memory as uint8 tensors.

Where the files live: ``--data-dir`` flag > ``$CENTERLOSS_MNIST_DIR`` > ``$CENTERLOSS_DATA/mnist`` (the library
assumes no checkout layout; the Makefile sets ``CENTERLOSS_DATA``). Nothing is downloaded unless asked:
:func:`download_mnist` fetches the files and checks their md5 for users who are online.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from ..utils.atomic import write_bytes
from ..utils.digest import file_digest

FILES: dict[str, str] = {  # name -> md5 of the canonical .gz
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: Public mirror used by :func:`download_mnist` (only when the user opts in with ``--download``).
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def candidate_dirs() -> list[Path]:
    """Where MNIST is looked for when no directory is given, in order: ``$CENTERLOSS_MNIST_DIR``, then
    ``$CENTERLOSS_DATA/mnist``. (The library assumes no checkout layout; the presets and the Makefile pass
    ``CENTERLOSS_DATA`` for the development machine.)"""
    out: list[Path] = []
    if os.environ.get("CENTERLOSS_MNIST_DIR"):
        out.append(Path(os.environ["CENTERLOSS_MNIST_DIR"]))
    if os.environ.get("CENTERLOSS_DATA"):
        out.append(Path(os.environ["CENTERLOSS_DATA"]) / "mnist")
    return out


def resolve_mnist_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The directory holding the four MNIST files, or a :class:`DataError` saying where to put them."""
    tried = [Path(data_dir)] if data_dir else candidate_dirs()
    if not tried:
        raise DataError("MNIST location unknown: pass --data-dir DIR (the folder with the four .gz files), or set "
                        "CENTERLOSS_DATA (holding mnist/) or CENTERLOSS_MNIST_DIR; add --download to fetch them")
    for d in tried:
        if all((d / f).is_file() for f in FILES):
            return d
    where = "\n  ".join(str(p) for p in tried)
    raise DataError(
        "MNIST not found. Looked in:\n  " + where + "\nPut the four files "
        + ", ".join(FILES) + " in one of these folders (or pass --data-dir / set CENTERLOSS_MNIST_DIR), "
        "or add --download to fetch them (md5-checked)."
    )


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


def download_mnist(dest: str | os.PathLike[str], mirror: str = MIRROR) -> Path:
    """Fetch the four files into ``dest`` and verify their md5; existing good files are kept."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in FILES.items():
        target = dest / name
        if target.is_file() and md5sum(target) == md5:
            continue
        try:
            with urllib.request.urlopen(mirror + name, timeout=30) as r:  # noqa: S310 - opt-in, fixed URL
                data = r.read()
        except (OSError, ValueError) as e:  # URLError, timeouts, DNS failures are OSErrors
            raise DataError(f"cannot download {mirror + name}: {getattr(e, 'reason', e)} (offline? put the "
                            f"files in {dest} by hand instead)") from None
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            raise DataError(f"{name}: md5 {got} does not match the canonical {md5}; download rejected")
        write_bytes(target, data)
    return dest


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from e
    ndim = magic & 0xFF
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header (cut short?)")
    got_magic = struct.unpack(">I", raw[:4])[0]
    if got_magic != magic:
        raise DataError(f"{path}: IDX magic {got_magic}, expected {magic}")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {data.size} bytes (truncated?)")
    return data.reshape(dims)


@dataclass
class MnistSplit:
    images: Tensor  # (N, 28, 28) uint8
    labels: Tensor  # (N,) int64


def load_mnist(data_dir: str | os.PathLike[str] | None = None) -> tuple[MnistSplit, MnistSplit]:
    """Return ``(train, test)`` as in-memory uint8 tensors (60k and 10k images)."""
    d = resolve_mnist_dir(data_dir)
    out = []
    for split in ("train", "t10k"):
        imgs = _read_idx(d / f"{split}-images-idx3-ubyte.gz", 2051)
        labs = _read_idx(d / f"{split}-labels-idx1-ubyte.gz", 2049)
        if imgs.shape[0] != labs.shape[0]:
            raise DataError(f"{d}: {split} has {imgs.shape[0]} images but {labs.shape[0]} labels")
        if imgs.shape[1:] != (28, 28):
            raise DataError(f"{d / f'{split}-images-idx3-ubyte.gz'}: images are {imgs.shape[1]}x{imgs.shape[2]}, "
                            "MNIST's are 28x28")
        if labs.size and labs.max() > 9:
            bad = int(np.argmax(labs > 9))
            raise DataError(f"{d / f'{split}-labels-idx1-ubyte.gz'}: label {int(labs[bad])} at index {bad} is "
                            "outside 0..9")
        out.append(MnistSplit(torch.from_numpy(imgs.copy()), torch.from_numpy(labs.astype(np.int64))))
    return out[0], out[1]


def normalize(images: Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) as (x - 127.5) / 128, the normalisation used throughout."""
    return (images.float().unsqueeze(1) - 127.5) / 128.0


class MnistDataset(Dataset):
    """An in-memory :class:`MnistSplit` for the training engine: ``ds[i] -> (image (1, 28, 28), label)``.

    ``__getitems__`` serves a whole batch with one indexing operation (the DataLoader uses it), so the
    engine's loop costs about as much as indexing a tensor. There is no augmentation; the engine's
    ``(index, epoch)`` keys are accepted and the epoch ignored.
    """

    def __init__(self, split: MnistSplit) -> None:
        self.images, self.labels_t = split.images, split.labels
        self.labels = split.labels.numpy()
        self.classes = [str(k) for k in range(10)]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        i = key[0] if isinstance(key, tuple) else key
        return normalize(self.images[i : i + 1])[0], int(self.labels_t[i])

    def __getitems__(self, keys: list) -> list[tuple[Tensor, int]]:
        idx = torch.tensor([k[0] if isinstance(k, tuple) else k for k in keys], dtype=torch.long)
        x = normalize(self.images[idx])  # (B, 1, 28, 28)
        return list(zip(x.unbind(0), self.labels_t[idx].tolist()))
