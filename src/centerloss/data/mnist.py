"""MNIST from the four original IDX files (gzip-compressed), read into memory as uint8 tensors.

Where the files live: ``--data-dir`` flag > ``$CENTERLOSS_MNIST_DIR`` > ``$CENTERLOSS_DATA/mnist`` >
``../shared/data/mnist`` beside the checkout (or the current directory). Nothing is downloaded unless asked:
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

from ..errors import DataError

FILES: dict[str, str] = {  # name -> md5 of the canonical .gz
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: Public mirror used by :func:`download_mnist` (only when the user opts in with ``--download``).
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def candidate_dirs() -> list[Path]:
    """Where MNIST is looked for when no directory is given, in order."""
    out: list[Path] = []
    if os.environ.get("CENTERLOSS_MNIST_DIR"):
        out.append(Path(os.environ["CENTERLOSS_MNIST_DIR"]))
    if os.environ.get("CENTERLOSS_DATA"):
        out.append(Path(os.environ["CENTERLOSS_DATA"]) / "mnist")
    out.append(Path.cwd().parent / "shared" / "data" / "mnist")
    repo = Path(__file__).resolve().parents[3]  # src/centerloss/data/mnist.py -> checkout root
    out.append(repo.parent / "shared" / "data" / "mnist")
    return out


def resolve_mnist_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The directory holding the four MNIST files, or a :class:`DataError` saying where to put them."""
    tried = [Path(data_dir)] if data_dir else candidate_dirs()
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
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_mnist(dest: str | os.PathLike[str], mirror: str = MIRROR) -> Path:
    """Fetch the four files into ``dest`` and verify their md5; existing good files are kept."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in FILES.items():
        target = dest / name
        if target.is_file() and md5sum(target) == md5:
            continue
        tmp = target.with_suffix(".part")
        urllib.request.urlretrieve(mirror + name, tmp)  # noqa: S310 - opt-in download of a fixed URL
        got = md5sum(tmp)
        if got != md5:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{name}: md5 {got} does not match the canonical {md5}; download rejected")
        os.replace(tmp, target)
    return dest


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from e
    if len(raw) < 8:
        raise DataError(f"{path}: too short to be an IDX file")
    got_magic = struct.unpack(">I", raw[:4])[0]
    if got_magic != magic:
        raise DataError(f"{path}: IDX magic {got_magic}, expected {magic}")
    ndim = magic & 0xFF
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
        out.append(MnistSplit(torch.from_numpy(imgs.copy()), torch.from_numpy(labs.astype(np.int64))))
    return out[0], out[1]


def normalize(images: Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) as (x - 127.5) / 128, the normalisation used throughout."""
    return (images.float().unsqueeze(1) - 127.5) / 128.0
