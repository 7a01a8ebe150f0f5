"""Verification metrics on similarity scores: ROC, AUC, EER, TAR@FAR and the accuracy-optimal threshold.

Pure numpy, no I/O. One convention everywhere: a higher score means "more alike", and a pair is *accepted*
(predicted "same person") when ``score >= threshold``.

Definitions (P genuine pairs, N impostor pairs):

* ROC: one point per distinct score value ``t`` (plus the point (0, 0) at ``t = +inf``), with
  ``TPR(t) = #{genuine >= t} / P`` and ``FPR(t) = #{impostor >= t} / N``. Identical to
  ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
* AUC: trapezoidal area under that ROC (ties count one half, i.e. the Mann-Whitney statistic).
* EER: the ROC is joined by straight lines; the EER is the FPR where ``FPR = 1 - TPR`` on that polyline
  (the usual ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`` definition, solved in closed form).
* TAR@FAR: the best TPR among thresholds whose FPR is at most ``far`` -- an operating point you can actually
  pick, no interpolation. With ``k = floor(far * N)`` it accepts scores strictly above the (k+1)-th largest
  impostor score. If ``far * N < 1`` no false accept is allowed at all; the result is then limited by the
  number of impostors, which :func:`tar_at_far` reports as ``resolution``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

__all__ = [
    "Roc",
    "TarAtFar",
    "auc",
    "best_threshold",
    "eer",
    "roc_curve",
    "tar_at_far",
    "tar_from_sorted",
]


@dataclass(frozen=True)
class Roc:
    """ROC points in order of decreasing threshold; ``fpr``, ``tpr``, ``thresholds`` have equal length."""

    fpr: np.ndarray  # (T,)
    tpr: np.ndarray  # (T,)
    thresholds: np.ndarray  # (T,), thresholds[0] = +inf
    n_genuine: int
    n_impostor: int


@dataclass(frozen=True)
class TarAtFar:
    far: float  # requested false-accept rate
    tar: float  # true-accept rate at the chosen threshold
    threshold: float  # accept when score >= threshold
    achieved_far: float  # actual FPR at that threshold (<= far)
    resolution: float  # 1 / n_impostor: the smallest FAR step this data can express


def _check(scores: np.ndarray | Sequence[float], issame: np.ndarray | Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(issame)
    if y.dtype != np.bool_:
        if not np.all(np.isin(y, (0, 1))):
            raise DataError("issame must hold booleans (or 0/1)")
        y = y.astype(bool)
    y = y.ravel()
    if s.shape != y.shape:
        raise DataError(f"scores and issame differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise DataError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    if not y.any() or y.all():
        raise DataError("need both genuine (issame=True) and impostor (issame=False) pairs")
    return s, y


def roc_curve(scores: np.ndarray | Sequence[float], issame: np.ndarray | Sequence[bool]) -> Roc:
    """The full ROC (every distinct score is a threshold); equals scikit-learn's with ``drop_intermediate=False``."""
    s, y = _check(scores, issame)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]  # (n,) descending
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]  # last index of each run of equal scores
    tps = np.cumsum(y_sorted)[ends]
    fps = ends + 1 - tps
    p, n = int(y.sum()), int(y.size - y.sum())
    return Roc(
        fpr=np.r_[0.0, fps / n],
        tpr=np.r_[0.0, tps / p],
        thresholds=np.r_[np.inf, s_sorted[ends]],
        n_genuine=p,
        n_impostor=n,
    )


def auc(roc: Roc) -> float:
    """Trapezoidal area under the ROC."""
    return float(np.sum(np.diff(roc.fpr) * (roc.tpr[1:] + roc.tpr[:-1])) / 2.0)


def eer(roc: Roc) -> tuple[float, float]:
    """Equal error rate and the (linearly interpolated) threshold where FPR = FNR; returns ``(eer, threshold)``."""
    g = 1.0 - roc.tpr - roc.fpr  # FNR - FPR along the curve: starts at 1, ends at -1, never increases
    i = int(np.argmax(g <= 0.0))  # first point at or past the crossing (i >= 1 since g[0] = 1)
    g0, g1 = g[i - 1], g[i]
    t = g0 / (g0 - g1)  # fraction along segment (i-1, i); g0 > 0 >= g1 so 0 < t <= 1
    rate = roc.fpr[i - 1] + t * (roc.fpr[i] - roc.fpr[i - 1])
    th0 = roc.thresholds[i - 1]
    th = roc.thresholds[i] if not np.isfinite(th0) else th0 + t * (roc.thresholds[i] - th0)
    return float(rate), float(th)


def tar_at_far(
    scores: np.ndarray | Sequence[float],
    issame: np.ndarray | Sequence[bool],
    fars: Sequence[float] = (1e-3, 1e-2),
) -> list[TarAtFar]:
    """TAR at each requested FAR (see the module docstring for the exact rule). One sort, no Python loop over
    thresholds."""
    s, y = _check(scores, issame)
    neg = np.sort(s[~y])[::-1]  # (N,) descending impostor scores
    pos = np.sort(s[y])  # (P,) ascending genuine scores
    return [tar_from_sorted(pos, neg, far) for far in fars]


def tar_from_sorted(pos_asc: np.ndarray, neg_desc: np.ndarray, far: float,
                     n_impostor: int | None = None) -> TarAtFar:
    """TAR@FAR from sorted genuine scores and the *largest* impostor scores (``neg_desc`` may be only the top of
    a bigger impostor set of size ``n_impostor``, as in 1:N search)."""
    if not 0.0 <= far <= 1.0:
        raise DataError(f"FAR must be in [0, 1], got {far}")
    n = int(n_impostor if n_impostor is not None else neg_desc.size)
    k = int(np.floor(far * n * (1 + 1e-12)))  # allowed false accepts; the fudge keeps 1e-3 * 3000 == 3
    if k >= n:
        cut = -np.inf
        fa = n
    else:
        if k >= neg_desc.size:
            raise DataError(f"need the top {k + 1} impostor scores for FAR {far}, got {neg_desc.size}")
        cut = neg_desc[k]  # accept only scores > cut
        fa = int(np.searchsorted(-neg_desc[: k + 1], -cut, side="left"))  # impostors strictly above cut
    n_acc = pos_asc.size - int(np.searchsorted(pos_asc, cut, side="right"))
    threshold = float(np.nextafter(cut, np.inf)) if np.isfinite(cut) else -np.inf
    return TarAtFar(far=float(far), tar=n_acc / pos_asc.size, threshold=threshold,
                    achieved_far=fa / n, resolution=1.0 / n)


def best_threshold(scores: np.ndarray | Sequence[float], issame: np.ndarray | Sequence[bool]) -> tuple[float, float]:
    """The threshold that maximises accuracy on these pairs; returns ``(threshold, accuracy)``.

    Candidates are the midpoints between consecutive distinct scores plus one below and one above all of them
    -- every distinct decision rule once. Sorting and cumulative sums make this O(n log n). When several cuts
    tie for the best accuracy the middle one (by rank) is taken, so the threshold does not sit on the edge of
    a flat optimum.
    """
    s, y = _check(scores, issame)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]  # ascending
    n, p = s.size, int(y.sum())
    # cut c (0..n): predict "same" for sorted positions >= c
    neg_below = np.r_[0, np.cumsum(~y)]  # (n+1,) impostors at positions < c: correct rejections
    pos_above = p - np.r_[0, np.cumsum(y)]  # (n+1,) genuine at positions >= c: correct accepts
    correct = neg_below + pos_above
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] > s[:-1]  # cutting inside a run of equal scores is not a realisable rule
    correct = np.where(valid, correct, -1)
    best = np.flatnonzero(correct == correct.max())
    c = int(best[(best.size - 1) // 2])
    if c == 0:
        thr = s[0] - 1.0
    elif c == n:
        thr = s[-1] + 1.0
    else:
        thr = s[c - 1] + (s[c] - s[c - 1]) / 2.0
        if not s[c - 1] < thr <= s[c]:  # adjacent floats: the midpoint rounds onto the lower score
            thr = s[c]
    return float(thr), float(correct[c] / n)
