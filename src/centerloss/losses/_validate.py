"""Input checks shared by the losses. Every check runs before any state (centers) is touched."""

from __future__ import annotations

import torch
from torch import Tensor


def check_batch(features: Tensor, labels: Tensor, feat_dim: int | None = None, num_classes: int | None = None,
                check_finite: bool = True, values: bool = True) -> None:
    """Raise a clear error for malformed ``(features (B, d), labels (B,))``.

    Shapes and dtypes are checked from metadata (free). ``values=True`` also checks the label range and
    (``check_finite``) NaN/Inf, with one device-to-host sync; the engine passes ``values=False`` and validates
    the labels once per dataset instead.
    """
    if not isinstance(features, Tensor) or not isinstance(labels, Tensor):
        raise TypeError("features and labels must be torch.Tensors")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    if features.dim() != 2:
        raise ValueError(f"features must have shape (B, d), got {tuple(features.shape)}")
    if feat_dim is not None and features.shape[1] != feat_dim:
        raise ValueError(f"features have width {features.shape[1]}, but the loss was built with feat_dim={feat_dim}")
    if labels.dtype in (torch.bool,) or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor (torch.long), got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"batch size mismatch: {features.shape[0]} features but {labels.shape[0]} labels")
    if features.shape[0] == 0:
        raise ValueError("empty batch: features and labels have zero rows")
    if features.shape[1] == 0:
        raise ValueError("features have zero width (shape (B, 0))")
    if not values:
        return
    # One host sync for all value checks (each .item() stalls a GPU pipeline); details only on failure.
    bad = torch.zeros((), dtype=torch.bool, device=labels.device)
    if num_classes is not None:
        bad = bad | (labels.min() < 0) | (labels.max() >= num_classes)
    if check_finite:
        bad = bad | ~torch.isfinite(features).all().to(labels.device)
    if not bool(bad):
        return
    if num_classes is not None:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes - 1}], got values in [{lo}, {hi}]")
    raise ValueError("features contain NaN or Inf; refusing to compute the loss or move the centers")
