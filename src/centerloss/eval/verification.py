"""k-fold pair verification as in the paper's LFW protocol (docs/METHOD.md; paper Sec. 4-5): pure numpy, no image I/O.

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
from contextlib import AbstractContextManager, nullcontext
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


def _validate(features_a: np.ndarray, features_b: np.ndarray | None, issame: Any, fold_ids: Any,
              pair_index: tuple[Any, Any] | None = None) -> tuple:
    if pair_index is None:
        if features_b is None:
            raise DataError("features_b is None: pass the (P, D) features of the pairs' second sides, or pass one "
                            "per-image table as features_a together with pair_index=(index_a, index_b)")
        a, b, images = np.asarray(features_a), np.asarray(features_b), None
    else:
        a, b, images = _gather_indexed(features_a, features_b, pair_index)
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
    return a, b, y, fold_ids, images


def _gather_indexed(table: Any, features_b: Any, pair_index: tuple[Any, Any]) -> tuple:
    """For ``pair_index``: the pair sides ``a, b`` (P, D) each, and ``(table (N, D), used (U,), ja (P,), jb (P,))``:
    the U distinct table rows the pairs use (ascending) and each side's position in ``used``."""
    if features_b is not None:
        raise DataError("with pair_index, pass the per-image table (N, D) as features_a and features_b=None")
    t = np.asarray(table)
    if t.ndim != 2:
        raise DataError(f"with pair_index, features_a must be a per-image table (N, D); got shape {t.shape}")
    try:
        ia, ib = (np.asarray(i) for i in pair_index)
    except (TypeError, ValueError):
        raise DataError("pair_index must be a pair (index_a, index_b) of integer arrays") from None
    if ia.ndim != 1 or ia.shape != ib.shape or not all(np.issubdtype(i.dtype, np.integer) for i in (ia, ib)):
        raise DataError(f"pair_index must be two integer arrays of shape (P,); got {ia.dtype}{ia.shape} and "
                        f"{ib.dtype}{ib.shape}")
    both = np.concatenate([ia, ib])  # (2P,)
    if both.size and (both.min() < 0 or both.max() >= t.shape[0]):
        raise DataError(f"pair_index holds indices outside the table's {t.shape[0]} rows "
                        f"(min {both.min()}, max {both.max()})")
    used, rows = np.unique(both, return_inverse=True)  # (U,), (2P,)
    return t[ia], t[ib], (t, used, rows[:ia.size], rows[ia.size:])


def fold_normalisers(
    features_a: np.ndarray, features_b: np.ndarray, fold_ids: np.ndarray, pca_dim: int | None = None,
    center: bool = True,
) -> dict[Any, tuple[np.ndarray, np.ndarray | None]]:
    """For each fold id ``k``: ``(mean (D,), basis (D, pca_dim) or None)`` fitted on all *other* folds' pairs
    (see :class:`_FoldStatistics` for how)."""
    a64 = np.asarray(features_a, dtype=np.float64)  # (P, D)
    b64 = np.asarray(features_b, dtype=np.float64)
    fold_ids = np.asarray(fold_ids)
    folds = np.unique(fold_ids)
    with _single_thread_blas():
        stats = _FoldStatistics(a64, b64, fold_ids, folds, pca_dim, center)
        return {f: stats.fit(i) for i, f in enumerate(folds)}


class _FoldStatistics:
    """Per-fold sufficient statistics, computed once; :meth:`fit` turns the other folds' into fold k's mean
    and PCA basis.

    Why: refitting on the training rows of every fold would redo K-1 folds' work K times. Instead each fold's
    statistics are computed once -- row count ``n_j``, mean ``m_j`` and the scatter
    ``C_j = (X_j - m_j)^T (X_j - m_j)`` of its own rows (one symmetric product per fold) -- and fold k's
    training statistics are combined from the others' (the pooled-scatter / parallel-axis identity)::

        n = sum_{j != k} n_j,   mu = sum_{j != k} n_j m_j / n,
        S = sum_{j != k} C_j + sum_{j != k} n_j (m_j - mu)(m_j - mu)^T,   cov = S / n

    So K folds cost one pass over the data, K rank-(K-1) corrections and K eigendecompositions, each asked
    for the top ``pca_dim`` eigenpairs only. The sums over ``j != k`` come from prefix and suffix sums
    (:func:`_leave_one_out_sums`), never as "total minus fold k": fold k's data does not enter its own
    statistics at all, not even as rounding error.

    float64 throughout: a float32 scatter would be cheaper, but its rounding (~1e-6 relative, growing with the
    row count) tilts the PCA basis enough to move scores by ~1e-6 where eigenvalues lie close together -- far
    more than the rounding already in float32 features does.
    """

    def __init__(self, a64: np.ndarray, b64: np.ndarray, fold_ids: np.ndarray, folds: np.ndarray,
                 pca_dim: int | None, center: bool) -> None:
        d = a64.shape[1]
        if folds.size < 2:
            raise DataError(f"need at least 2 folds to fit on the other folds, got {folds.size}")
        if pca_dim is not None and not 1 <= pca_dim <= d:
            raise DataError(f"pca_dim must be between 1 and the feature size {d}, got {pca_dim}")
        if pca_dim is not None and not center:
            raise DataError("PCA needs centred features; center=False is only for plain cosine without PCA")
        self.folds, self.pca_dim, self.center = folds, pca_dim, center

        def own(f: Any) -> tuple[int, np.ndarray, np.ndarray | None]:
            m = fold_ids == f
            x = np.concatenate([a64[m], b64[m]])  # (n_j, D)
            mean = x.mean(0)
            if pca_dim is None:
                return x.shape[0], mean, None
            x -= mean
            return x.shape[0], mean, x.T @ x  # X^T X of one array: numpy calls BLAS syrk, half a general product

        per_fold = [own(f) for f in folds]
        self.counts = np.array([c for c, _, _ in per_fold], dtype=np.float64)  # (K,) rows: both pair sides
        self.means = np.stack([m for _, m, _ in per_fold])  # (K, D)
        # K x (D, D): entry k sums all folds but k; fit(k) uses it up (in place) and drops it
        self.train_scatters: list[np.ndarray | None] = (
            list(_leave_one_out_sums([c for _, _, c in per_fold])) if pca_dim is not None else [])

    def fit(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(mean (D,), basis (D, pca_dim) or None)`` of all folds but the i-th; at most once per fold with PCA."""
        others = np.arange(self.folds.size) != i
        counts, means = self.counts[others], self.means[others]  # (K-1,), (K-1, D)
        n = counts.sum()
        mu = counts @ means / n if self.center else np.zeros(means.shape[1])  # (D,)
        if self.pca_dim is None:
            return mu, None
        if n - 1 < self.pca_dim:
            raise DataError(f"pca_dim={self.pca_dim} needs more than {self.pca_dim} training rows; "
                            f"fold {self.folds[i]} has {n:.0f}")
        dev = (means - mu) * np.sqrt(counts)[:, None]  # (K-1, D)
        cov, self.train_scatters[i] = self.train_scatters[i], None
        if cov is None:
            raise RuntimeError(f"fold {self.folds[i]} was already fitted")
        cov += dev.T @ dev  # between-fold part of the training scatter about mu
        cov /= n  # training covariance (ddof=0)
        return mu, _top_eigvecs(cov, self.pca_dim)  # (D, pca_dim); overwrites cov


def _work_dtype(*arrays: np.ndarray) -> np.dtype:
    """float32 for float32 (or narrower) features, float64 otherwise: the big products never run at a lower
    precision than the features were given in."""
    return np.result_type(*(x.dtype for x in arrays), np.float32)


def _leave_one_out_sums(parts: list[np.ndarray]) -> list[np.ndarray]:
    """``[sum(parts[j] for j != k) for k in range(K)]`` (K >= 2) from prefix and suffix sums: about 3K
    additions instead of K^2, and no subtraction, so ``parts[k]`` never touches the k-th sum. ``parts`` is not
    modified."""
    k = len(parts)
    prefix = [parts[0].copy()]  # prefix[i] = parts[0] + ... + parts[i]
    for p in parts[1:-1]:
        prefix.append(prefix[-1] + p)
    out: list[np.ndarray] = [prefix[0]] * k  # placeholders, all overwritten below
    out[k - 1] = prefix[k - 2]
    suffix = parts[k - 1].copy()  # parts[i + 1] + ... + parts[K - 1]
    for i in range(k - 2, 0, -1):
        out[i] = prefix[i - 1]  # prefix[i - 1] is not needed any more: add in place
        out[i] += suffix
        suffix += parts[i]
    out[0] = suffix
    return out


def _top_eigvecs(cov: np.ndarray, k: int) -> np.ndarray:
    """Eigenvectors of the ``k`` largest eigenvalues of a symmetric matrix, (D, k), largest first. May
    overwrite ``cov``. Only the wanted eigenpairs are computed (LAPACK ``syevr`` on an index range)."""
    d = cov.shape[0]
    try:  # scipy (always present with scikit-learn) can compute only the wanted eigenpairs
        from scipy.linalg import eigh
    except ImportError:  # pragma: no cover
        _, vecs = np.linalg.eigh(cov)
        vecs = vecs[:, d - k:]
    else:
        # cov.T is cov (symmetric) in Fortran order, so LAPACK works on it in place instead of on a copy
        _, vecs = eigh(cov.T, subset_by_index=[d - k, d - 1], driver="evr", overwrite_a=True,
                       check_finite=False)  # (D, k), ascending
    return np.ascontiguousarray(vecs[:, ::-1])


def _single_thread_blas() -> AbstractContextManager:
    """Run BLAS/LAPACK single-threaded inside the block (numpy's and scipy's OpenBLAS alike).

    Why: the evaluation is a chain of mid-sized calls, and on a machine whose cores are busy with other work
    multi-threaded OpenBLAS loses more than it gains -- it waits on descheduled threads inside each call,
    and its idle worker threads keep spinning after each call, competing with the next one. Measured on the
    shared 2-core dev box next to a training job: one D = 1024 ``eigh`` 9 s instead of 0.13 s, the per-fold
    scatter 45 ms instead of 27 ms, even a plain float64 conversion 0.2 s instead of 0.01 s.
    scipy is imported first because threadpoolctl only limits libraries that are already loaded, and scipy
    brings its own OpenBLAS.
    """
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:  # pragma: no cover
        pass
    try:  # threadpoolctl ships with scikit-learn
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return nullcontext()
    return threadpool_limits(1)


class _PairScorer:
    """Cosine scores of all pairs under a given (mean, basis).

    Without PCA it expands ``(a-mu).(b-mu) = a.b - a.mu - b.mu + mu.mu`` (float64), so each fold costs two
    mat-vecs instead of re-centring the whole (P, D) arrays.

    With PCA, projecting every pair onto every fold's basis is the one big product that cannot be shared
    between folds (K x 2P x D x pca_dim multiply-adds: 31e9 for LFW at D = 1024, pca_dim = 256). It runs on
    the features as given, in their own precision (float32 features: float32, half the cost of float64), and
    the mean is subtracted afterwards in float64: ``z = a @ V - mu @ V``. The rounding this adds to a score
    is a few float32 ulps of the features' size, the same order as the rounding already in float32
    features (measured on the benchmark's data: < 2e-7). Dot products and norms are float64.

    Given ``images = (table, used, ja, jb)`` (the ``pair_index`` path), it projects each distinct image once
    and looks the pair sides up afterwards (LFW: 7,701 images instead of 12,000 pair sides, a third less of
    the product). The scores equal the plain path's up to the rounding of that product: BLAS may round a row
    differently in a matrix of another size (seen: a few float32 ulps, < 1e-7 in a score).
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, a64: np.ndarray, b64: np.ndarray, pca: bool,
                 images: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        work = _work_dtype(a, b)
        self.work, self.images = work, None
        if pca and images is not None:
            table, used, ja, jb = images
            self.images = (table[used].astype(work, copy=False), ja, jb)  # (U, D) float32 or float64, (P,), (P,)
        elif pca:
            self.a, self.b = a.astype(work, copy=False), b.astype(work, copy=False)  # (P, D) float32/float64
        self.a64, self.b64 = a64, b64  # (P, D) float64
        if not pca:  # (P,) each, shared by all folds
            self.ab = np.einsum("ij,ij->i", a64, b64)
            self.aa = np.einsum("ij,ij->i", a64, a64)
            self.bb = np.einsum("ij,ij->i", b64, b64)

    def __call__(self, mu: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
        if basis is None:
            am, bm, mm = self.a64 @ mu, self.b64 @ mu, float(mu @ mu)  # (P,), (P,), scalar
            dots = self.ab - am - bm + mm
            na2 = np.maximum(self.aa - 2 * am + mm, 0.0)
            nb2 = np.maximum(self.bb - 2 * bm + mm, 0.0)
        else:
            v = basis.astype(self.work, copy=False)  # (D, pca_dim)
            shift = mu @ v.astype(np.float64, copy=False)  # (pca_dim,): the same rounded basis as the product
            if self.images is None:
                za = (self.a @ v).astype(np.float64, copy=False)  # (P, pca_dim)
                zb = (self.b @ v).astype(np.float64, copy=False)
                za -= shift
                zb -= shift
            else:
                u, ja, jb = self.images
                z = (u @ v).astype(np.float64, copy=False)  # (U, pca_dim): each distinct image once
                z -= shift
                za, zb = z[ja], z[jb]  # (P, pca_dim) each
            dots = np.einsum("ij,ij->i", za, zb)
            na2 = np.einsum("ij,ij->i", za, za)
            nb2 = np.einsum("ij,ij->i", zb, zb)
        return dots / np.maximum(np.sqrt(na2 * nb2), 1e-300)  # zero vectors score 0


def evaluate_pairs(
    features_a: np.ndarray,
    features_b: np.ndarray | None,
    issame: np.ndarray | Sequence[bool],
    fold_ids: np.ndarray | Sequence[int] | None = None,
    pca_dim: int | None = None,
    *,
    center: bool = True,
    subfolds: int | None = None,
    seed: int = 0,
    fars: Sequence[float] = (1e-3, 1e-2),
    pair_index: tuple[np.ndarray | Sequence[int], np.ndarray | Sequence[int]] | None = None,
) -> VerificationResult:
    """k-fold verification of pairs ``(features_a[i], features_b[i])`` labelled ``issame[i]``.

    Args:
        features_a, features_b: (P, D) features of the two sides of each pair (any embedding); with
            ``pair_index``, a per-image table (N, D) and ``None``.
        issame: (P,) True for genuine pairs.
        fold_ids: (P,) fold of each pair; >= 2 distinct values run the protocol over those folds. ``None`` or
            a single value means "one fold": then ``subfolds`` is required.
        pca_dim: fit PCA to this many dimensions on each training split (``None``: no PCA).
        center: subtract the training folds' mean before scoring (the paper's protocol; ``False`` gives plain
            cosine, whose thresholds transfer to ``centerloss verify``).
        subfolds: only for a single fold: split it into this many stratified sub-folds (see module docstring).
        seed: seed of the sub-fold split.
        fars: FARs at which to report TAR.
        pair_index: ``(index_a, index_b)``, (P,) ints each -- the faster input for pairs drawn from one table
            of per-image features (as LFW's 12,000 pair sides use 7,701 images): pass the table (N, D) as
            ``features_a`` and ``None`` as ``features_b``; pair ``i`` is
            ``(features_a[index_a[i]], features_a[index_b[i]])``. Same result as the plain call with those
            gathered features -- the mean and PCA still count every pair side, so an image in three pairs
            weighs three times, and come out bit-identical -- but with PCA each distinct image is projected
            once per fold instead of once per pair side (scores then differ from the plain call's by the
            product's rounding only, < 1e-7 for float32 features). Without PCA it saves nothing.
            :meth:`PairList.indices <centerloss.eval.protocols.PairList.indices>` gives the indices.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=(200, 8)); same = np.arange(200) % 2 == 0
        >>> b = np.where(same[:, None], a + 0.1 * rng.normal(size=a.shape), rng.normal(size=a.shape))
        >>> r = evaluate_pairs(a, b, same, np.arange(200) % 10)
        >>> r.accuracy_mean > 0.95
        True
    """
    a, b, y, fold_ids, images = _validate(features_a, features_b, issame, fold_ids, pair_index)
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
    a64 = a.astype(np.float64, copy=False)  # (P, D)
    b64 = b.astype(np.float64, copy=False)
    tests = [fold_ids == f for f in folds]
    for f, test in zip(folds, tests):
        if y[~test].all() or not y[~test].any():
            raise DataError(f"the training folds for held-out fold {f} lack genuine or impostor pairs")
    with _single_thread_blas():
        stats = _FoldStatistics(a64, b64, fold_ids, folds, pca_dim, center)
        scorer = _PairScorer(a, b, a64, b64, pca=pca_dim is not None, images=images)
        scores = [scorer(*stats.fit(i)) for i in range(folds.size)]  # K x (P,): all pairs under fold i's fit
    pooled = np.empty(y.size)
    accs = np.empty(folds.size)
    thrs = np.empty(folds.size)
    for i, (s, test) in enumerate(zip(scores, tests)):
        thrs[i], _ = metrics.best_threshold(s[~test], y[~test])
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
