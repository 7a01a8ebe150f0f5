"""Figures for verification results: ROC (TAR vs FAR on a log axis) and genuine/impostor score histograms.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it is safe in
tests, on servers and inside other people's notebooks. matplotlib is the optional extra ``centerloss[plots]``:
:func:`plots_available` says whether it is installed (reports then skip the plots and say so), and the
plotting functions raise a one-line :class:`~centerloss.errors.ConfigError` without it. Figures are saved
through :func:`centerloss.utils.atomic.atomic_path`, so a PNG is complete or absent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..utils.atomic import atomic_path
from .verification import VerificationResult

__all__ = ["PLOTS_HINT", "plot_roc", "plot_score_histograms", "plots_available", "roc_figure", "save_figure",
           "score_histogram_figure"]

PLOTS_HINT = "install centerloss[plots] for the ROC plots"


def plots_available() -> bool:
    """Whether matplotlib (the ``plots`` extra) can be imported."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return False
    return True


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write a figure atomically (the format follows the suffix of ``path``, which the temp name keeps)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def _figure(size: tuple[float, float]):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f"matplotlib is not installed: {PLOTS_HINT}") from None

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_roc(results: VerificationResult | Sequence[VerificationResult], path: str | os.PathLike[str],
             labels: Sequence[str] | None = None, title: str = "ROC (pooled held-out scores)") -> None:
    """TAR against FAR (log x) for one or more results; marks each result's TAR@FAR points and EER."""
    save_figure(roc_figure(results, labels, title), path)


def roc_figure(results: VerificationResult | Sequence[VerificationResult], labels: Sequence[str] | None = None,
               title: str = "ROC (pooled held-out scores)") -> Any:
    """The figure of :func:`plot_roc` (matplotlib ``Figure``), not yet saved."""
    rs = [results] if isinstance(results, VerificationResult) else list(results)
    labels = list(labels) if labels is not None else [f"run {i + 1}" for i in range(len(rs))]
    fig = _figure((5.5, 4.8 + 0.15 * len(rs)))
    ax = fig.add_subplot(1, 1, 1)
    floor = min(r.tar_resolution for r in rs) / 2
    for r, lab in zip(rs, labels, strict=True):
        fpr = np.maximum(r.roc.fpr, floor)
        line, = ax.step(fpr, r.roc.tpr, where="post",
                        label=f"{lab}: acc {100 * r.accuracy_mean:.2f}%, AUC {r.auc:.4f}, EER {100 * r.eer:.2f}%")
        for far, tar in r.tar_at_far.items():
            ax.plot([far], [tar], "o", color=line.get_color(), ms=4)
            ax.annotate(f"{100 * tar:.1f}% @ {far:g}", (far, tar), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color=line.get_color())
        ax.plot([r.eer], [1 - r.eer], "x", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def plot_score_histograms(result: VerificationResult, path: str | os.PathLike[str],
                          title: str = "cosine scores (held-out)") -> None:
    """Histograms of genuine and impostor scores, with the mean fold threshold and the EER threshold."""
    save_figure(score_histogram_figure(result, title), path)


def score_histogram_figure(result: VerificationResult, title: str = "cosine scores (held-out)") -> Any:
    """The figure of :func:`plot_score_histograms`, not yet saved."""
    fig = _figure((5.5, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    s, y = result.scores, result.issame
    pad = 0.05 * max(float(s.max() - s.min()), 1e-6)
    bins = np.linspace(s.min() - pad, s.max() + pad, 81)
    ax.hist(s[y], bins=bins, alpha=0.6, label=f"matched ({int(y.sum())})", color="tab:green")
    ax.hist(s[~y], bins=bins, alpha=0.6, label=f"mismatched ({int((~y).sum())})", color="tab:red")
    thr = float(np.mean(result.fold_thresholds))
    ax.axvline(thr, color="k", lw=1, label=f"mean fold threshold {thr:.3f}")
    ax.axvline(result.eer_threshold, color="k", lw=1, ls="--", label=f"EER threshold {result.eer_threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("pairs")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
