"""Plots of 2-D deep features, the analogues of the paper's Figs. 2 and 3."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_COLORS = plt.get_cmap("tab10").colors


def _scatter(ax, feats: np.ndarray, labels: np.ndarray, centers: np.ndarray | None, title: str) -> None:
    for k in range(int(labels.max()) + 1):
        m = labels == k
        ax.scatter(feats[m, 0], feats[m, 1], s=1.5, color=_COLORS[k % 10], alpha=0.6, linewidths=0,
                   label=str(k), rasterized=True)
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], s=28, c="white", edgecolors="black", linewidths=1.0, zorder=5)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal", adjustable="datalim")
    ax.tick_params(labelsize=7)


def _subsample(feats: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if n <= 0 or feats.shape[0] <= n:
        return feats, labels
    idx = np.random.default_rng(seed).choice(feats.shape[0], n, replace=False)
    return feats[idx], labels[idx]


def plot_softmax_features(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                          path: str | Path, max_points: int = 10000) -> None:
    """Fig. 2 analogue: softmax-only 2-D features of (a) the training set and (b) the test set."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), dpi=110)
    for ax, (f, y), name in zip(axes, (train, test), ("(a) training set", "(b) test set")):
        f, y = _subsample(f, y, max_points)
        _scatter(ax, f, y, None, f"softmax only, {name}")
    axes[1].legend(markerscale=6, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_lambda_panels(panels: Sequence[dict], path: str | Path, max_points: int = 10000) -> None:
    """Fig. 3 analogue: one panel per lambda; each dict has ``feats``, ``labels``, ``centers``, ``title``."""
    n = len(panels)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), dpi=110, squeeze=False)
    for ax, p in zip(axes.ravel(), panels):
        f, y = _subsample(p["feats"], p["labels"], max_points)
        _scatter(ax, f, y, p.get("centers"), p["title"])
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_compactness(lambdas: Sequence[float], compactness: Sequence[float], accuracy: Sequence[float],
                     path: str | Path) -> None:
    """Compactness (intra/inter) and test accuracy against lambda (lambda = 0 drawn at the left edge)."""
    lam = np.asarray(lambdas, dtype=float)
    pos = lam[lam > 0]
    x0 = pos.min() / 10 if pos.size else 1e-5
    xs = np.where(lam > 0, lam, x0)
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    ax.plot(xs, compactness, "o-", color="tab:blue")
    ax.set_xscale("log")
    ax.set_xticks(xs, ["0\n(softmax)" if v == 0 else f"{v:g}" for v in lam])
    ax.minorticks_off()
    ax.set_xlabel("lambda")
    ax.set_ylabel("compactness = intra / inter (lower is tighter)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(xs, np.asarray(accuracy) * 100, "s--", color="tab:red")
    ax2.set_ylabel("test accuracy (%)", color="tab:red")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
