"""The face gallery: templates and exact search against slow reference loops (up to 1M identities), atomic
add/remove (kill -9 mid-add leaves the previous gallery intact), the model-hash check, and safe formats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from centerloss.errors import DataError
from centerloss.face import gallery as G
from centerloss.face.gallery import Enrollment, Gallery, templates_of

SHA = "a" * 64


def _enrollment(rng: np.random.Generator, n_people: int, dim: int = 16, prefix: str = "P") -> Enrollment:
    names = [f"{prefix}{i:04d}" for i in range(n_people)]
    counts = rng.integers(1, 4, n_people)
    labels = np.repeat(np.arange(n_people), counts).astype(np.int32)
    centers = rng.normal(size=(n_people, dim))
    feats = (centers[labels] + 0.3 * rng.normal(size=(len(labels), dim))).astype(np.float32)
    return Enrollment(names, feats, labels, [f"{names[k]}/{i}.jpg" for i, k in enumerate(labels)])


def _ref_templates(e: Enrollment) -> dict[str, np.ndarray]:
    out = {}
    for k, name in enumerate(e.names):
        rows = [e.features[i] / np.linalg.norm(e.features[i]) for i in range(len(e.labels)) if e.labels[i] == k]
        m = np.mean(rows, axis=0)
        out[name] = m / np.linalg.norm(m)
    return out


def _ref_search(q: np.ndarray, templates: dict[str, np.ndarray], k: int) -> list[list[tuple[str, float]]]:
    res = []
    for row in q:
        row = row / np.linalg.norm(row)
        scored = sorted(((float(row @ t), n) for n, t in templates.items()), key=lambda x: -x[0])
        res.append([(n, s) for s, n in scored[:k]])
    return res


def _same_gallery(a: Gallery, b: Gallery) -> None:
    assert a.names == b.names and a.info["generation"] == b.info["generation"]
    np.testing.assert_array_equal(a.templates(), b.templates())
    for s, t in zip(a.segments, b.segments):
        np.testing.assert_array_equal(np.asarray(s.features), np.asarray(t.features))


def test_templates_match_reference_loop():
    rng = np.random.default_rng(0)
    e = _enrollment(rng, 30)
    ref = _ref_templates(e)
    got = templates_of(e.features, e.labels, len(e.names))
    for k, n in enumerate(e.names):
        np.testing.assert_allclose(got[k], ref[n], atol=1e-6)


@pytest.mark.parametrize("per_segment", [7, 65536])
def test_search_matches_brute_force(tmp_path, monkeypatch, per_segment):
    monkeypatch.setattr(G, "SEGMENT_IDENTITIES", per_segment)
    rng = np.random.default_rng(1)
    e = _enrollment(rng, 40)
    g = Gallery.create(tmp_path / "g", e, model_sha256=SHA)
    assert len(g) == 40 and g.n_images == len(e.labels)
    assert len(g.segments) == (6 if per_segment == 7 else 1)
    q = rng.normal(size=(9, 16)).astype(np.float32)
    scores, names = g.search(q, k=5)
    ref = _ref_search(q, _ref_templates(e), 5)
    for r in range(9):
        assert names[r] == [n for n, _ in ref[r]]
        np.testing.assert_allclose(scores[r], [s for _, s in ref[r]], atol=1e-5)
    feats, paths = g.features_of("P0003")
    np.testing.assert_array_equal(feats, e.features[e.labels == 3])
    assert paths == [p for p, lab in zip(e.paths, e.labels) if lab == 3]


def test_search_exact_at_one_million_identities(tmp_path):
    rng = np.random.default_rng(2)
    n, dim = 1_000_000, 8
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    e = Enrollment([f"id{i}" for i in range(n)], feats, np.arange(n, dtype=np.int32), [""] * n)
    g = Gallery.create(tmp_path / "big", e, model_sha256=SHA)
    q = rng.normal(size=(16, dim)).astype(np.float32)
    scores, names = g.search(q, k=5)
    t = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    full = qn.astype(np.float64) @ t.T.astype(np.float64)  # (16, 1M), the obvious reference
    top = np.argsort(-full, axis=1)[:, :5]
    assert names == [[f"id{i}" for i in row] for row in top]
    np.testing.assert_allclose(scores, np.take_along_axis(full, top, 1), atol=1e-5)


def test_add_remove_replace(tmp_path):
    rng = np.random.default_rng(3)
    g = Gallery.create(tmp_path / "g", _enrollment(rng, 5), model_sha256=SHA)
    more = _enrollment(rng, 3, prefix="Q")
    g2 = g.add(more, model_sha256=SHA)
    assert len(g2) == 8 and g2.info["generation"] == 2 and "Q0001" in g2
    with pytest.raises(DataError, match="already in gallery"):
        g2.add(_enrollment(rng, 1, prefix="Q"), model_sha256=SHA)
    again = _enrollment(rng, 1, prefix="Q")
    g3 = g2.add(again, model_sha256=SHA, replace=True)
    assert len(g3) == 8
    np.testing.assert_array_equal(g3.features_of("Q0000")[0], again.features)
    g4 = g3.remove(["P0001", "Q0000"])
    assert len(g4) == 6 and "P0001" not in g4 and "Q0000" not in g4
    with pytest.raises(DataError, match="not in gallery"):
        g4.remove(["nobody"])
    assert len(Gallery.load(tmp_path / "g")) == 6
    q = rng.normal(size=(4, 16)).astype(np.float32)
    ref = {n: g4.features_of(n)[0] for n in g4.names}
    ref_t = {n: np.mean(f / np.linalg.norm(f, axis=1, keepdims=True), 0) for n, f in ref.items()}
    ref_t = {n: t / np.linalg.norm(t) for n, t in ref_t.items()}
    _, names = g4.search(q, k=6)
    assert names == [[n for n, _ in r] for r in _ref_search(q, ref_t, 6)]
    left = [p.name for p in (tmp_path / "g").iterdir()]
    assert sorted(left) == sorted([G.INFO, G.LOCK, *[s["dir"] for s in g4.info["segments"]]])


def test_model_hash_and_dims_refused(tmp_path):
    rng = np.random.default_rng(4)
    g = Gallery.create(tmp_path / "g", _enrollment(rng, 3), model_sha256=SHA)
    with pytest.raises(DataError, match=f"{SHA}.*{'b' * 64}"):
        g.check_model("b" * 64, "other.safetensors")
    with pytest.raises(DataError, match=f"{SHA}.*{'b' * 64}"):
        g.add(_enrollment(rng, 1, prefix="Q"), model_sha256="b" * 64)
    with pytest.raises(DataError, match="dims"):
        g.search(np.ones((1, 8), np.float32))
    with pytest.raises(DataError, match="already a gallery"):
        Gallery.create(tmp_path / "g", _enrollment(rng, 2), model_sha256=SHA)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and not a gallery"):
        Gallery.create(tmp_path / "other", _enrollment(rng, 2), model_sha256=SHA)
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["keep.txt"]  # not even a lock file left


def test_damaged_gallery_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(5)
    g = Gallery.create(tmp_path / "g", _enrollment(rng, 3), model_sha256=SHA)
    with pytest.raises(DataError, match="not a gallery"):
        Gallery.load(tmp_path)
    seg = tmp_path / "g" / g.info["segments"][0]["dir"] / "templates.npy"
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="templates.npy"):
        Gallery.load(tmp_path / "g")
    (tmp_path / "g" / G.INFO).write_text("{not json")
    with pytest.raises(DataError, match="gallery.json"):
        Gallery.load(tmp_path / "g")


def test_stored_without_pickle(tmp_path):
    rng = np.random.default_rng(6)
    g = Gallery.create(tmp_path / "g", _enrollment(rng, 3), model_sha256=SHA)
    json.loads((tmp_path / "g" / G.INFO).read_text())
    for f in (tmp_path / "g" / g.info["segments"][0]["dir"]).iterdir():
        assert f.suffix == ".npy"
        np.load(f, allow_pickle=False)  # raises if anything needed pickle


def test_one_writer_at_a_time(tmp_path):
    rng = np.random.default_rng(7)
    g = Gallery.create(tmp_path / "g", _enrollment(rng, 3), model_sha256=SHA)
    with G._writer_lock(tmp_path / "g"), pytest.raises(DataError, match="another process"):
        g.add(_enrollment(rng, 1, prefix="Q"), model_sha256=SHA)


# ------------------------------------------------------------------------------------- kill -9 mid-add
_KILL_SCRIPT = r"""
import json, sys, time
from pathlib import Path
import centerloss.face.gallery as G
import centerloss.utils.atomic as A

phase, marker, root = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
rng = __import__("numpy").random.default_rng(0)

def stall():
    marker.write_text("here")
    time.sleep(120)

if phase == "segment":      # half-way through writing the new segment's arrays
    orig = G._save_npy
    def save(path, arr):
        if path.name == "features.npy":
            with open(path, "wb") as f:
                f.write(b"\x93NUMPY partial")
            stall()
        return orig(path, arr)
    G._save_npy = save
elif phase == "commit":     # segment complete, gallery.json not yet replaced
    orig_pub = G._publish
    def publish(r, info):
        stall()
        orig_pub(r, info)
    G._publish = publish
elif phase == "json":       # the new gallery.json half-written under its temporary name
    def write_json(path, obj, indent=None):
        with A.atomic_path(path) as tmp:
            data = json.dumps(obj).encode()
            tmp.write_bytes(data[: len(data) // 2])
            stall()
    A.write_json = write_json
g = G.Gallery.load(root)
import numpy as np
e = G.Enrollment(["New_Person"], np.ones((2, g.feature_dim), np.float32), np.zeros(2, np.int32), ["a", "b"])
g.add(e, model_sha256=g.model_sha256)
"""


@pytest.mark.parametrize("phase", ["segment", "commit", "json"])
def test_kill_9_mid_add_leaves_previous_gallery(tmp_path, phase):
    rng = np.random.default_rng(8)
    root = tmp_path / "g"
    before = Gallery.create(root, _enrollment(rng, 4), model_sha256=SHA)
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, phase, str(marker), str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the add never reached phase {phase}: {proc.communicate()[1].decode()[-2000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".gallery.tmp-"))
                 or (p.name.startswith("seg-") and p.name not in {s["dir"] for s in before.info["segments"]})]
    assert leftovers  # the kill really interrupted a write in progress
    after = Gallery.load(root)
    _same_gallery(before, after)
    assert "New_Person" not in after
    # the next writer works and sweeps the debris
    g2 = after.add(_enrollment(rng, 1, prefix="Q"), model_sha256=SHA)
    assert len(g2) == 5
    names = {p.name for p in root.iterdir()}
    assert names == {G.INFO, G.LOCK, *[s["dir"] for s in g2.info["segments"]]}
