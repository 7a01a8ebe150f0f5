"""ROC, AUC, EER, TAR@FAR and the best threshold against scikit-learn and slow, obvious loops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from centerloss.errors import DataError
from centerloss.eval import metrics


def _cases():
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.4
    yield "continuous", rng.normal(size=3000) + 1.2 * y, y
    y = rng.random(500) < 0.5
    yield "ties", np.round(rng.normal(size=500) + y, 1), y  # many equal scores
    y = np.array([True] * 50 + [False] * 50)
    yield "separable", np.r_[rng.uniform(0.6, 1, 50), rng.uniform(-1, 0.5, 50)], y
    y = rng.random(2000) < 0.5
    yield "random", rng.normal(size=2000), y


CASES = list(_cases())


@pytest.mark.parametrize("name,s,y", CASES, ids=[c[0] for c in CASES])
def test_roc_and_auc_match_sklearn(name, s, y):
    roc = metrics.roc_curve(s, y)
    fpr, tpr, thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(roc.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(roc.tpr, tpr, atol=1e-12)
    np.testing.assert_allclose(roc.thresholds[1:], thr[1:], atol=0)
    assert abs(metrics.auc(roc) - roc_auc_score(y, s)) < 1e-6


@pytest.mark.parametrize("name,s,y", CASES, ids=[c[0] for c in CASES])
def test_eer_matches_brentq_on_sklearn_roc(name, s, y):
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    ref = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0, xtol=1e-12)
    got, thr = metrics.eer(metrics.roc_curve(s, y))
    assert abs(got - ref) < 1e-6
    assert np.isfinite(thr)


@pytest.mark.parametrize("name,s,y", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("far", [0.0, 1e-3, 1e-2, 0.1, 0.5, 1.0])
def test_tar_at_far_is_best_sklearn_point_under_far(name, s, y, far):
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    ref = tpr[fpr <= far + 1e-15].max()
    (t,) = metrics.tar_at_far(s, y, [far])
    assert abs(t.tar - ref) < 1e-6
    # the reported threshold realises that operating point
    acc = s >= t.threshold
    assert abs(acc[y].mean() - t.tar) < 1e-12
    assert acc[~y].mean() <= far + 1e-12
    assert abs(acc[~y].mean() - t.achieved_far) < 1e-12


def test_tar_at_far_counts_allowed_false_accepts_exactly():
    # 3000 impostors at FAR 1e-3 allow exactly 3 false accepts (guards against 1e-3 * 3000 = 2.9999...)
    neg = np.linspace(0, 1, 3000)
    n = neg[::-1]  # n[0] > n[1] > ...: with 3 false accepts allowed, accept scores above n[3]
    pos = np.array([(n[2] + n[3]) / 2, (n[3] + n[4]) / 2, (n[4] + n[5]) / 2])  # only the first is accepted
    s = np.r_[neg, pos]
    y = np.r_[np.zeros(3000, bool), np.ones(3, bool)]
    (t,) = metrics.tar_at_far(s, y, [1e-3])
    assert t.achieved_far == pytest.approx(3 / 3000)
    assert t.tar == pytest.approx(1 / 3)


def _slow_best_threshold(s, y):
    u = np.unique(s)
    cands = np.r_[u[0] - 1.0, (u[1:] + u[:-1]) / 2, u[-1] + 1.0]
    accs = np.array([np.mean((s >= c) == y) for c in cands])
    best = np.flatnonzero(accs == accs.max())
    return cands[best[(best.size - 1) // 2]], accs.max()


@pytest.mark.parametrize("name,s,y", CASES, ids=[c[0] for c in CASES])
def test_best_threshold_matches_exhaustive_loop(name, s, y):
    thr, acc = metrics.best_threshold(s, y)
    ref_thr, ref_acc = _slow_best_threshold(s, y)
    assert acc == pytest.approx(ref_acc, abs=1e-12)
    assert thr == pytest.approx(ref_thr, abs=1e-12)
    assert np.mean((s >= thr) == y) == pytest.approx(acc, abs=1e-12)


def test_bad_inputs_raise_data_error():
    with pytest.raises(DataError, match="both genuine"):
        metrics.roc_curve([0.1, 0.2], [True, True])
    with pytest.raises(DataError, match="differ in length"):
        metrics.roc_curve([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(DataError, match="NaN"):
        metrics.roc_curve([np.nan, 0.2], [True, False])
    with pytest.raises(DataError, match="FAR"):
        metrics.tar_at_far([0.1, 0.2], [True, False], [2.0])
