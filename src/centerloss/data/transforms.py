"""Pixel normalisation and augmentation used by the paper for face crops (Sec. 4)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

MEAN = 127.5
SCALE = 128.0


def to_tensor(img: np.ndarray) -> Tensor:
    """uint8 RGB image (H, W, 3) -> float tensor (3, H, W) normalised as (x - 127.5) / 128."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got {img.dtype} {img.shape}")
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return (t - MEAN) / SCALE


def hflip(x: Tensor) -> Tensor:
    """Horizontal flip of (..., H, W) tensors, the paper's only augmentation and its test-time flip."""
    return torch.flip(x, dims=[-1])
