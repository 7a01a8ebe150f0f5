"""Plots of 2-D deep features, the analogues of the paper's Figs. 2 and 3, and center trajectories.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot, so importing this module changes no
global backend) and written atomically. matplotlib is the ``plots`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..utils.atomic import atomic_path

_COLORS = colormaps["tab10"].colors


def save(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


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


def _grid(n: int, cols: int | None, size: float) -> tuple[Figure, np.ndarray]:
    cols = max(1, min(n, cols or 3))
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(size * cols, size * rows), dpi=110)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes


def plot_softmax_features(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                          path: str | Path, max_points: int = 10000) -> None:
    """Fig. 2 analogue: softmax-only 2-D features of (a) the training set and (b) the test set."""
    fig, axes = _grid(2, 2, 5)
    for ax, (f, y), name in zip(axes.ravel(), (train, test), ("(a) training set", "(b) test set")):
        f, y = _subsample(f, y, max_points)
        _scatter(ax, f, y, None, f"softmax only, {name}")
    axes.ravel()[1].legend(markerscale=6, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    save(fig, path)


def plot_lambda_panels(panels: Sequence[dict], path: str | Path, max_points: int = 10000,
                       cols: int | None = None) -> None:
    """Fig. 3 analogue: one panel per run; each dict has ``feats``, ``labels``, ``centers``, ``title``."""
    fig, axes = _grid(len(panels), cols, 4.2)
    for ax, p in zip(axes.ravel(), panels):
        f, y = _subsample(p["feats"], p["labels"], max_points)
        _scatter(ax, f, y, p.get("centers"), p["title"])
    fig.tight_layout()
    save(fig, path)


def plot_compactness(lambdas: Sequence[float], compactness: Sequence[float], accuracy: Sequence[float],
                     path: str | Path) -> None:
    """Compactness (intra/inter) and test accuracy against lambda (lambda = 0 drawn at the left edge)."""
    lam = np.asarray(lambdas, dtype=float)
    pos = lam[lam > 0]
    x0 = pos.min() / 10 if pos.size else 1e-5
    xs = np.where(lam > 0, lam, x0)
    fig = Figure(figsize=(6, 3.8), dpi=110)
    ax = fig.subplots()
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
    save(fig, path)


def plot_center_trajectories(runs: Sequence[tuple[str, dict[str, Any]]], path: str | Path,
                             cols: int | None = None) -> None:
    """One panel per run: each class center's path in the 2-D feature plane over training.

    ``runs``: ``(title, {"steps": [...], "centers": (T, C, 2)})``.
    """
    fig, axes = _grid(len(runs), cols, 4.2)
    for ax, (title, t) in zip(axes.ravel(), runs):
        c = np.asarray(t["centers"])  # (T, C, 2)
        for k in range(c.shape[1]):
            col = _COLORS[k % 10]
            ax.plot(c[:, k, 0], c[:, k, 1], "-", color=col, lw=1.0, alpha=0.8)
            ax.scatter(c[0, k, 0], c[0, k, 1], s=18, facecolors="none", edgecolors=col)
            ax.scatter(c[-1, k, 0], c[-1, k, 1], s=18, color=col)
        ax.set_title(f"{title}: steps {t['steps'][0]}-{t['steps'][-1]}", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    save(fig, path)
