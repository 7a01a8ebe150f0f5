"""k-fold pair verification as in the paper's LFW protocol (PAPER.md Sec. 4-5): pure numpy, no image I/O.

For every fold ``k`` (the *held-out* fold):

1. the mean feature -- and, with ``pca_dim``, a PCA basis -- is fitted on the features of the pairs in the
   *other* folds only (both sides of every pair, one row per pair side, as the SphereFace/caffe-face script
   does; an image in several pairs counts several times);
2. every pair is centred, optionally projected, L2-normalised and scored by cosine similarity;
3. the accuracy-maximising threshold is chosen on the other folds' scores (:func:`metrics.best_threshold`)
   and applied to the held-out fold: accuracy ``k``.

Reported: mean and sample standard deviation (ddof=1) of the fold accuracies, and the standard error
``std / sqrt(k)`` that the LFW site asks for. ROC, AUC, EER and TAR@FAR use the **pooled held-out scores**:
each pair's score is the one it got while its own fold was held out (normalised by the statistics of the
other folds), and all pairs' scores go into one ROC. No pair is ever scored with statistics that saw it.

Any number of folds >= 2 works (e.g. a subset of LFW's folds). A *single* fold -- say the one fold whose
identities were kept out of training -- has no training folds, so you must say how to get them:
``subfolds=k`` splits its pairs into ``k`` stratified random sub-folds (seeded, deterministic) and runs the
same protocol on them. Caveat: unlike LFW's folds, sub-folds are not person-disjoint, so the mean, PCA and
threshold of one sub-fold are fitted on pairs that may share people with it. Only a handful of numbers are
fitted, so the bias is small, but say "single fold, k sub-folds" when you report it (``result.protocol`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError
from . import metrics

__all__ = ["VerificationResult", "evaluate_pairs", "fold_normalisers", "stratified_subfolds"]


@dataclass
class VerificationResult:
    """Outcome of :func:`evaluate_pairs`. Arrays are per pair (length P) or per fold (length K)."""

    accuracy_mean: float
    accuracy_std: float  # sample std (ddof=1) of the fold accuracies
    accuracy_sem: float  # accuracy_std / sqrt(K), the LFW "standard error of the mean"
    fold_accuracies: np.ndarray  # (K,)
    fold_thresholds: np.ndarray  # (K,) cosine thresholds chosen on each fold's training folds
    folds: np.ndarray  # (K,) the fold ids, sorted
    auc: float
    eer: float
    eer_threshold: float
    tar_at_far: dict[float, float]
    tar_threshold: dict[float, float]
    tar_resolution: float  # 1 / number of impostor pairs
    scores: np.ndarray  # (P,) pooled held-out cosine scores
    issame: np.ndarray  # (P,)
    fold_ids: np.ndarray  # (P,) fold of each pair (sub-fold ids when subfolds was used)
    roc: metrics.Roc
    pca_dim: int | None
    center: bool
    protocol: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-pair arrays)."""
        return {
            "protocol": self.protocol,
            "n_pairs": int(self.issame.size),
            "n_genuine": int(self.issame.sum()),
            "n_impostor": int((~self.issame).sum()),
            "n_folds": int(self.folds.size),
            "pca_dim": self.pca_dim,
            "center": self.center,
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": self.accuracy_std,
            "accuracy_sem": self.accuracy_sem,
            "fold_accuracies": [float(a) for a in self.fold_accuracies],
            "fold_thresholds": [float(t) for t in self.fold_thresholds],
            "auc": self.auc,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "tar_at_far": {_far_key(f): v for f, v in self.tar_at_far.items()},
            "tar_threshold": {_far_key(f): v for f, v in self.tar_threshold.items()},
            "tar_resolution": self.tar_resolution,
            "pooled_scores": "each pair scored while its own fold was held out (mean/PCA/threshold from the "
                             "other folds); AUC, EER and TAR@FAR use all pairs' pooled scores",
            **self.extra,
        }


def _far_key(far: float) -> str:
    return f"{far:g}"


def stratified_subfolds(issame: np.ndarray | Sequence[bool], k: int, seed: int = 0) -> np.ndarray:
    """Fold ids 0..k-1 for each pair: genuine and impostor pairs are shuffled (seeded) and dealt round-robin,
    so every sub-fold gets the same class balance (+-1)."""
    y = np.asarray(issame, dtype=bool).ravel()
    if k < 2:
        raise DataError(f"subfolds must be >= 2, got {k}")
    if min(int(y.sum()), int((~y).sum())) < k:
        raise DataError(f"cannot split {int(y.sum())} genuine / {int((~y).sum())} impostor pairs into {k} "
                        "sub-folds that each hold both kinds")
    rng = np.random.default_rng(seed)
    out = np.empty(y.size, dtype=np.int64)
    for cls in (True, False):
        idx = np.flatnonzero(y == cls)
        out[rng.permutation(idx)] = np.arange(idx.size) % k
    return out


def _validate(features_a: np.ndarray, features_b: np.ndarray, issame: Any, fold_ids: Any) -> tuple:
    a = np.asarray(features_a)
    b = np.asarray(features_b)
    if a.ndim != 2 or a.shape != b.shape:
        raise DataError(f"features_a and features_b must both be (P, D); got {a.shape} and {b.shape}")
    y = np.asarray(issame)
    if y.dtype != np.bool_:
        if not np.all(np.isin(y, (0, 1))):
            raise DataError("issame must hold booleans (or 0/1)")
        y = y.astype(bool)
    if y.shape != (a.shape[0],):
        raise DataError(f"issame must have shape ({a.shape[0]},), got {y.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise DataError("features contain NaN or infinite values")
    if fold_ids is not None:
        fold_ids = np.asarray(fold_ids)
        if fold_ids.shape != (a.shape[0],):
            raise DataError(f"fold_ids must have shape ({a.shape[0]},), got {fold_ids.shape}")
    return a, b, y, fold_ids


def fold_normalisers(
    features_a: np.ndarray, features_b: np.ndarray, fold_ids: np.ndarray, pca_dim: int | None = None,
    center: bool = True,
) -> dict[Any, tuple[np.ndarray, np.ndarray | None]]:
    """For each fold id ``k``: ``(mean (D,), basis (D, pca_dim) or None)`` fitted on all *other* folds' pairs.

    Per-fold sums and scatter matrices are computed once; fold k's training statistics are the totals minus
    fold k's share, so K folds cost one pass over the data plus K eigendecompositions (float64 throughout).
    """
    a = np.asarray(features_a, dtype=np.float64)  # (P, D)
    b = np.asarray(features_b, dtype=np.float64)
    folds = np.unique(fold_ids)
    d = a.shape[1]
    if pca_dim is not None and not 1 <= pca_dim <= d:
        raise DataError(f"pca_dim must be between 1 and the feature size {d}, got {pca_dim}")
    if pca_dim is not None and not center:
        raise DataError("PCA needs centred features; center=False is only for plain cosine without PCA")
    sums, counts, scatters = {}, {}, {}
    for f in folds:
        m = fold_ids == f
        sums[f] = a[m].sum(0) + b[m].sum(0)  # (D,)
        counts[f] = 2 * int(m.sum())
        if pca_dim is not None:
            scatters[f] = a[m].T @ a[m] + b[m].T @ b[m]  # (D, D)
    total_sum = sum(sums.values())
    total_n = sum(counts.values())
    total_scatter = sum(scatters.values()) if pca_dim is not None else None
    out: dict[Any, tuple[np.ndarray, np.ndarray | None]] = {}
    for f in folds:
        n = total_n - counts[f]
        mu = (total_sum - sums[f]) / n if center else np.zeros(d)
        basis = None
        if pca_dim is not None:
            if n - 1 < pca_dim:
                raise DataError(f"pca_dim={pca_dim} needs more than {pca_dim} training rows; fold {f} has {n}")
            cov = (total_scatter - scatters[f]) / n - np.outer(mu, mu)  # (D, D) training covariance
            basis = _top_eigvecs(cov, pca_dim)
        out[f] = (mu, basis)
    return out


def _top_eigvecs(cov: np.ndarray, k: int) -> np.ndarray:
    """Eigenvectors of the ``k`` largest eigenvalues of a symmetric matrix, (D, k), largest first.

    LAPACK runs single-threaded here: the tridiagonal reduction is a long chain of small BLAS-2 calls, so
    threads gain little, and on a machine whose cores are busy with other work multi-threaded OpenBLAS
    waits on descheduled threads at every call (measured: 13 s instead of 0.09 s for D = 1024 on the shared
    2-core dev box).
    """
    d = cov.shape[0]
    with _single_thread_blas():
        try:  # scipy (always present with scikit-learn) can compute only the wanted eigenpairs
            from scipy.linalg import eigh

            _, vecs = eigh(cov, subset_by_index=[d - k, d - 1], driver="evr")
        except ImportError:  # pragma: no cover
            _, vecs = np.linalg.eigh(cov)
            vecs = vecs[:, d - k:]
    return np.ascontiguousarray(vecs[:, ::-1])


def _single_thread_blas():
    try:  # threadpoolctl ships with scikit-learn
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:  # pragma: no cover
        from contextlib import nullcontext

        return nullcontext()


class _PairScorer:
    """Cosine scores of all pairs under a given (mean, basis). Without PCA it expands
    ``(a-mu).(b-mu) = a.b - a.mu - b.mu + mu.mu`` (float64), so each fold costs two mat-vecs instead of
    re-centring the whole (P, D) arrays."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a, self.b = a, b  # (P, D) float64
        self.ab = np.einsum("ij,ij->i", a, b)  # (P,)
        self.aa = np.einsum("ij,ij->i", a, a)
        self.bb = np.einsum("ij,ij->i", b, b)

    def __call__(self, mu: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
        if basis is None:
            am, bm, mm = self.a @ mu, self.b @ mu, float(mu @ mu)  # (P,), (P,), scalar
            dots = self.ab - am - bm + mm
            na2 = np.maximum(self.aa - 2 * am + mm, 0.0)
            nb2 = np.maximum(self.bb - 2 * bm + mm, 0.0)
        else:
            shift = mu @ basis  # (pca_dim,)
            za = self.a @ basis - shift  # (P, pca_dim)
            zb = self.b @ basis - shift
            dots = np.einsum("ij,ij->i", za, zb)
            na2 = np.einsum("ij,ij->i", za, za)
            nb2 = np.einsum("ij,ij->i", zb, zb)
        return dots / np.maximum(np.sqrt(na2 * nb2), 1e-300)  # zero vectors score 0


def evaluate_pairs(
    features_a: np.ndarray,
    features_b: np.ndarray,
    issame: np.ndarray | Sequence[bool],
    fold_ids: np.ndarray | Sequence[int] | None = None,
    pca_dim: int | None = None,
    *,
    center: bool = True,
    subfolds: int | None = None,
    seed: int = 0,
    fars: Sequence[float] = (1e-3, 1e-2),
) -> VerificationResult:
    """k-fold verification of pairs ``(features_a[i], features_b[i])`` labelled ``issame[i]``.

    Args:
        features_a, features_b: (P, D) features of the two sides of each pair (any embedding).
        issame: (P,) True for genuine pairs.
        fold_ids: (P,) fold of each pair; >= 2 distinct values run the protocol over those folds. ``None`` or
            a single value means "one fold": then ``subfolds`` is required.
        pca_dim: fit PCA to this many dimensions on each training split (``None``: no PCA).
        center: subtract the training folds' mean before scoring (the paper's protocol; ``False`` gives plain
            cosine, whose thresholds transfer to ``centerloss verify``).
        subfolds: only for a single fold: split it into this many stratified sub-folds (see module docstring).
        seed: seed of the sub-fold split.
        fars: FARs at which to report TAR.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=(200, 8)); same = np.arange(200) % 2 == 0
        >>> b = np.where(same[:, None], a + 0.1 * rng.normal(size=a.shape), rng.normal(size=a.shape))
        >>> r = evaluate_pairs(a, b, same, np.arange(200) % 10)
        >>> r.accuracy_mean > 0.95
        True
    """
    a, b, y, fold_ids = _validate(features_a, features_b, issame, fold_ids)
    n_unique = 0 if fold_ids is None else np.unique(fold_ids).size
    if n_unique <= 1:
        if subfolds is None:
            raise DataError("all pairs are in one fold, so there are no training folds to fit the mean, PCA and "
                            "threshold on; pass subfolds=k (CLI: --subfolds K), e.g. 10, to split this fold into k stratified "
                            "sub-folds (see centerloss.eval.verification)")
        fold_ids = stratified_subfolds(y, subfolds, seed)
        protocol = f"single fold split into {subfolds} stratified sub-folds (seed {seed}; not person-disjoint)"
    else:
        if subfolds is not None:
            raise DataError(f"subfolds is only for a single fold; these pairs already have {n_unique} folds")
        protocol = f"{n_unique}-fold cross-validation over the given folds"
    folds = np.unique(fold_ids)
    a64 = a.astype(np.float64, copy=False)
    b64 = b.astype(np.float64, copy=False)
    norms = fold_normalisers(a64, b64, fold_ids, pca_dim, center)
    scorer = _PairScorer(a64, b64)

    pooled = np.empty(y.size)
    accs = np.empty(folds.size)
    thrs = np.empty(folds.size)
    for i, f in enumerate(folds):
        test = fold_ids == f
        train = ~test
        if y[train].all() or not y[train].any():
            raise DataError(f"the training folds for held-out fold {f} lack genuine or impostor pairs")
        mu, basis = norms[f]
        s = scorer(mu, basis)  # (P,) every pair under fold f's normalisation
        thrs[i], _ = metrics.best_threshold(s[train], y[train])
        accs[i] = np.mean((s[test] >= thrs[i]) == y[test])
        pooled[test] = s[test]

    roc = metrics.roc_curve(pooled, y)
    eer, eer_thr = metrics.eer(roc)
    tars = metrics.tar_at_far(pooled, y, fars)
    std = float(np.std(accs, ddof=1))
    return VerificationResult(
        accuracy_mean=float(accs.mean()),
        accuracy_std=std,
        accuracy_sem=std / float(np.sqrt(folds.size)),
        fold_accuracies=accs,
        fold_thresholds=thrs,
        folds=folds,
        auc=metrics.auc(roc),
        eer=eer,
        eer_threshold=eer_thr,
        tar_at_far={t.far: t.tar for t in tars},
        tar_threshold={t.far: t.threshold for t in tars},
        tar_resolution=1.0 / roc.n_impostor,
        scores=pooled,
        issame=y,
        fold_ids=np.asarray(fold_ids),
        roc=roc,
        pca_dim=pca_dim,
        center=center,
        protocol=protocol,
    )
