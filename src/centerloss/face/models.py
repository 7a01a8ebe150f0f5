"""One interface over the two kinds of model file the face tools accept: safetensors (torch) and ONNX.

An :class:`Embedder` turns aligned uint8 RGB crops ``(B, H, W, 3)`` into the paper's test feature (``docs/METHOD.md``,
Sec. 4): the embedding of the crop and of its horizontal flip, concatenated (``combine="concat"``, 2 x embed_dim),
or summed (``"sum"``), or the crop alone (``"none"``). Pixels are normalised as ``(x - 127.5) / 128`` in RGB order
(:func:`centerloss.data.transforms.to_tensor`), so both backends see the same numbers.

``weights_sha256`` names the weights a feature came from: the sha256 of a safetensors file, and for an ONNX file
that ``centerloss export`` wrote, the sha256 of the safetensors file it was exported from. A gallery built with
one can therefore be queried with the other (their features agree to 1e-4), and with nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["COMBINE_MODES", "Embedder", "TorchEmbedder", "load_embedder", "file_sha256", "is_onnx_path"]

COMBINE_MODES = ("concat", "sum", "none")


class Embedder(Protocol):
    """What the face tools need from a model, whichever runtime executes it."""

    path: Path
    kind: str  # "torch" or "onnx"
    input_size: tuple[int, int]  # (H, W)
    embed_dim: int
    weights_sha256: str
    file_sha256: str
    meta: dict[str, Any]

    def embed(self, crops: np.ndarray, combine: str = "concat") -> np.ndarray:
        """uint8 crops (B, H, W, 3) -> features (B, E) float32."""
        ...


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (the same digest as :func:`centerloss.eval.features.model_fingerprint`)."""
    from ..eval.features import model_fingerprint

    try:
        return model_fingerprint(path=path)
    except OSError as e:
        raise DataError(f"{path}: cannot read model file ({e.strerror or e})") from e


def is_onnx_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def check_combine(combine: str) -> None:
    if combine not in COMBINE_MODES:
        raise ConfigError(f"unknown combine mode {combine!r}; choose one of {COMBINE_MODES}")


def check_crops(crops: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Validate a batch of crops: uint8 (B, H, W, 3) at the model's ``size``."""
    c = np.asarray(crops)
    if c.dtype != np.uint8 or c.ndim != 4 or c.shape[3] != 3:
        raise DataError(f"crops must be uint8 (B, H, W, 3), got {c.dtype} {c.shape}")
    if tuple(c.shape[1:3]) != tuple(size):
        raise DataError(f"crops are {c.shape[1]}x{c.shape[2]} (HxW) but the model takes {size[0]}x{size[1]}")
    return c


class TorchEmbedder:
    """A safetensors model from :func:`centerloss.models.io.save_model`, run by torch.

    Args:
        path: the ``.safetensors`` file.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` ...
    """

    kind = "torch"

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None:
        from ..models.io import load_model
        from ..utils.device import resolve_device

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"model file not found: {self.path}")
        self.device = resolve_device(device)
        try:
            model, meta = load_model(self.path)
        except DataError:
            raise
        except Exception as e:  # truncated or tampered data section, wrong dtypes, ...
            raise DataError(f"{self.path}: corrupt or unreadable model file ({type(e).__name__}: {e})") from e
        self.model = model.eval().to(self.device)
        self.meta = meta
        self.input_size = tuple(int(v) for v in (getattr(model, "input_size", None) or (112, 96)))
        self.embed_dim = int(getattr(model, "embed_dim", 0) or 0)
        self.file_sha256 = file_sha256(self.path)
        self.weights_sha256 = self.file_sha256

    def embed(self, crops: np.ndarray, combine: str = "concat") -> np.ndarray:
        """uint8 crops (B, H, W, 3) -> (B, E) float32, E = 2 x embed_dim for ``"concat"``."""
        from ..eval.features import embed_images

        check_combine(combine)
        c = check_crops(crops, self.input_size)
        if len(c) == 0:
            return np.zeros((0, self.feature_dim(combine)), np.float32)
        return embed_images(self.model, c, combine, self.device)

    def feature_dim(self, combine: str = "concat") -> int:
        return self.embed_dim * (2 if combine == "concat" else 1)


def load_embedder(path: str | os.PathLike[str], device: str = "cpu") -> Embedder:
    """The right :class:`Embedder` for a model file: ``*.onnx`` runs on onnxruntime, anything else is safetensors."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"model file not found: {p}")
    if is_onnx_path(p):
        from .onnx_model import OnnxEmbedder

        return OnnxEmbedder(p, device=device)
    return TorchEmbedder(p, device=device)
