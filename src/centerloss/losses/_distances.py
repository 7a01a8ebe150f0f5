"""Pairwise distances inside a batch, computed so that large, nearby features keep their precision."""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_sq_dists(features: Tensor) -> Tensor:
    """Squared Euclidean distances (B, B) between the rows of ``features`` (B, d), in >= float32.

    The batch is first centred on its mean (distances are translation invariant), which removes the large
    common offset that makes the Gram-matrix form ``|a|^2 + |b|^2 - 2 a.b`` cancel catastrophically.
    """
    work = torch.promote_types(features.dtype, torch.float32)
    # autocast would run the matmul below in bf16/fp16 and wipe out small distances: keep it in `work`
    with torch.autocast(features.device.type, enabled=False):
        f = features.to(work)
        f = f - f.mean(dim=0, keepdim=True).detach()
        sq = f.pow(2).sum(dim=1)  # (B,)
        d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (f @ f.t())  # (B, B)
    return d2.clamp_min(0.0)


def safe_sqrt(x: Tensor, eps: float = 1e-12) -> Tensor:
    """sqrt with a finite gradient at 0."""
    return x.clamp_min(eps).sqrt()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` holds, 0 where it never does; a fixed shape, so no host sync (unlike
    ``values[mask].mean()``, whose boolean indexing must read the mask's count back)."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)
