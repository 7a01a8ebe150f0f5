"""k-fold verification: against a slow reference loop, leak tests, sanity extremes, single-fold sub-folds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from centerloss.errors import DataError
from centerloss.eval.verification import (
    _leave_one_out_sums,
    evaluate_pairs,
    fold_normalisers,
    stratified_subfolds,
)


def _pairs(n_folds=10, per=60, d=16, noise=1.0, seed=0, offset=0.0):
    """Genuine pairs share an identity vector; impostor pairs do not. Equal classes per fold."""
    rng = np.random.default_rng(seed)
    p = n_folds * per
    same = np.tile(np.r_[np.ones(per // 2, bool), np.zeros(per - per // 2, bool)], n_folds)
    ida = rng.normal(size=(p, d))
    idb = np.where(same[:, None], ida, rng.normal(size=(p, d)))
    a = ida + noise * rng.normal(size=(p, d)) + offset
    b = idb + noise * rng.normal(size=(p, d)) + offset
    folds = np.repeat(np.arange(n_folds), per)
    return a.astype(np.float32), b.astype(np.float32), same, folds


def _slow_reference(a, b, y, folds, pca_dim=None):
    """The protocol written as plainly as possible: refit everything per fold, loop over every threshold."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    accs, thrs, pooled = [], [], np.zeros(len(y))
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        x = np.concatenate([a[tr], b[tr]])
        mu = x.mean(0)
        if pca_dim is None:
            proj = np.eye(a.shape[1])
        else:
            _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
            proj = vt[:pca_dim].T

        def score(u, v, mu=mu, proj=proj):
            u = (u - mu) @ proj
            v = (v - mu) @ proj
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            return (u * v).sum(1)

        s_tr, s_te = score(a[tr], b[tr]), score(a[te], b[te])
        uq = np.unique(s_tr)
        cands = np.r_[uq[0] - 1.0, (uq[1:] + uq[:-1]) / 2, uq[-1] + 1.0]
        acc_tr = np.array([np.mean((s_tr >= c) == y[tr]) for c in cands])
        best = np.flatnonzero(acc_tr == acc_tr.max())
        thr = cands[best[(best.size - 1) // 2]]
        thrs.append(thr)
        accs.append(np.mean((s_te >= thr) == y[te]))
        pooled[te] = s_te
    return np.array(accs), np.array(thrs), pooled


# Tolerance of the scores against the float64 reference. float64 features: everything is float64, so only
# summation order differs (1e-9). float32 features: the PCA projection runs in float32 (see _PairScorer), which
# adds a few float32 ulps (measured ~2e-7 here) -- the precision the features were given in. Fold accuracies
# must still agree exactly.
_SCORE_ATOL = {np.float64: 1e-9, np.float32: 2e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pca_dim", [None, 5])
@pytest.mark.parametrize("n_folds", [10, 3])
def test_matches_slow_reference(pca_dim, n_folds, dtype):
    a, b, y, folds = _pairs(n_folds=n_folds, noise=1.3, offset=0.7)
    a, b = a.astype(dtype), b.astype(dtype)
    r = evaluate_pairs(a, b, y, folds, pca_dim=pca_dim)
    accs, thrs, pooled = _slow_reference(a, b, y, folds, pca_dim)
    atol = _SCORE_ATOL[dtype] if pca_dim is not None else 1e-9  # no PCA: float64 whatever the input
    np.testing.assert_allclose(r.scores, pooled, atol=atol)
    np.testing.assert_allclose(r.fold_thresholds, thrs, atol=atol)
    np.testing.assert_array_equal(r.fold_accuracies, accs)
    assert r.accuracy_mean == pytest.approx(accs.mean())
    assert r.accuracy_std == pytest.approx(accs.std(ddof=1))
    assert 0.6 < r.accuracy_mean < 0.99  # a non-trivial problem, so thresholds matter


def test_pca_scores_of_float32_features_are_close_to_float64():
    """Realistic size and a large common offset (as un-normalised CNN features have): the float32 projection
    must stay within float32 rounding of the features, and no fold's accuracy may change."""
    a, b, y, folds = _pairs(n_folds=10, per=100, d=256, noise=1.0, offset=3.0)
    r32 = evaluate_pairs(a, b, y, folds, pca_dim=64)
    r64 = evaluate_pairs(a.astype(np.float64), b.astype(np.float64), y, folds, pca_dim=64)
    assert np.abs(r32.scores - r64.scores).max() < 2e-6
    np.testing.assert_array_equal(r32.fold_accuracies, r64.fold_accuracies)


def test_leave_one_out_sums():
    rng = np.random.default_rng(0)
    for k in (2, 3, 7):
        parts = [rng.normal(size=(3, 3)) for _ in range(k)]
        before = [p.copy() for p in parts]
        out = _leave_one_out_sums(parts)
        total = sum(before)
        for i in range(k):
            np.testing.assert_allclose(out[i], total - before[i], atol=1e-12)
        for p, q in zip(parts, before):
            np.testing.assert_array_equal(p, q)  # inputs untouched


@pytest.mark.parametrize("pca_dim", [None, 4])
def test_fold_statistics_do_not_see_the_held_out_fold_even_in_rounding(pca_dim):
    """Fold 0's mean and PCA basis come from the other folds' sums only (prefix/suffix sums, no "total minus
    fold 0"), so rewriting fold 0 leaves them bit-identical."""
    a, b, y, folds = _pairs(noise=1.0)
    base = fold_normalisers(a, b, folds, pca_dim)
    rng = np.random.default_rng(2)
    a2, b2 = a.copy(), b.copy()
    f0 = folds == 0
    a2[f0] = 1e3 * rng.normal(size=(f0.sum(), a.shape[1]))
    b2[f0] = -1e3
    moved = fold_normalisers(a2, b2, folds, pca_dim)
    np.testing.assert_array_equal(moved[0][0], base[0][0])
    if pca_dim is not None:
        np.testing.assert_array_equal(moved[0][1], base[0][1])
    assert np.abs(moved[1][0] - base[1][0]).max() > 1.0  # fold 0 is training data for fold 1


@pytest.mark.parametrize("pca_dim", [None, 4])
def test_held_out_scores_ignore_the_held_out_folds_features(pca_dim):
    """A pair's pooled score uses statistics of the *other* folds only: rewriting every other pair of its own
    fold (wildly) must not move it, while rewriting a training fold must."""
    a, b, y, folds = _pairs(noise=1.0)
    base = evaluate_pairs(a, b, y, folds, pca_dim=pca_dim).scores
    rng = np.random.default_rng(1)
    a2, b2 = a.copy(), b.copy()
    others = np.flatnonzero(folds == 0)[1:]  # fold 0 except its first pair
    a2[others] = 50 * rng.normal(size=(others.size, a.shape[1])) + 20
    b2[others] = 50 * rng.normal(size=(others.size, a.shape[1])) - 20
    moved = evaluate_pairs(a2, b2, y, folds, pca_dim=pca_dim).scores
    first = np.flatnonzero(folds == 0)[0]
    assert moved[first] == pytest.approx(base[first], abs=1e-12)
    assert np.abs(moved[folds == 1] - base[folds == 1]).max() > 1e-3  # fold 0 is training data for fold 1


def test_pca_fitted_on_test_fold_would_change_the_answer():
    """Fold 0's identity information lives in dimensions that only fold 0 uses. PCA fitted on the training
    folds (correct) projects it away -> chance accuracy on fold 0; a PCA that saw fold 0 would keep it."""
    rng = np.random.default_rng(0)
    a, b, y, folds = _pairs(n_folds=2, per=400, d=4, noise=0.3)
    pad = np.zeros((a.shape[0], 4), np.float32)
    a, b = np.hstack([a, pad]), np.hstack([b, pad])  # (P, 8); dims 4-7 empty
    f0 = folds == 0
    scale = 3.0  # fold 0 moves to dims 4-7 with more variance than fold 1 has in dims 0-3
    a[f0, 4:], b[f0, 4:] = scale * a[f0, :4], scale * b[f0, :4]
    a[f0, :4] = 0.01 * rng.normal(size=(f0.sum(), 4))
    b[f0, :4] = 0.01 * rng.normal(size=(f0.sum(), 4))
    honest = evaluate_pairs(a, b, y, folds, pca_dim=4)
    assert roc_auc_score(y[f0], honest.scores[f0]) < 0.6  # threshold-free: fold 0's held-out scores are noise
    # the leaky variant, for contrast: PCA on all pairs keeps dims 4-7 and fold 0 becomes easy
    x = np.concatenate([a, b]).astype(np.float64)
    mu = x.mean(0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    za, zb = (a[f0] - mu) @ vt[:4].T, (b[f0] - mu) @ vt[:4].T
    s = (za * zb).sum(1) / np.linalg.norm(za, axis=1) / np.linalg.norm(zb, axis=1)
    assert roc_auc_score(y[f0], s) > 0.95


def test_mean_fitted_on_training_folds_only():
    """Fold 0 carries a large private offset. Centred with the other folds' mean it stays (cosines near 1 ->
    chance); a mean that included fold 0 would differ, and the reference with the training mean agrees."""
    a, b, y, folds = _pairs(n_folds=4, per=200, d=8, noise=0.3)
    f0 = folds == 0
    a[f0] += 25.0
    b[f0] += 25.0
    r = evaluate_pairs(a, b, y, folds)
    _, _, pooled = _slow_reference(a, b, y, folds)
    np.testing.assert_allclose(r.scores, pooled, atol=1e-9)
    assert r.scores[f0].min() > 0.9
    assert r.fold_accuracies[0] < 0.6
    assert r.fold_accuracies[1:].min() > 0.9


def test_perfect_and_random_embeddings():
    a, b, y, folds = _pairs(noise=0.0, d=32)
    r = evaluate_pairs(a, b, y, folds)
    assert r.accuracy_mean == 1.0 and r.auc == 1.0 and r.eer == 0.0
    assert r.tar_at_far[1e-3] == 1.0
    rng = np.random.default_rng(5)
    ra = rng.normal(size=(6000, 64))
    rb = rng.normal(size=(6000, 64))
    y = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)
    r = evaluate_pairs(ra, rb, y, np.repeat(np.arange(10), 600), pca_dim=16)
    assert abs(r.accuracy_mean - 0.5) < 0.03
    assert abs(r.auc - 0.5) < 0.03
    assert abs(r.eer - 0.5) < 0.03


def test_single_fold_needs_explicit_subfolds():
    a, b, y, folds = _pairs(n_folds=10)
    one = folds == 3
    with pytest.raises(DataError, match="subfolds"):
        evaluate_pairs(a[one], b[one], y[one], folds[one])
    r = evaluate_pairs(a[one], b[one], y[one], folds[one], subfolds=5, seed=1)
    assert r.folds.size == 5 and "sub-folds" in r.protocol
    again = evaluate_pairs(a[one], b[one], y[one], None, subfolds=5, seed=1)
    np.testing.assert_array_equal(r.scores, again.scores)  # deterministic
    with pytest.raises(DataError, match="only for a single fold"):
        evaluate_pairs(a, b, y, folds, subfolds=5)


def test_stratified_subfolds_balance():
    y = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    f = stratified_subfolds(y, 10, seed=0)
    for k in range(10):
        assert (f == k).sum() == 60 and y[f == k].sum() == 30


def test_subset_of_folds_and_bad_inputs():
    a, b, y, folds = _pairs()
    keep = np.isin(folds, [2, 5, 7])
    r = evaluate_pairs(a[keep], b[keep], y[keep], folds[keep])
    assert list(r.folds) == [2, 5, 7]
    with pytest.raises(DataError, match="pca_dim"):
        evaluate_pairs(a, b, y, folds, pca_dim=1000)
    with pytest.raises(DataError, match="at least 2 folds"):
        fold_normalisers(a, b, np.zeros(len(a)), 4)
    with pytest.raises(DataError, match=r"\(P, D\)"):
        evaluate_pairs(a, b[:, :3], y, folds)
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        evaluate_pairs(bad, b, y, folds)
    d = r.to_dict()
    assert {"accuracy_mean", "accuracy_std", "auc", "eer", "tar_at_far"} <= set(d)
    assert set(d["tar_at_far"]) == {"0.001", "0.01"}


def _indexed_pairs(n_images=150, n_folds=5, per=80, d=24, seed=3):
    """A per-image table (with spare rows no pair uses) and pairs that reuse images heavily (~5 uses each; image
    0 in every fold's first pair), so counting an image once instead of once per use would change the mean."""
    rng = np.random.default_rng(seed)
    person = rng.integers(0, 30, size=n_images)
    table = (rng.normal(size=(30, d))[person] + 0.8 * rng.normal(size=(n_images, d)) + 0.5).astype(np.float32)
    table = np.vstack([table, 9.0 * np.ones((7, d), np.float32)])  # unused rows
    p = n_folds * per
    ia = rng.integers(0, n_images, size=p)
    ib = rng.integers(0, n_images, size=p)
    same = np.arange(p) % 2 == 0
    for i in np.flatnonzero(same):  # genuine: another image of the same person
        ib[i] = rng.choice(np.flatnonzero(person == person[ia[i]]))
    y = person[ia] == person[ib]
    folds = np.repeat(np.arange(n_folds), per)
    ia[::per] = 0
    return table, ia, ib, y, folds


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pca_dim", [None, 6])
def test_pair_index_fast_path_matches_gathered_features(pca_dim, dtype):
    """pair_index projects each distinct image once; the result must be the plain call's on the gathered
    features. Without PCA nothing is projected, so bit-identical (this also pins the mean's weighting: one
    count per pair side). With PCA the mean and basis are bit-identical too and only the product's BLAS
    rounding may differ (a row can round differently in a matrix of another size)."""
    table, ia, ib, y, folds = _indexed_pairs()
    table = table.astype(dtype)
    plain = evaluate_pairs(table[ia], table[ib], y, folds, pca_dim=pca_dim)
    fast = evaluate_pairs(table, None, y, folds, pca_dim=pca_dim, pair_index=(ia, ib))
    np.testing.assert_array_equal(fast.fold_accuracies, plain.fold_accuracies)
    if pca_dim is None:
        np.testing.assert_array_equal(fast.scores, plain.scores)
        np.testing.assert_array_equal(fast.fold_thresholds, plain.fold_thresholds)
    else:
        atol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(fast.scores, plain.scores, rtol=0, atol=atol)
        np.testing.assert_allclose(fast.fold_thresholds, plain.fold_thresholds, rtol=0, atol=atol)
    assert 0.6 < plain.accuracy_mean < 0.99  # thresholds matter
    assert fast.auc == plain.auc and fast.to_dict().keys() == plain.to_dict().keys()


def test_pair_index_bad_inputs():
    table, ia, ib, y, folds = _indexed_pairs()
    with pytest.raises(DataError, match="features_b=None"):
        evaluate_pairs(table, table, y, folds, pair_index=(ia, ib))
    with pytest.raises(DataError, match="outside the table"):
        evaluate_pairs(table, None, y, folds, pair_index=(ia, ib + table.shape[0]))
    with pytest.raises(DataError, match="integer arrays"):
        evaluate_pairs(table, None, y, folds, pair_index=(ia.astype(float), ib))
    with pytest.raises(DataError, match="features_b is None"):
        evaluate_pairs(table[ia], None, y, folds)
    with pytest.raises(DataError, match="issame"):
        evaluate_pairs(table, None, y[1:], folds, pair_index=(ia, ib))
