"""The batch aligner and `centerloss align`: bad inputs never crash and are reported, the train/test policy,
landmark side files, resume, and a small CLI run on real LFW images."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from centerloss.align import align_file, align_tree, read_landmarks_csv
from centerloss.align.cli import register
from centerloss.align.policy import choose_face, default_points
from centerloss.align.runner import MANIFEST_COLUMNS, STATE_DIR
from centerloss.errors import DataError


def _data_dir() -> Path:
    return Path(os.environ.get("CENTERLOSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


LFW = _data_dir() / "lfw" / "images"
FACES = ["Tony_Blair/Tony_Blair_0010.jpg", "Serena_Williams/Serena_Williams_0004.jpg",
         "Abdullah_Gul/Abdullah_Gul_0003.jpg", "Winona_Ryder/Winona_Ryder_0002.jpg"]
pytestmark = pytest.mark.skipif(not LFW.is_dir(), reason=f"LFW not found at {LFW}")


def _cli(*argv: str) -> int:
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(["align", *argv])
    return args.func(args)


def _manifest(dst: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(dst / "manifest.csv", newline="") as f:
        r = csv.reader(f)
        header = next(r)
        rows = [dict(zip(header, row, strict=True)) for row in r]
    return header, {row["path"]: row for row in rows}


def _pts(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row[c]) for c in MANIFEST_COLUMNS[3:13]]).reshape(5, 2)


@pytest.fixture()
def bad_tree(tmp_path: Path) -> Path:
    """An identity-folder tree with two good faces and one file of every awkward kind."""
    src = tmp_path / "src"
    (src / "good").mkdir(parents=True)
    (src / "odd").mkdir()
    for rel in FACES[:2]:
        shutil.copy(LFW / rel, src / "good" / Path(rel).name)
    face = Image.open(LFW / FACES[2]).convert("RGB")
    face.convert("L").save(src / "odd" / "gray.jpg")
    face.convert("CMYK").save(src / "odd" / "cmyk.jpg")
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(face.size).point(lambda v: 128 + v // 2))
    rgba.save(src / "odd" / "alpha.png")
    raw = (LFW / FACES[3]).read_bytes()
    (src / "odd" / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    rng = np.random.default_rng(0)
    (src / "odd" / "corrupt.jpg").write_bytes(raw[:1500] + rng.bytes(len(raw) - 1500))
    (src / "odd" / "empty.jpg").write_bytes(b"")
    (src / "odd" / "notes.txt").write_text("not an image\n")
    (src / "odd" / "fake.jpg").write_text("<html>also not an image</html>\n")
    (src / ".DS_Store").write_bytes(b"\x00hidden")  # hidden files are not inputs
    Image.fromarray(np.full((120, 100, 3), 90, np.uint8)).save(src / "odd" / "blank.png")  # decodes, no face
    return src


def test_every_bad_input_kind_is_reported_and_converted_ones_aligned(bad_tree, tmp_path):
    dst = tmp_path / "dst"
    s = align_tree(bad_tree, dst, mode="test", workers=1, progress=False)
    header, m = _manifest(dst)
    assert header == list(MANIFEST_COLUMNS)
    assert sorted(m) == sorted(p.relative_to(bad_tree).as_posix() for p in bad_tree.rglob("*")
                               if p.is_file() and not p.name.startswith("."))
    for name, kind in [("gray.jpg", "L"), ("cmyk.jpg", "CMYK"), ("alpha.png", "RGBA")]:
        row = m[f"odd/{name}"]
        assert row["detected"] == "1" and row["reason"].startswith(f"converted {kind}"), row
        crop = np.asarray(Image.open(dst / "odd" / (Path(name).stem + ".jpg")))
        assert crop.shape == (112, 96, 3)
    for name, why in [("truncated.jpg", "truncated"), ("corrupt.jpg", "corrupt"), ("empty.jpg", "empty"),
                      ("notes.txt", "not an image"), ("fake.jpg", "not an image")]:
        row = m[f"odd/{name}"]
        assert row["reason"].startswith("unreadable:") and why in row["reason"], row
        assert row["detected"] == "0" and row["x1"] == "" and row["score"] == ""
        assert not (dst / "odd" / (Path(name).stem + ".jpg")).exists()
    for rel in FACES[:2]:
        row = m[f"good/{Path(rel).name}"]
        assert row["detected"] == "1" and row["reason"] == "" and float(row["score"]) > 0.9
        p = _pts(row)
        assert p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0]  # left = smaller x
    # test mode never drops a decodable image: the faceless one falls back to the default points
    row = m["odd/blank.png"]
    assert row["detected"] == "0" and "fallback: default" in row["reason"]
    np.testing.assert_allclose(_pts(row), default_points(120, 100), atol=0.01)
    assert (dst / "odd" / "blank.jpg").is_file()
    assert s["unreadable"] == 5 and s["errors"] == 0 and s["converted"] == 3 and s["fallback_default"] == 1
    assert s["crops"] == 6 and s["files"] == 11 and s["decoded"] == 6
    assert s["detection_rate"] == pytest.approx(5 / 6)
    summary = json.loads((dst / "summary.json").read_text())
    assert summary["fallback_default_files"] == ["odd/blank.png"]
    report = (dst / "report.md").read_text()
    assert "odd/blank.png" in report and "odd/truncated.jpg" in report


def test_train_mode_skips_faceless_and_landmarks_file_fallback(bad_tree, tmp_path):
    dst = tmp_path / "train"
    s = align_tree(bad_tree, dst, mode="train", workers=1, progress=False)
    _, m = _manifest(dst)
    assert "skipped" in m["odd/blank.png"]["reason"] and m["odd/blank.png"]["x1"] == ""
    assert not (dst / "odd" / "blank.jpg").exists() and s["skipped_no_face"] == 1
    # test mode with a side file: its points are used for the faceless image, and say so
    lm = tmp_path / "lm.csv"
    pts = np.array([[40, 50], [60, 50], [50, 62], [42, 75], [58, 75]], dtype=float)
    lm.write_text("path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\nodd/blank.png," + ",".join(map(str, pts.ravel())) + "\n")
    dst2 = tmp_path / "test_lm"
    s2 = align_tree(bad_tree, dst2, mode="test", landmarks=lm, workers=1, progress=False)
    _, m2 = _manifest(dst2)
    assert "fallback: landmarks file" in m2["odd/blank.png"]["reason"]
    np.testing.assert_allclose(_pts(m2["odd/blank.png"]), pts)
    assert s2["fallback_landmarks_file"] == 1 and s2["fallback_default"] == 0


def test_resume_skips_finished_work_and_keeps_manifest_complete(tmp_path):
    src = tmp_path / "src"
    for rel in FACES:
        (src / Path(rel).parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(LFW / rel, src / rel)
    dst = tmp_path / "dst"
    s1 = align_tree(src, dst, workers=1, progress=False)
    first = (dst / "manifest.csv").read_text()
    assert s1["processed_this_run"] == 4
    crop = dst / Path(FACES[0]).with_suffix(".jpg")
    mtime = crop.stat().st_mtime_ns
    s2 = align_tree(src, dst, workers=1, progress=False)
    assert s2["processed_this_run"] == 0 and s2["reused_from_previous_run"] == 4
    assert [r["processed_this_run"] for r in s2["runs"]] == [4, 0]  # every invocation's timing is kept
    assert (dst / "manifest.csv").read_text() == first and crop.stat().st_mtime_ns == mtime
    # a missing crop, a changed source and an interrupted log line are redone; nothing else
    (dst / Path(FACES[1]).with_suffix(".jpg")).unlink()
    os.utime(src / FACES[2], ns=(1, 1))
    with open(dst / STATE_DIR / "results.jsonl", "a") as f:
        f.write('{"path": "cut sho')
    s3 = align_tree(src, dst, workers=1, progress=False)
    assert s3["processed_this_run"] == 2 and s3["reused_from_previous_run"] == 2
    assert (dst / "manifest.csv").read_text() == first  # same results, complete manifest
    with pytest.raises(DataError, match="other options"):
        align_tree(src, dst, size="112x112", workers=1, progress=False)
    s4 = align_tree(src, dst, size="112x112", workers=1, progress=False, overwrite=True)
    assert s4["processed_this_run"] == 4
    assert np.asarray(Image.open(crop)).shape == (112, 112, 3)


def test_cli_small_run_with_workers_and_contact_sheet(tmp_path, capsys):
    src = tmp_path / "lfw"
    for rel in FACES:
        (src / Path(rel).parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(LFW / rel, src / rel)
    dst = tmp_path / "out"
    assert _cli(str(src), str(dst), "--mode", "test", "--workers", "2", "--ext", "png", "--no-progress") == 0
    out = capsys.readouterr().out
    assert "4 files: 4 detected" in out
    header, m = _manifest(dst)
    assert header == list(MANIFEST_COLUMNS) and sorted(m) == sorted(FACES)  # paths relative to SRC
    for rel in FACES:
        assert np.asarray(Image.open(dst / Path(rel).with_suffix(".png"))).shape == (112, 96, 3)
    # the manifest is itself a valid landmarks side file
    lm = read_landmarks_csv(dst / "manifest.csv")
    np.testing.assert_allclose(lm[FACES[0]], _pts(m[FACES[0]]))
    sheet = tmp_path / "sheet.png"
    assert _cli(str(dst), "--contact-sheet", str(sheet), "--grid", "2x2", "--colors", "64") == 0
    assert Image.open(sheet).size == (2 * 98 + 2, 2 * 114 + 2) and Image.open(sheet).mode == "P"
    assert _cli(str(tmp_path / "missing"), str(dst)) == 2  # a clear error, not a traceback
    assert "source folder not found" in capsys.readouterr().err


def test_align_file_and_choose_face(tmp_path):
    res = align_file(LFW / FACES[0])
    assert res.detected and res.crop.shape == (112, 96, 3) and res.points.shape == (5, 2)
    # the crop is the image warped by the fitted similarity: re-detecting in it finds the points where the
    # transform sent them (MTCNN's own jitter is ~1 px)
    from centerloss.align import detect_faces, similarity_transform, template

    m = similarity_transform(res.points, template((112, 96)))
    expected = res.points @ m[:, :2].T + m[:, 2]
    again = detect_faces(np.ascontiguousarray(np.pad(res.crop, ((20, 20), (20, 20), (0, 0)))), min_face_size=20)
    assert len(again) >= 1
    err = np.abs(again.points[0] - 20 - expected).mean()
    assert err < 2.5, err
    with pytest.raises(DataError, match="empty file"):
        (tmp_path / "e.jpg").write_bytes(b"")
        align_file(tmp_path / "e.jpg")

    from centerloss.align.mtcnn import Faces

    def faces(boxes: list[list[float]]) -> Faces:
        b = np.array(boxes, np.float32)
        return Faces(b, np.linspace(0.99, 0.9, len(b)).astype(np.float32), np.zeros((len(b), 5, 2), np.float32))

    # 250x250: a centred 110 px face beats a bigger face far off-centre, but not a much bigger near one
    assert choose_face(faces([[180, 0, 250, 70], [70, 70, 180, 180]]), 250, 250) == 1
    assert choose_face(faces([[-30, 50, 120, 200], [70, 70, 180, 180]]), 250, 250) == 1  # the docstring case
    assert choose_face(faces([[70, 70, 180, 180], [40, 40, 220, 220]]), 250, 250) == 1
    assert choose_face(Faces.empty(), 250, 250) == -1


def test_landmarks_csv_errors(tmp_path):
    f = tmp_path / "lm.csv"
    f.write_text("a.jpg,1,2,3\n")
    with pytest.raises(DataError, match=r"lm.csv:1: expected path and 10"):
        read_landmarks_csv(f)
    f.write_text("a.jpg,1,2,3,4,5,6,7,8,9,x\n")
    with pytest.raises(DataError, match="must be numbers"):
        read_landmarks_csv(f)
    f.write_text("path,x1,y1\n")
    with pytest.raises(DataError, match="header lacks"):
        read_landmarks_csv(f)
    f.write_text("a.jpg,1,2,3,4,5,6,7,8,9,10\nsub\\b.jpg,1,2,3,4,5,6,7,8,9,10\n")
    got = read_landmarks_csv(f)
    assert set(got) == {"a.jpg", "sub/b.jpg"} and got["a.jpg"].shape == (5, 2)
    with pytest.raises(DataError, match="not found"):
        read_landmarks_csv(tmp_path / "nope.csv")
