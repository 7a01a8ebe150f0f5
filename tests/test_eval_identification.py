"""1:N identification: exact top-k search (faiss and torch) and MegaFace-style metrics with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from centerloss.errors import DataError
from centerloss.eval.identification import available_backends, evaluate_identification, search_topk

BACKENDS = available_backends()


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_topk_is_exact(backend):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 24)).astype(np.float32)
    db = rng.normal(size=(1003, 24)).astype(np.float32)
    s, i = search_topk(q, db, 15, backend=backend, chunk_rows=100)  # 11 blocks -> many merges
    full = q.astype(np.float64) @ db.T.astype(np.float64)
    ref_i = np.argsort(-full, axis=1)[:, :15]
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, np.take_along_axis(full, ref_i, 1), rtol=1e-5, atol=1e-5)
    s2, i2 = search_topk(q, db, 5000, backend=backend)  # k clipped to N
    assert s2.shape == (37, 1003) and np.all(np.diff(s2, axis=1) <= 0)


def test_search_topk_reads_a_memmap(tmp_path):
    rng = np.random.default_rng(1)
    db = rng.normal(size=(500, 8)).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float32, shape=db.shape)
    mm[:] = db
    mm.flush()
    ro = np.load(tmp_path / "d.npy", mmap_mode="r")
    q = rng.normal(size=(4, 8)).astype(np.float32)
    for backend in BACKENDS:
        s, i = search_topk(q, ro, 3, backend=backend, chunk_rows=64, normalize=True)
        ref = np.argsort(-(q @ _unit(db).T), axis=1)[:, :3]
        np.testing.assert_array_equal(i, ref)


def _known_world(seed=0):
    """20 identities with tight probe/mate clusters (cos ~0.99), 5000 random distractors (cos < ~0.6 in 64-d),
    and 5 'confusers': exact copies of probes 0-4 placed among the distractors."""
    rng = np.random.default_rng(seed)
    centers = _unit(rng.normal(size=(20, 64)))
    probes = _unit(centers + 0.01 * rng.normal(size=centers.shape))
    mates = _unit(centers + 0.01 * rng.normal(size=centers.shape))
    distractors = np.concatenate([_unit(rng.normal(size=(5000, 64))), probes[:5]])
    return probes, mates, distractors


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_answer(backend):
    probes, mates, distractors = _known_world()
    labels = np.arange(20)
    n_imp = 20 * distractors.shape[0]
    r = evaluate_identification(probes, labels, mates, labels, distractors, fars=(4 / n_imp, 5 / n_imp),
                                ranks=(1, 2), backend=backend, chunk_rows=700, progress=False)
    assert r.rank1 == 15 / 20  # probes 0-4 meet their own copy (cos 1) before their mate
    assert r.cmc[2] == 1.0  # ... and exactly one distractor is ahead of the mate
    assert r.closed_set_rank1 == 15 / 20
    assert r.n_genuine == 20 and r.n_impostor == n_imp
    # 5 impostor pairs score 1.0: allowing 4 false accepts needs a threshold above 1 (no mate passes),
    # allowing 5 puts the threshold below every mate
    assert r.tar_at_far[4 / n_imp] == 0.0
    assert r.tar_at_far[5 / n_imp] == 1.0


def _brute(probes, pl, gallery, gl, distractors, fars, ranks, same_set=False):
    p, g, d = _unit(probes).astype(np.float64), _unit(gallery).astype(np.float64), _unit(distractors).astype(np.float64)
    sg, sd = p @ g.T, p @ d.T
    hits, tars = {r: [] for r in ranks}, {}
    genuine, closed = [], []
    for i in range(len(p)):
        mates = [j for j in range(len(g)) if gl[j] == pl[i] and not (same_set and i == j)]
        for j in mates:
            ahead = int((sd[i] >= sg[i, j]).sum())
            for r in ranks:
                hits[r].append(ahead < r)
            genuine.append(sg[i, j])
        if mates:
            cand = [(sg[i, j], gl[j]) for j in range(len(g)) if not (same_set and i == j)]
            best_s, best_l = max(cand, key=lambda t: t[0])
            closed.append(best_s > sd[i].max() and best_l == pl[i])
    imp = np.sort(sd.ravel())[::-1]
    for f in fars:
        k = int(np.floor(f * imp.size * (1 + 1e-12)))
        tars[f] = float(np.mean(np.array(genuine) > imp[k]))
    return {r: float(np.mean(h)) for r, h in hits.items()}, float(np.mean(closed)), tars


@pytest.mark.parametrize("same_set", [False, True])
def test_matches_brute_force(same_set):
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(30, 16))
    pl = rng.integers(0, 30, 120)
    probes = (centers[pl] + 0.9 * rng.normal(size=(120, 16))).astype(np.float32)
    if same_set:
        gallery, gl = probes, pl
    else:
        gl = np.arange(30).repeat(2)
        gallery = (centers[gl] + 0.9 * rng.normal(size=(60, 16))).astype(np.float32)
    distractors = rng.normal(size=(3000, 16)).astype(np.float32)
    fars, ranks = (1e-4, 1e-3), (1, 3, 10)
    cmc, closed, tars = _brute(probes, pl, gallery, gl, distractors, fars, ranks, same_set)
    for backend in BACKENDS:
        r = evaluate_identification(probes, pl, gallery, gl, distractors, fars=fars, ranks=ranks,
                                    same_set=same_set, backend=backend, chunk_rows=512, progress=False)
        for k in ranks:
            assert r.cmc[k] == pytest.approx(cmc[k], abs=1e-12)
        assert r.closed_set_rank1 == pytest.approx(closed, abs=1e-12)
        for f in fars:
            assert r.tar_at_far[f] == pytest.approx(tars[f], abs=1e-12)
        assert 0.05 < r.rank1 < 0.95  # not a degenerate problem


def test_errors():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(DataError, match="no genuine"):
        evaluate_identification(x, [0, 1, 2], x, [5, 6, 7], x, progress=False)
    with pytest.raises(DataError, match="feature sizes"):
        evaluate_identification(x, [0, 1, 2], x, [0, 1, 2], np.ones((3, 5), np.float32), progress=False)
    with pytest.raises(DataError, match="no distractors"):
        evaluate_identification(x, [0, 1, 2], x, [0, 1, 2], np.zeros((0, 4), np.float32), progress=False)
    many = np.ones((1000, 4), np.float32)
    with pytest.raises(DataError, match="lower FAR"):  # refused before any search
        evaluate_identification(many, np.arange(1000), many, np.arange(1000), np.ones((100_000, 4), np.float32),
                                fars=(0.5,), progress=False)
