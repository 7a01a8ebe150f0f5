"""The batch aligner and `centerloss align`: bad inputs never crash and are reported, the train/test policy,
landmark side files, resume, a small CLI run on real LFW images; and hostile input, faults and concurrency
on small synthetic images: refused output folders, symlinks and special files, non-UTF-8 names, broken
images, OS failures retried on the next run, a full disk, Ctrl-C, a killed parent, two runs at once."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from PIL import Image

from centerloss.align import align_file, align_tree, read_landmarks_csv
from centerloss.align.files import unescape_name
from centerloss.align.policy import choose_face, default_points
from centerloss.align.runner import MANIFEST_COLUMNS, STATE_DIR
from centerloss.cli import main
from centerloss.errors import DataError


def _data_dir() -> Path:
    return DATA


LFW = _data_dir() / "lfw" / "images"
FACES = ["Tony_Blair/Tony_Blair_0010.jpg", "Serena_Williams/Serena_Williams_0004.jpg",
         "Abdullah_Gul/Abdullah_Gul_0003.jpg", "Winona_Ryder/Winona_Ryder_0002.jpg"]
needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason=f"DATA MISSING: LFW not found at {LFW} (set CENTERLOSS_DATA)")
RESULTS = ("manifest.csv", "summary.json", "report.md")


# ------------------------------------------------------------------------------------------------ helpers
def _align(capsys, *argv: object) -> tuple[int, str, str]:
    """`centerloss align ARGV` through the real entry point -> (exit code, stdout, stderr)."""
    code = main(["align", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("centerloss align: "), repr(err)
    assert "Traceback" not in err
    return err


def _manifest(dst: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(dst / "manifest.csv", newline="", encoding="utf-8") as f:
        r = csv.reader(f)
        header = next(r)
        rows = [dict(zip(header, row, strict=True)) for row in r]
    return header, {row["path"]: row for row in rows}


def _pts(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row[c]) for c in MANIFEST_COLUMNS[3:13]]).reshape(5, 2)


def _synth(path: str | os.PathLike[str], noisy: bool = False, seed: int = 0) -> None:
    """A small faceless image (120x100): a smooth gradient, or noise (which compresses badly)."""
    rng = np.random.default_rng(seed)
    if noisy:
        a = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)
    else:
        a = (np.linspace(60, 160, 100)[None, :, None] + rng.integers(0, 3, (120, 100, 3))).astype(np.uint8)
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    fmt = "JPEG" if os.fspath(path).lower().endswith(".jpg") else "PNG"
    Image.fromarray(a).save(path, fmt)


def _temps(dst: Path) -> list[str]:
    """Temporary files of centerloss.utils.atomic anywhere under dst."""
    return [str(p) for p in dst.rglob(".*") if ".tmp-" in p.name]


def _summary(dst: Path) -> dict:
    return json.loads((dst / "summary.json").read_text(encoding="utf-8"))


def _writable(folder: Path) -> bool:
    try:
        (folder / "probe").write_bytes(b"x")
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (its pixel data is not there): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------ LFW tests
@pytest.fixture()
def bad_tree(tmp_path: Path) -> Path:
    """An identity-folder tree with two good faces and one file of every awkward kind."""
    if not LFW.is_dir():
        pytest.skip(f"DATA MISSING: LFW not found at {LFW} (set CENTERLOSS_DATA)")
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
    (src / ".DS_Store").write_bytes(b"\x00hidden")  # hidden files are not inputs, but are listed
    Image.fromarray(np.full((120, 100, 3), 90, np.uint8)).save(src / "odd" / "blank.png")  # decodes, no face
    return src


def test_every_bad_input_kind_is_reported_and_converted_ones_aligned(bad_tree, tmp_path):
    dst = tmp_path / "dst"
    s = align_tree(bad_tree, dst, mode="test", workers=1, progress=False)
    header, m = _manifest(dst)
    assert header == list(MANIFEST_COLUMNS)
    assert sorted(m) == sorted(p.relative_to(bad_tree).as_posix() for p in bad_tree.rglob("*") if p.is_file())
    assert m[".DS_Store"]["status"] == "skipped" and "hidden" in m[".DS_Store"]["reason"]
    for name, kind in [("gray.jpg", "L"), ("cmyk.jpg", "CMYK"), ("alpha.png", "RGBA")]:
        row = m[f"odd/{name}"]
        assert row["detected"] == "1" and row["reason"].startswith(f"converted {kind}"), row
        assert row["status"] == "ok" and row["out"] == f"odd/{Path(name).stem}.jpg"
        crop = np.asarray(Image.open(dst / "odd" / (Path(name).stem + ".jpg")))
        assert crop.shape == (112, 96, 3)
    for name, why in [("truncated.jpg", "truncated"), ("corrupt.jpg", "corrupt"), ("empty.jpg", "empty"),
                      ("notes.txt", "not an image"), ("fake.jpg", "not an image")]:
        row = m[f"odd/{name}"]
        assert row["reason"].startswith("unreadable:") and why in row["reason"], row
        assert row["detected"] == "0" and row["x1"] == "" and row["score"] == ""
        assert (row["status"], row["failure"], row["decoded"], row["out"]) == ("failed", "permanent", "0", "")
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
    assert s["crops"] == 6 and s["files"] == 11 and s["decoded"] == 6 and s["entries"] == 12
    assert s["detection_rate"] == pytest.approx(5 / 6)
    summary = _summary(dst)
    assert summary["fallback_default_files"] == ["odd/blank.png"]
    report = (dst / "report.md").read_text()
    assert "odd/blank.png" in report and "odd/truncated.jpg" in report


def test_train_mode_skips_faceless_and_landmarks_file_fallback(bad_tree, tmp_path):
    dst = tmp_path / "train"
    s = align_tree(bad_tree, dst, mode="train", workers=1, progress=False)
    _, m = _manifest(dst)
    assert "skipped" in m["odd/blank.png"]["reason"] and m["odd/blank.png"]["x1"] == ""
    assert (m["odd/blank.png"]["status"], m["odd/blank.png"]["failure"]) == ("skipped", "permanent")
    assert not (dst / "odd" / "blank.jpg").exists() and s["skipped_no_face"] == 1
    # no face in train mode is permanent: retried only with --retry-failed all
    assert align_tree(bad_tree, dst, mode="train", workers=1, progress=False)["processed_this_run"] == 0
    s_all = align_tree(bad_tree, dst, mode="train", workers=1, progress=False, retry_failed="all")
    assert s_all["processed_this_run"] == 6  # blank.png + the five unreadable files
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


@needs_lfw
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


@needs_lfw
def test_detection_rate_is_over_the_final_manifest_and_never_above_100(tmp_path, capsys):
    """Regression: crops that failed to be written counted as detected but not as decoded, so a DST whose
    sub-folder could not be created reported 300% here (and 1000%+ on bigger trees), on every rerun."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for rel in (FACES[0], "bad/" + Path(FACES[1]).name, "bad/" + Path(FACES[2]).name):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(LFW / FACES[0], src / FACES[0])
    for rel in FACES[1:3]:
        shutil.copy(LFW / rel, src / "bad" / Path(rel).name)
    dst.mkdir()
    (dst / "bad").write_text("a file where the crop folder should be")
    for _ in range(2):  # the first run and a rerun that retries (and fails again)
        code, _, err = _align(capsys, src, dst, "--workers", "1", "--no-progress")
        assert code == 1 and "bad/" in _one_line(err) and "rerun" in err
        s, (_, m) = _summary(dst), _manifest(dst)
        decoded = sum(int(r["decoded"]) for r in m.values())
        detected = sum(int(r["detected"]) for r in m.values() if r["decoded"] == "1")
        assert (s["decoded"], s["detected"], s["detection_rate"]) == (decoded, detected, detected / decoded)
        assert s["detection_rate"] <= 1.0 and decoded == 3 and s["failed_transient"] == 2
    (dst / "bad").unlink()
    code, _, err = _align(capsys, src, dst, "--workers", "1", "--no-progress")
    s = _summary(dst)
    assert code == 0 and err == "" and s["processed_this_run"] == 2 and s["detection_rate"] == 1.0
    assert (dst / "bad" / Path(FACES[1]).with_suffix(".jpg").name).is_file()


def test_detection_rate_counts_only_decoded_rows_without_lfw():
    """The same regression on hand-made rows: 1 crop written + 9 detected faces whose crop write failed."""
    from centerloss.align.report import summarise
    from centerloss.align.workers import new_record

    rows = []
    for k in range(10):
        r = new_record(f"p/{k}.jpg", 1, 1)
        r.update(decoded=1, detected=1, score=0.99, points=[[1.0, 2.0]] * 5, status="ok", out=f"p/{k}.jpg")
        if k:
            r.update(status="failed", failure="transient", out="", reason="error: cannot write crop (disk full)")
        rows.append(r)
    rows.append({**new_record(".DS_Store"), "input": 0, "status": "skipped", "reason": "hidden"})
    info = {k: None for k in ("src", "dst", "mode", "size", "ext", "min_face_size", "landmarks_file",
                              "retry_failed", "workers", "load_average_start")}
    info.update(processed_this_run=10, reused_from_previous_run=0, seconds_processing=1.0, seconds_total=1.0,
                unused_side=[])
    s = summarise(rows, info)
    assert (s["decoded"], s["detected"], s["detection_rate"]) == (10, 10, 1.0)  # the old code said 10 / 1
    assert (s["errors"], s["failed_transient"], s["crops"], s["entries"], s["files"]) == (9, 9, 1, 11, 10)


@needs_lfw
def test_cli_small_run_with_workers_and_contact_sheet(tmp_path, capsys):
    src = tmp_path / "lfw"
    for rel in FACES:
        (src / Path(rel).parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(LFW / rel, src / rel)
    dst = tmp_path / "out"
    code, out, err = _align(capsys, src, dst, "--mode", "test", "--workers", "2", "--ext", "png", "--no-progress")
    assert code == 0 and "4 files: 4 detected" in out and err == ""
    header, m = _manifest(dst)
    assert header == list(MANIFEST_COLUMNS) and sorted(m) == sorted(FACES)  # paths relative to SRC
    for rel in FACES:
        assert np.asarray(Image.open(dst / Path(rel).with_suffix(".png"))).shape == (112, 96, 3)
    # the manifest is itself a valid landmarks side file
    lm = read_landmarks_csv(dst / "manifest.csv")
    np.testing.assert_allclose(lm[FACES[0]], _pts(m[FACES[0]]))
    sheet = tmp_path / "sheet.png"
    assert _align(capsys, dst, "--contact-sheet", sheet, "--grid", "2x2", "--colors", "64")[0] == 0
    assert Image.open(sheet).size == (2 * 98 + 2, 2 * 114 + 2) and Image.open(sheet).mode == "P"


@needs_lfw
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


# ------------------------------------------------------------------------------------------------ refused DST
def test_cli_errors_are_one_line_naming_the_value(tmp_path, capsys):
    src = tmp_path / "src"
    _synth(src / "a.png")
    cases = [
        ((tmp_path / "missing", tmp_path / "d1"), "source folder not found"),
        ((src, tmp_path / "d2", "--size", "112by96"), "'112by96'"),
        ((src,), "DST is required"),
        ((src, tmp_path / "d3", "--workers", "0"), "workers must be >= 1, got 0"),
        ((src, tmp_path / "d4", "--min-face", "5"), "got 5.0"),
        ((src, tmp_path / "d5", "--landmarks", tmp_path / "nope.csv"), "nope.csv"),
        ((src, "--contact-sheet", tmp_path / "s.png", "--grid", "8y12"), "'8y12'"),
        ((src, src), "DST must differ from SRC"),
        ((src, tmp_path), "DST must differ from SRC and not contain it"),
    ]
    for argv, needle in cases:
        code, out, err = _align(capsys, *argv)
        assert code == 2 and needle in _one_line(err), (argv, err)
    assert not any((tmp_path / d).exists() for d in ("d2", "d3", "d4", "d5"))  # refused before DST is made


def test_dst_whose_parent_is_a_file_or_that_is_a_file(tmp_path, capsys):
    src = tmp_path / "src"
    _synth(src / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = _align(capsys, src, blocker / "dst", "--workers", "1", "--no-progress")
    assert code == 2 and str(blocker / "dst") in _one_line(err) and "Not a directory" in err
    code, _, err = _align(capsys, src, blocker, "--workers", "1", "--no-progress")
    assert code == 2 and str(blocker) in _one_line(err) and "not a folder" in err
    assert blocker.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [blocker, src]


def test_read_only_dst_is_one_clear_error(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "ro"
    _synth(src / "a.png")
    dst.mkdir()
    dst.chmod(0o555)
    try:
        if not _writable(dst):  # an ordinary user: the mode bits suffice
            code, _, err = _align(capsys, src, dst, "--workers", "1", "--no-progress")
            assert code == 2 and str(dst) in _one_line(err) and "Permission denied" in err
            assert list(dst.iterdir()) == []
            return
    finally:
        dst.chmod(0o755)
    # root ignores mode bits: make DST a read-only bind mount in a private user+mount namespace instead
    if shutil.which("unshare") is None:
        pytest.skip("running as root (chmod cannot make a folder read-only) and no unshare(1)")
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 77; '
              'exec "$2" -m centerloss.cli align "$3" "$1" --workers 1 --no-progress')
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(dst), sys.executable, str(src)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode == 77 or "unshare" in r.stderr:
        pytest.skip(f"running as root and cannot mount a read-only folder here: {r.stderr.strip()}")
    assert r.returncode == 2 and str(dst) in _one_line(r.stderr) and "Read-only file system" in r.stderr
    assert list(dst.iterdir()) == []


def test_a_second_run_into_the_same_dst_is_refused(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _synth(src / "a.png")
    (dst / STATE_DIR).mkdir(parents=True)
    fd = os.open(dst / STATE_DIR / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running aligner holds
        code, _, err = _align(capsys, src, dst, "--workers", "1", "--no-progress")
        assert code == 2 and "another `centerloss align`" in _one_line(err) and str(dst) in err
        assert not (dst / "manifest.csv").exists() and not (dst / "a.jpg").exists()
    finally:
        os.close(fd)
    assert _align(capsys, src, dst, "--workers", "1", "--no-progress")[0] == 0


# ------------------------------------------------------------------------------------------------ hostile SRC
def _alarm(seconds: int):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``; -> the old handler."""
    def fail(signum, frame):
        raise TimeoutError(f"align blocked for {seconds} s")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    return old


def test_every_entry_is_listed_symlinks_and_special_files_never_block(tmp_path):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    d = src / "d"
    _synth(d / "a.png")
    _synth(outside / "o.png")
    _synth(src / ".hidden.png")
    (d / "notes.txt").write_text("not an image\n")
    os.symlink(outside / "o.png", d / "to_image.png")  # followed
    os.symlink(tmp_path / "nowhere.png", d / "dangling.png")
    os.symlink("loop_b", d / "loop_a")
    os.symlink("loop_a", d / "loop_b")
    os.symlink(outside, d / "to_outside_dir")
    os.symlink(d, src / "to_inside_dir")
    os.mkfifo(d / "pipe.jpg")  # opening it for reading would block forever
    os.symlink("pipe.jpg", d / "to_pipe.jpg")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(d / "s"))
    expect = {"d/a.png": ("ok", ""), "d/to_image.png": ("ok", ""), ".hidden.png": ("skipped", "hidden"),
              "d/notes.txt": ("failed", "unreadable: "), "d/dangling.png": ("skipped", "dangling symlink"),
              "d/loop_a": ("skipped", "symlink loop"), "d/loop_b": ("skipped", "symlink loop"),
              "d/to_outside_dir": ("skipped", "symlink to a folder outside SRC"),
              "to_inside_dir": ("skipped", "symlink to a folder inside SRC"),
              "d/pipe.jpg": ("skipped", "not a regular file (FIFO)"),
              "d/to_pipe.jpg": ("skipped", "symlink to a non-regular file (FIFO)"),
              "d/s": ("skipped", "not a regular file (socket)")}
    try:
        os.mknod(d / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # needs root (or CAP_MKNOD)
        expect["d/null"] = ("skipped", "not a regular file (character device)")
    except OSError:
        pass
    old = _alarm(120)
    try:
        s = align_tree(src, dst, workers=1, progress=False)
        with pytest.raises(DataError, match="not a regular file"):
            align_file(d / "to_pipe.jpg")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        sock.close()
    _, m = _manifest(dst)
    assert sorted(m) == sorted(expect)
    for path, (status, why) in expect.items():
        assert m[path]["status"] == status and why in m[path]["reason"], m[path]
    for path in ("d/dangling.png", "d/pipe.jpg", "d/loop_a"):
        assert (m[path]["failure"], m[path]["decoded"], m[path]["out"]) == ("", "0", "")
    assert (dst / "d" / "to_image.jpg").is_file() and not (dst / "d" / "pipe.jpg").exists()
    assert (s["entries"], s["files"], s["not_inputs"], s["crops"]) == (len(expect), 3, len(expect) - 3, 2)
    assert "d/loop_a" in (dst / "report.md").read_text()


def test_names_that_are_not_utf8(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    raw = b"d\xff/caf\xe9 \\x41.png"  # undecodable bytes in folder and file name, and a literal backslash
    try:
        os.mkdir(os.fsencode(src) + b"/d\xff")
    except OSError as e:
        pytest.skip(f"this filesystem refuses non-UTF-8 names: {e}")
    _synth(os.fsdecode(os.fsencode(src) + b"/" + raw))
    _synth(src / "plain \\x41.png")  # valid UTF-8 that merely looks like an escape
    _synth(src / "new\nline, \"quoted\".png")  # CSV quoting keeps it intact
    code, out, err = _align(capsys, src, dst, "--workers", "1", "--no-progress")
    assert code == 0 and err == "" and "3 files" in out
    _, m = _manifest(dst)  # the manifest is valid UTF-8
    odd = m["d\\xff/caf\\xe9 \\\\x41.png"]
    assert odd["path_escaped"] == "1" and odd["status"] == "ok"
    assert os.fsencode(unescape_name(odd["path"])) == raw
    assert os.fsencode(unescape_name(odd["out"])) == b"d\xff/caf\xe9 \\x41.jpg"
    assert os.path.isfile(os.fsencode(dst) + b"/d\xff/caf\xe9 \\x41.jpg")
    plain = m["plain \\x41.png"]
    assert plain["path_escaped"] == "0" and os.path.isfile(dst / plain["out"])
    assert m["new\nline, \"quoted\".png"]["path_escaped"] == "0"
    assert (dst / "new\nline, \"quoted\".jpg").is_file()
    assert os.fsdecode(raw) in read_landmarks_csv(dst / "manifest.csv")  # round trip as a side file
    assert len(_summary(dst)["fallback_default_files"]) == 3 and odd["path"] in _summary(dst)["fallback_default_files"]
    assert "caf\\xe9" in (dst / "report.md").read_text(encoding="utf-8")
    code, _, _ = _align(capsys, src, dst, "--workers", "1", "--no-progress")
    assert code == 0 and _summary(dst)["reused_from_previous_run"] == 3  # the state round-trips the names


def test_truncated_jpeg_and_decompression_bomb_are_permanent_failures(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _synth(src / "ok.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 100, 3), dtype=np.uint8)).save(buf, "JPEG")
    (src / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (src / "bomb.png").write_bytes(_png_header(100_000, 100_000))  # 10 Gpx declared in 70 bytes
    s = align_tree(src, dst, workers=1, progress=False)
    _, m = _manifest(dst)
    for name, why in [("truncated.jpg", "truncated"), ("bomb.png", "decompression bomb")]:
        row = m[name]
        assert (row["status"], row["failure"], row["out"]) == ("failed", "permanent", ""), row
        assert row["reason"].startswith("unreadable:") and why in row["reason"], row
        assert not (dst / (Path(name).stem + ".jpg")).exists()
    assert s["unreadable"] == 2 and s["errors"] == 0 and s["crops"] == 1
    assert align_tree(src, dst, workers=1, progress=False)["processed_this_run"] == 0  # not retried
    assert align_tree(src, dst, workers=1, progress=False, retry_failed="all")["processed_this_run"] == 2


# ------------------------------------------------------------------------------------------------ OS failures
def test_os_failure_is_retried_once_fixed_even_as_root(tmp_path, capsys):
    """A folder where the crop file should go: an OS refusal that holds for root too (EISDIR)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _synth(src / "a.png")
    _synth(src / "b.png", seed=1)
    (dst / "b.jpg").mkdir(parents=True)
    code, _, err = _align(capsys, src, dst, "--workers", "1", "--no-progress")
    assert code == 1 and "b.png" in _one_line(err) and "Is a directory" in err and "rerun" in err
    _, m = _manifest(dst)
    assert (m["b.png"]["status"], m["b.png"]["failure"]) == ("failed", "transient") and m["a.png"]["status"] == "ok"
    assert not _temps(dst) and _summary(dst)["failed_transient"] == 1
    code, _, _ = _align(capsys, src, dst, "--workers", "1", "--no-progress", "--retry-failed", "none")
    assert code == 1 and _summary(dst)["processed_this_run"] == 0
    (dst / "b.jpg").rmdir()
    code, _, err = _align(capsys, src, dst, "--workers", "1", "--no-progress")
    s = _summary(dst)
    assert code == 0 and err == "" and (s["processed_this_run"], s["reused_from_previous_run"]) == (1, 1)
    assert (dst / "b.jpg").is_file() and _manifest(dst)[1]["b.png"]["status"] == "ok"


def test_permission_denied_source_is_retried_after_chmod(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _synth(src / "a.png")
    _synth(src / "b.png", seed=1)
    _synth(src / "locked" / "c.png", seed=2)
    (src / "b.png").chmod(0)
    (src / "locked").chmod(0)
    try:
        try:  # root (CAP_DAC_OVERRIDE) reads it anyway: then chmod cannot provoke the failure
            (src / "b.png").open("rb").close()
            pytest.skip(f"euid {os.geteuid()} can read a mode-000 file (root): chmod cannot deny access here; "
                        "test_os_failure_is_retried_once_fixed_even_as_root covers the retry")
        except PermissionError:
            pass
        code, _, err = _align(capsys, src, dst, "--workers", "1", "--no-progress")
        assert code == 1 and "b.png" in _one_line(err) and "Permission denied" in err
        _, m = _manifest(dst)
        assert (m["b.png"]["status"], m["b.png"]["failure"]) == ("failed", "transient")
        assert m["locked"]["failure"] == "transient" and "cannot list folder" in m["locked"]["reason"]
    finally:
        (src / "b.png").chmod(0o644)
        (src / "locked").chmod(0o755)
    code, _, _ = _align(capsys, src, dst, "--workers", "1", "--no-progress")
    assert code == 0 and _summary(dst)["processed_this_run"] == 2  # b.png, and c.png now that it is listed
    assert (dst / "locked" / "c.jpg").is_file() and "locked" not in _manifest(dst)[1]


def test_a_file_that_vanishes_mid_run_is_a_transient_failure(tmp_path, monkeypatch):
    import centerloss.align.runner as runner

    src, dst = tmp_path / "src", tmp_path / "dst"
    _synth(src / "a.png")
    _synth(src / "gone.png", seed=1)
    real_scan = runner.scan_tree

    def scan_then_delete(*args, **kwargs):  # the file is listed, then removed before a worker reads it
        entries = real_scan(*args, **kwargs)
        (src / "gone.png").unlink()
        return entries

    monkeypatch.setattr(runner, "scan_tree", scan_then_delete)
    s = align_tree(src, dst, workers=1, progress=False)
    row = _manifest(dst)[1]["gone.png"]
    assert (row["status"], row["failure"]) == ("failed", "transient") and "No such file" in row["reason"]
    assert s["failed_transient"] == 1 and s["crops"] == 1
    monkeypatch.setattr(runner, "scan_tree", real_scan)
    s = align_tree(src, dst, workers=1, progress=False)  # gone for good: its row goes, nothing is redone
    assert s["processed_this_run"] == 0 and s["errors"] == 0 and sorted(_manifest(dst)[1]) == ["a.png"]


_LIMITED = """
import resource, sys
from centerloss.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


def test_disk_full_mid_run_leaves_nothing_partial_and_a_rerun_resumes(tmp_path):
    """A per-file size limit (RLIMIT_FSIZE) makes the kernel fail the write with EFBIG, as a full disk would
    with ENOSPC; it works for any user. Flat crops fit under it, the noisy one does not."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _synth(src / "a.png")
    align_tree(src, dst, workers=1, progress=False, ext="png")  # an earlier, complete run
    assert all((dst / f).is_file() for f in RESULTS)
    _synth(src / "b.png", seed=1)
    _synth(src / "c.png", seed=2)
    _synth(src / "z.png", noisy=True)
    argv = ["align", str(src), str(dst), "--workers", "1", "--no-progress", "--ext", "png"]
    r = subprocess.run([sys.executable, "-c", _LIMITED, "16000", *argv], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr
    err = _one_line(r.stderr)
    assert "z.png" in err and "File too large" in err and "2 of 3 images" in err and "rerun" in err
    assert not _temps(dst)
    assert not any((dst / f).exists() for f in RESULTS)  # nothing that looks like a finished run
    assert (dst / "b.png").is_file() and (dst / "c.png").is_file() and not (dst / "z.png").exists()
    s = align_tree(src, dst, workers=1, progress=False, ext="png")
    assert (s["processed_this_run"], s["reused_from_previous_run"], s["crops"]) == (1, 3, 4)
    assert all((dst / f).is_file() for f in RESULTS) and not _temps(dst)


# ------------------------------------------------------------------------------------------------ processes
def _big_tree(src: Path, n: int) -> list[Path]:
    """n small images (copies of a few), enough that 2 workers are still busy when the test strikes."""
    blobs = []
    for k in range(4):
        buf = io.BytesIO()
        rng = np.random.default_rng(k)
        a = (np.linspace(40, 200, 160)[None, :, None] + rng.integers(0, 40, (160, 160, 3))).astype(np.uint8)
        Image.fromarray(a).save(buf, "PNG")
        blobs.append(buf.getvalue())
    files = [src / f"p{i // 100:02d}" / f"{i:04d}.png" for i in range(n)]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(blobs[i % len(blobs)])
    return files


def _start(src: Path, dst: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "centerloss.cli", "align", str(src), str(dst), "--workers",
                             "2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a shell job would be


def _saved_paths(dst: Path) -> set[str]:
    """Paths whose records a run saved (its finished chunks)."""
    out = set()
    for part in (dst / STATE_DIR / "parts").glob("[!.]*.jsonl"):
        out |= {json.loads(line)["path"] for line in part.read_text().splitlines()}
    return out


def _wait_for_work(p: subprocess.Popen, dst: Path, timeout: float = 120) -> None:
    """Until the run has saved its first finished chunk (so workers are up and busy)."""
    t = time.monotonic()
    while not ((dst / STATE_DIR / "parts").is_dir() and _saved_paths(dst)):
        assert p.poll() is None, f"align ended early: {p.communicate()}"
        assert time.monotonic() - t < timeout, "no chunk finished in time"
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # zombie = dead
    except OSError:
        return False


def _resume_small(src: Path, dst: Path, files: list[Path], saved: set[str]) -> dict:
    """Rerun after dropping most never-started sources (keeps the rerun short): finished work is reused."""
    started = {f for f in files if (dst / f.relative_to(src)).with_suffix(".jpg").exists()}
    unstarted = [f for f in files if f not in started]
    for f in unstarted[3:]:
        f.unlink()
    s = align_tree(src, dst, workers=1, progress=False)
    assert s["reused_from_previous_run"] == len(saved) and s["files"] == len(started) + min(3, len(unstarted))
    assert s["processed_this_run"] == s["files"] - len(saved) and s["crops"] == s["files"]
    assert not _temps(dst) and all((dst / f).is_file() for f in RESULTS)
    return s


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_prints_one_line_keeps_results_and_a_rerun_resumes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = _big_tree(src, 800)
    p = _start(src, dst)
    _wait_for_work(p, dst)
    os.killpg(p.pid, signal.SIGINT)  # as a terminal does: the whole job, workers included
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err == "centerloss align: interrupted\n"  # nothing from the workers
    saved = _saved_paths(dst)
    assert saved and not _temps(dst) and not any((dst / f).exists() for f in RESULTS)
    assert all((dst / r).with_suffix(".jpg").is_file() for r in saved)
    _resume_small(src, dst, files, saved)


def test_a_worker_exiting_on_sigterm_sweeps_its_own_temporary(tmp_path, monkeypatch):
    """Even when the signal lands where atomic_path cannot clean up (simulated: a temporary left behind, then
    SystemExit), the worker's exit path removes its own temporary of the crop being written, and no other."""
    from centerloss.align import workers
    from centerloss.utils.atomic import _tmp_name

    out = tmp_path / "p00" / "0065.jpg"
    out.parent.mkdir()
    other = out.parent / f".0065.tmp-{os.getpid() + 1}-00000000.jpg"  # another process's: not ours to remove
    other.write_bytes(b"x")

    def interrupted(task):
        _tmp_name(Path(task[2])).write_bytes(b"half a jpeg")
        raise SystemExit(143)

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(workers, "process_one", interrupted)
    monkeypatch.setattr(workers.os, "_exit", fake_exit)
    monkeypatch.setitem(workers._W, "worker", True)
    with pytest.raises(Exited):
        workers.process_chunk([("a.jpg", "src", str(out), "p00/0065.jpg", None, 1, 1, "a.jpg")])
    assert sorted(p.name for p in out.parent.iterdir()) == [other.name]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_parent_stops_every_worker(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = _big_tree(src, 800)
    p = _start(src, dst)
    _wait_for_work(p, dst)
    kids = _children(p.pid)
    assert len(kids) >= 2  # the workers (and multiprocessing's resource tracker)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    t = time.monotonic()
    while any(_alive(k) for k in kids) and time.monotonic() - t < 10:
        time.sleep(0.05)
    assert not [k for k in kids if _alive(k)], "workers outlived their parent"
    before = {f: f.stat().st_mtime_ns for f in dst.rglob("*") if f.is_file()}
    time.sleep(1.0)
    assert {f: f.stat().st_mtime_ns for f in dst.rglob("*") if f.is_file()} == before  # nothing written after
    assert not [t for t in _temps(dst) if STATE_DIR not in t]  # workers removed their half-written crops
    _resume_small(src, dst, files, _saved_paths(dst))  # ... and the rerun sweeps the parent's, if any
