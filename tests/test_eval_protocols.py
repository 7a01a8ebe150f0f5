"""Protocol files: LFW pairs.txt, YTF-style video pairs, InsightFace .bin (restricted unpickler)."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from PIL import Image

from centerloss.errors import DataError
from centerloss.eval.protocols import read_bin, read_lfw_pairs, read_video_pairs, video_features


def _data_dir() -> Path:
    return DATA


LFW = _data_dir() / "lfw"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pairs.txt"
    p.write_text(text)
    return p


GOOD = "2\t2\nA 1 2\nB 1 3\nA 1 C 2\nB 2 D 1\nE 1 2\nF 3 4\nE 1 G 1\nF 1 H 1\n"


def test_parses_small_file(tmp_path):
    pairs = read_lfw_pairs(_write(tmp_path, GOOD))
    assert len(pairs) == 8
    assert pairs.left[0] == "A/A_0001.jpg" and pairs.right[0] == "A/A_0002.jpg"
    assert pairs.left[2] == "A/A_0001.jpg" and pairs.right[2] == "C/C_0002.jpg"
    np.testing.assert_array_equal(pairs.issame, [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(pairs.fold_ids, [0, 0, 0, 0, 1, 1, 1, 1])
    assert len(pairs.folds(1)) == 4 and pairs.folds(1).left[0] == "E/E_0001.jpg"


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    ("10 300 7\nA 1 2\n", "header"),
    ("x\t2\n", "number of folds must be an integer"),
    ("1\t2\nA 1 2\nA 1 C 2\nB 2 D 1\nE 1 2\n", r"pairs.txt:3: fold 1 expects a matched pair 'name i j' here, got 'A 1 C 2'"),
    ("1\t2\nA 1 2\nB 1 3\nA 1 2\nB 2 D 1\n", r"pairs.txt:4: fold 1 expects a mismatched pair"),
    ("1\t2\nA 1 two\nB 1 3\nA 1 C 2\nB 2 D 1\n", r"pairs.txt:2: image number must be an integer, got 'two'"),
    ("1\t2\nA 1 0\nB 1 3\nA 1 C 2\nB 2 D 1\n", r"pairs.txt:2: image number must be >= 1"),
    ("1\t2\nA 1 2\nB 1 3\nA 1 C 2\n", "promises 1 folds x 2 x 2 = 4 pair lines, found 3"),
    ("1\t2\nA 1 2\nB 1 3\nA 1 A 2\nB 2 D 1\n", "same person twice"),
])
def test_malformed_pairs_files_name_line_and_content(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        read_lfw_pairs(_write(tmp_path, text))


def test_missing_images_are_counted_and_listed(tmp_path):
    root = tmp_path / "img"
    (root / "A").mkdir(parents=True)
    (root / "A" / "A_0001.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"13 of the 14 images .* are missing .* e\.g\. A/A_0002\.jpg"):
        read_lfw_pairs(_write(tmp_path, GOOD), image_root=root)


def test_view1_header_means_one_fold(tmp_path):
    pairs = read_lfw_pairs(_write(tmp_path, "2\nA 1 2\nB 1 3\nA 1 C 2\nB 2 D 1\n"))
    assert set(pairs.fold_ids) == {0} and pairs.issame.sum() == 2


@pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason="DATA MISSING: LFW pairs.txt not found (set CENTERLOSS_DATA)")
def test_official_lfw_pairs_file():
    pairs = read_lfw_pairs(LFW / "pairs.txt", image_root=LFW / "images")
    assert len(pairs) == 6000 and pairs.issame.sum() == 3000
    np.testing.assert_array_equal(np.bincount(pairs.fold_ids), [600] * 10)
    people = [{p.split("/")[0] for p in pairs.folds(f).left + pairs.folds(f).right} for f in range(10)]
    assert sum(len(s) for s in people) == len(set().union(*people)) == 4281  # person-disjoint folds


# ---------------------------------------------------------------- .bin


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_benign_bin_is_read(tmp_path, protocol):
    images = [_jpeg(i) for i in range(6)]
    p = tmp_path / "set.bin"
    p.write_bytes(pickle.dumps((images, [True, False, True]), protocol=protocol))
    s = read_bin(p)
    assert s.images == images
    np.testing.assert_array_equal(s.issame, [True, False, True])


def test_python2_style_bin_is_read(tmp_path):
    # Python 2 pickles str as SHORT_BINSTRING; with encoding="bytes" it loads as bytes (InsightFace's files)
    data = b"\x80\x02]q\x00(U\x03ab\xffq\x01U\x02cdq\x02e]q\x03\x88a\x86q\x04."
    p = tmp_path / "py2.bin"
    p.write_bytes(data)
    s = read_bin(p)
    assert s.images == [b"ab\xff", b"cd"] and s.issame.tolist() == [True]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class _EvilTouch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_hostile_bin_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "marker"
    for payload in ([_Evil()], _EvilTouch(marker), ([b"x", b"y"], [_EvilTouch(marker)])):
        p = tmp_path / "evil.bin"
        p.write_bytes(pickle.dumps(payload, protocol=2))
        with pytest.raises(DataError, match="refused"):
            read_bin(p)
    assert not marker.exists()


def test_numpy_bin_is_refused_with_advice(tmp_path):
    p = tmp_path / "np.bin"
    p.write_bytes(pickle.dumps(([b"a", b"b"], np.array([True]))))
    with pytest.raises(DataError, match="numpy objects"):
        read_bin(p)


@pytest.mark.parametrize("payload,match", [
    (([b"a", b"b", b"c"], [True]), "two per pair"),
    (([b"a", "text"], [True]), "list of encoded images"),
    (([b"a", b"b"], ["yes"]), "booleans"),
    ({"a": 1}, "pickled pair"),
])
def test_malformed_bin(tmp_path, payload, match):
    p = tmp_path / "bad.bin"
    p.write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match=match):
        read_bin(p)
    p.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError):
        read_bin(p)


def test_bin_folds_are_consecutive_blocks():
    from centerloss.eval.protocols import BinSet

    s = BinSet([b""] * 46, np.ones(23, bool))
    np.testing.assert_array_equal(np.bincount(s.fold_ids(10)), [3, 3, 3, 2, 2, 2, 2, 2, 2, 2])
    assert np.all(np.diff(s.fold_ids(10)) >= 0)


# ---------------------------------------------------------------- video pairs


def test_video_pairs_and_mean_features(tmp_path):
    p = tmp_path / "splits.txt"
    p.write_text("split number, pair number, first name, second name, is same\n"
                 "1, 1, A/0, A/1, 1\n1, 2, A/0, B/0, 0\n2, 1, B/0, B/1, 1, 1\n")
    pairs = read_video_pairs(p)
    assert pairs.left == ["A/0", "A/0", "B/0"] and pairs.right == ["A/1", "B/0", "B/1"]
    assert pairs.issame.tolist() == [True, False, True] and pairs.fold_ids.tolist() == [0, 0, 1]
    paths = ["A/0/1.jpg", "A/0/2.jpg", "A/1/1.jpg", "B/0/5.jpg", "B/1/1.jpg", "B/1/2.jpg", "B/1/3.jpg"]
    feats = np.arange(14, dtype=np.float32).reshape(7, 2)
    ids, vf = video_features(paths, feats, pairs.items())
    assert ids == ["A/0", "A/1", "B/0", "B/1"]
    np.testing.assert_allclose(vf, [[1, 2], [4, 5], [6, 7], [10, 11]])
    with pytest.raises(DataError, match="1 videos have no frames"):
        video_features(paths[:-3], feats[:-3], pairs.items())
    p.write_text("1, 1, A/0, A/1, 2\n")
    with pytest.raises(DataError, match=r"splits.txt:1: is_same must be 0 or 1"):
        read_video_pairs(p)
