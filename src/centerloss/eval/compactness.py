"""How tight and how far apart classes are in a feature space (used for the MNIST toy study)."""

from __future__ import annotations

import numpy as np


def class_compactness(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Intra-class spread against inter-class separation, with each class's center = its feature mean.

    Returns ``intra_mean`` (mean distance of a sample to its class center), ``inter_mean`` and ``inter_min``
    (mean / min distance between two class centers), ``compactness = intra_mean / inter_mean`` and
    ``compactness_min = intra_mean / inter_min``. The ratios are scale-free, so a network cannot look
    "compact" just by shrinking all its features.
    """
    features = np.asarray(features, dtype=np.float64)  # (N, d)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.size < 2:
        raise ValueError("compactness needs at least two classes")
    centers = np.stack([features[labels == k].mean(0) for k in classes])  # (K, d)
    idx = np.searchsorted(classes, labels)
    intra = np.linalg.norm(features - centers[idx], axis=1).mean()
    diff = centers[:, None, :] - centers[None, :, :]
    dist = np.linalg.norm(diff, axis=2)[np.triu_indices(classes.size, k=1)]
    return {
        "intra_mean": float(intra),
        "inter_mean": float(dist.mean()),
        "inter_min": float(dist.min()),
        "compactness": float(intra / dist.mean()),
        "compactness_min": float(intra / dist.min()),
    }
