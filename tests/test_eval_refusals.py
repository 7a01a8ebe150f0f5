"""`centerloss eval` refuses bad input with one line naming the file and the problem, and never leaves a
half-written result: every case runs the real entry point (``centerloss.cli.main``), checks the exit code,
that stderr is exactly one line, and that the output folder holds no report and no temporary file."""

from __future__ import annotations

import errno
import io
import json
import math
import pickle
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from centerloss.cli import main
from centerloss.errors import DataError
from centerloss.eval import features as feats_mod
from centerloss.eval.features import load_distractors, load_features, save_features
from centerloss.models import create_model
from centerloss.models.io import save_model

PREFIX = "centerloss eval: error: "
TINY_KW = {"embed_dim": 8, "width": 4}


# ---------------------------------------------------------------- helpers


def leftovers(out: Path) -> list[str]:
    """Files in ``out`` that a failed run must not leave: a report, a plot, a temp or probe file."""
    if not out.exists():
        return []
    bad = ("report", ".tmp", "write-test", "roc.png", "scores.png", "scores.npz")
    return sorted(p.name for p in out.rglob("*") if any(b in p.name for b in bad))


def refused(capsys, argv: list[str], *needles: str, code: int = 2, out: Path | None = None) -> str:
    """Run the CLI; assert the exit code, ONE stderr line with the prefix and every needle, and no leftovers."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    if out is not None:
        assert leftovers(out) == []
    return lines[0]


def write_pairs(tmp_path: Path, n_folds: int = 2, per: int = 6, d: int = 8) -> tuple[Path, Path, list[str]]:
    """A valid pairs.txt (distinct people per pair) and a matching features file; returns the body lines too."""
    rng = np.random.default_rng(0)
    body, feats = [], {}
    for f in range(n_folds):
        for i in range(per):
            body.append(f"M{f}_{i}\t1\t2")
            feats[f"M{f}_{i}/M{f}_{i}_0001.jpg"] = feats[f"M{f}_{i}/M{f}_{i}_0002.jpg"] = None
        for i in range(per):
            body.append(f"A{f}_{i}\t1\tB{f}_{i}\t1")
            feats[f"A{f}_{i}/A{f}_{i}_0001.jpg"] = feats[f"B{f}_{i}/B{f}_{i}_0001.jpg"] = None
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{n_folds}\t{per}\n" + "\n".join(body) + "\n")
    fpath = tmp_path / "feats.npz"
    save_features(fpath, list(feats), rng.normal(size=(len(feats), d)))
    return pairs, fpath, body


def lfw_argv(pairs: Path, feats: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "lfw", "--features", str(feats), "--pairs", str(pairs), "--out", str(out), *extra]


def jpeg(seed: int, size: tuple[int, int] = (112, 112)) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_model(path, create_model("face_small", **TINY_KW), "face_small", TINY_KW)
    return path


def bin_argv(bin_path: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "bin", str(bin_path), "--model", str(ckpt), "--out", str(out), "--n-folds", "2", "--quiet",
            "--workers", "0", "--no-plots", *extra]


# ---------------------------------------------------------------- pairs files


def test_valid_inputs_pass(tmp_path, capsys):
    pairs, feats, _ = write_pairs(tmp_path)
    out = tmp_path / "ok"
    assert main(lfw_argv(pairs, feats, out)) == 0
    assert json.loads((out / "report.json").read_text())["n_pairs"] == 24
    assert (out / "roc.png").stat().st_size > 1000 and not list(out.glob(".*tmp*"))


def test_pairs_binary_and_not_utf8(tmp_path, capsys):
    pairs, feats, body = write_pairs(tmp_path)
    out = tmp_path / "o"
    pairs.write_bytes(b"2\t6\n" + "\n".join(body[:3]).encode() + b"\nA\x00\x01\x02 1 2\n")
    refused(capsys, lfw_argv(pairs, feats, out), f"{pairs}:5:", "binary file", out=out)
    pairs.write_bytes(b"2\t6\n" + "\n".join(body).encode() + b"\nJos\xe9 1 2\n")
    refused(capsys, lfw_argv(pairs, feats, out), f"{pairs}:26:", "not UTF-8", "0xe9", out=out)


def test_pairs_wrong_header(tmp_path, capsys):
    pairs, feats, body = write_pairs(tmp_path)
    out = tmp_path / "o"
    pairs.write_text("\n".join(body) + "\n")  # header missing: the first pair line is read as the header
    refused(capsys, lfw_argv(pairs, feats, out), f"{pairs}:1:", "header", out=out)
    pairs.write_text("2\t7\n" + "\n".join(body) + "\n")
    refused(capsys, lfw_argv(pairs, feats, out), "promises 2 folds x 2 x 7 = 28 pair lines, found 24", out=out)


def test_pairs_duplicates_name_both_lines(tmp_path, capsys):
    pairs, feats, body = write_pairs(tmp_path)
    out = tmp_path / "o"
    # line 8 (first mismatched pair of fold 1) repeated, reversed, as line 21 (a mismatched line of fold 2)
    name1, i, name2, j = body[6].split("\t")
    bad = list(body)
    bad[19] = f"{name2}\t{j}\t{name1}\t{i}"
    pairs.write_text("2\t6\n" + "\n".join(bad) + "\n")
    refused(capsys, lfw_argv(pairs, feats, out), "lines 8 and 21 are the same pair",
            f"{name1}/{name1}_0001.jpg", out=out)


def test_pairs_image_with_itself(tmp_path, capsys):
    pairs, feats, body = write_pairs(tmp_path)
    out = tmp_path / "o"
    bad = list(body)
    bad[2] = "M0_2\t1\t1"
    pairs.write_text("2\t6\n" + "\n".join(bad) + "\n")
    refused(capsys, lfw_argv(pairs, feats, out), f"{pairs}:4:", "pairs M0_2/M0_2_0001.jpg with itself", out=out)


# ---------------------------------------------------------------- YTF splits


def write_ytf(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    rng = np.random.default_rng(0)
    paths = [f"P{i}/{v}/{fr}.jpg" for i in range(8) for v in range(2) for fr in range(2)]
    save_features(tmp_path / "frames.npz", paths, rng.normal(size=(len(paths), 8)))
    body = []
    for i in range(8):
        body += [f"{i % 2 + 1}, {2 * i + 1}, P{i}/0, P{i}/1, 1", f"{i % 2 + 1}, {2 * i + 2}, P{i}/0, P{(i + 1) % 8}/1, 0"]
    return tmp_path / "splits.txt", tmp_path / "frames.npz", body


def ytf_argv(splits: Path, feats: Path, out: Path) -> list[str]:
    return ["eval", "ytf", "--features", str(feats), "--splits", str(splits), "--out", str(out), "--no-plots"]


def test_ytf_refusals(tmp_path, capsys):
    splits, feats, body = write_ytf(tmp_path)
    out = tmp_path / "o"
    head = "split number, pair number, first name, second name, is same"
    splits.write_text(head + "\n" + "\n".join(body) + "\n")
    assert main(ytf_argv(splits, feats, out)) == 0 and (out / "report.json").is_file()
    out = tmp_path / "o2"
    cases = [
        ((head + "\n").encode() + b"1, 1, P0/0, P0\x00/1, 1\n", [f"{splits}:2:", "binary file"]),
        ((head + "\n").encode() + b"1, 1, P\xff/0, P0/1, 1\n", [f"{splits}:2:", "not UTF-8", "0xff"]),
        (("10\t300\n" + "\n".join(body)).encode(), [f"{splits}:1:", "expected a header like"]),
        ("\n".join([head, *body, "2, 99, P0/1, P0/0, 1"]).encode(), ["lines 2 and 18 are the same pair (P0/0, P0/1)"]),
        ("\n".join([head, *body, "2, 99, P3/1, P3/1, 1"]).encode(), [f"{splits}:18:", "pairs P3/1 with itself"]),
    ]
    for data, needles in cases:
        splits.write_bytes(data)
        refused(capsys, ytf_argv(splits, feats, out), *needles, out=out)


# ---------------------------------------------------------------- features files


@pytest.mark.parametrize("make,needle", [
    (lambda n: {"features": np.ones((n, 0), np.float32)}, "zero width, shape (48, 0)"),
    (lambda n: {"features": np.where(np.arange(n)[:, None] == 5, np.nan, np.ones((n, 8)))},
     "1 of 48 rows contain NaN or Inf (first: row 5)"),
    (lambda n: {"features": np.ones((0, 8)), "paths": np.array([], dtype=np.str_)}, "empty, shape (0, 8)"),
    (lambda n: {"features": np.ones((n, 8)), "paths": np.array(["x"] * n, dtype=object)}, "object (pickled) arrays"),
    (lambda n: {"features": np.ones((n, 8), np.int64)}, "must be floating point"),
    (lambda n: {"features": np.ones((n, 8)), "meta": np.array("{not json")}, "'meta' is not a JSON string"),
])
def test_bad_features_file(tmp_path, capsys, make, needle):
    pairs, feats, _ = write_pairs(tmp_path)
    paths = load_features(feats).paths
    np.savez(feats, **{"paths": np.array(paths), **make(len(paths))})
    out = tmp_path / "o"
    refused(capsys, lfw_argv(pairs, feats, out), str(feats), needle, out=out)


def test_features_file_not_an_npz(tmp_path, capsys):
    pairs, feats, _ = write_pairs(tmp_path)
    out = tmp_path / "o"
    feats.write_bytes(b"PK\x03\x04 this is no zip")
    refused(capsys, lfw_argv(pairs, feats, out), f"cannot read {feats}", out=out)
    np.save(tmp_path / "arr.npy", np.ones((3, 3)))
    (tmp_path / "arr.npy").rename(feats)
    refused(capsys, lfw_argv(pairs, feats, out), "holds a single array", out=out)


# ---------------------------------------------------------------- distractors


def write_probes(tmp_path: Path, d: int = 8) -> Path:
    rng = np.random.default_rng(1)
    paths = [f"P{i}/{k}.jpg" for i in range(6) for k in range(3)]
    save_features(tmp_path / "probes.npz", paths, rng.normal(size=(len(paths), d)))
    return tmp_path / "probes.npz"


def mf_argv(probes: Path, distr: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "megaface", "--probes", str(probes), "--distractors", str(distr), "--out", str(out),
            "--far", "1e-2", "--quiet", *extra]


def test_distractor_refusals(tmp_path, capsys):
    probes = write_probes(tmp_path)
    out = tmp_path / "o"
    d = tmp_path / "distr.npy"
    np.save(d, np.full((500, 8), np.nan, np.float32))
    refused(capsys, mf_argv(probes, d, out), str(d), "all 500 rows contain NaN or Inf", out=out)
    np.save(d, np.array([[1.0, "a"]], dtype=object))
    refused(capsys, mf_argv(probes, d, out), str(d), "not a plain numeric .npy array", out=out)
    np.save(d, np.ones((500, 16), np.float32))
    refused(capsys, mf_argv(probes, d, out), str(d), "16-dim but the probes are 8-dim", out=out)
    np.save(d, np.ones((500, 0), np.float32))
    refused(capsys, mf_argv(probes, d, out), "zero width", out=out)
    gallery = tmp_path / "gallery.npz"
    save_features(gallery, ["P0/x.jpg"], np.ones((1, 4)))
    np.save(d, np.ones((500, 8), np.float32))
    refused(capsys, mf_argv(probes, d, out, "--gallery", str(gallery)), str(gallery), "4-dim", out=out)
    assert main(mf_argv(probes, d, out)) == 0 and (out / "report.json").is_file()


def test_memory_mapped_distractors_are_checked_in_blocks(tmp_path, monkeypatch):
    """Rows with NaN/Inf scattered over many blocks: the count and the first row match a plain loop."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    for r in (731, 402, 999):
        x[r, r % 8] = np.inf if r % 2 else np.nan
    d = tmp_path / "d.npy"
    np.save(d, x)
    monkeypatch.setattr(feats_mod, "_CHECK_BYTES", 8 * 4 * 64)  # 64 rows per block: 16 blocks
    expected = [r for r in range(1000) if not all(math.isfinite(v) for v in x[r].tolist())]  # slow reference
    seen = []
    real = np.isfinite
    monkeypatch.setattr(feats_mod.np, "isfinite", lambda a: (seen.append(a.shape[0]), real(a))[1])
    with pytest.raises(DataError, match=rf"{len(expected)} of 1000 rows contain NaN or Inf \(first: row {expected[0]}\)"):
        load_distractors(d)
    assert max(seen) == 64 and len(seen) == 16


def test_faiss_missing(tmp_path, capsys, monkeypatch):
    probes = write_probes(tmp_path)
    d = tmp_path / "distr.npy"
    np.save(d, np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    out = tmp_path / "o"
    refused(capsys, mf_argv(probes, d, out, "--backend", "faiss"), "install centerloss[faiss]", out=out)
    assert main(mf_argv(probes, d, out)) == 0
    assert json.loads((out / "report.json").read_text())["backend"] == "torch"


# ---------------------------------------------------------------- .bin sets and images


def write_bin(path: Path, images: list[bytes], issame: list[bool]) -> Path:
    path.write_bytes(pickle.dumps((images, issame), protocol=2))
    return path


def test_bin_structure_refusals(tmp_path, capsys, ckpt):
    out = tmp_path / "o"
    b = tmp_path / "set.bin"
    b.write_bytes(pickle.dumps({"images": []}))
    refused(capsys, bin_argv(b, ckpt, out), str(b), "expected a pickled pair", out=out)
    write_bin(b, [jpeg(i) for i in range(6)], [True, False])
    refused(capsys, bin_argv(b, ckpt, out), str(b), "6 images but issame lists 2 pairs", out=out)
    write_bin(b, [], [])
    refused(capsys, bin_argv(b, ckpt, out), "holds no pairs", out=out)
    write_bin(b, [jpeg(i) for i in range(8)], [True, False, True, False])
    refused(capsys, bin_argv(b, ckpt, out, "--n-folds", "9"), "between 2 and 4, got 9", out=out)
    assert main(bin_argv(b, ckpt, out)) == 0 and (out / "report.json").is_file()


def test_truncated_jpeg_in_bin_names_its_index(tmp_path, capsys, ckpt):
    images = [jpeg(i) for i in range(8)]
    images[5] = images[5][: len(images[5]) // 2]
    b = write_bin(tmp_path / "cut.bin", images, [True, False, True, False])
    out = tmp_path / "o"
    refused(capsys, bin_argv(b, ckpt, out), f"{b} image 5 (pair 2)", "truncated", out=out)


def test_decompression_bomb_in_bin_is_refused(tmp_path, capsys, ckpt, monkeypatch):
    from centerloss.utils import images as images_mod

    monkeypatch.setattr(images_mod, "MAX_PIXELS", 100 * 100)  # the 112x112 crops are now "bombs"
    b = write_bin(tmp_path / "bomb.bin", [jpeg(i) for i in range(8)], [True, False, True, False])
    out = tmp_path / "o"
    refused(capsys, bin_argv(b, ckpt, out), f"{b} image 0 (pair 0)", "decompression bomb", out=out)


def crops_tree(tmp_path: Path) -> tuple[Path, Path]:
    """Aligned-size crops for a 2-fold pairs file over 8 people."""
    root = tmp_path / "crops"
    body = []
    for f in range(2):
        for i in range(2):
            body.append(f"M{f}{i}\t1\t2")
        for i in range(2):
            body.append(f"A{f}{i}\t1\tB{f}{i}\t1")
    for ln in body:
        t = ln.split("\t")
        for name, k in ([(t[0], 1), (t[0], 2)] if len(t) == 3 else [(t[0], 1), (t[2], 1)]):
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / f"{name}_{k:04d}.jpg").write_bytes(jpeg(zlib.crc32(name.encode()) + k, (112, 96)))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t2\n" + "\n".join(body) + "\n")
    return root, pairs


def model_argv(root: Path, pairs: Path, ckpt: Path, out: Path, *extra: str, cache: Path | None = None) -> list[str]:
    return ["eval", "lfw", "--model", str(ckpt), "--images", str(root), "--pairs", str(pairs), "--out", str(out),
            "--quiet", "--workers", "2", *(["--cache-dir", str(cache)] if cache else ["--no-cache"]), *extra]


@pytest.mark.parametrize("kind", ["truncated", "decompression bomb"])
def test_bad_crop_is_refused_by_name(tmp_path, capsys, ckpt, monkeypatch, kind):
    root, pairs = crops_tree(tmp_path)
    bad = root / "B10" / "B10_0001.jpg"
    if kind == "truncated":
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        from centerloss.utils import images as images_mod

        monkeypatch.setattr(images_mod, "MAX_PIXELS", 112 * 96)
        bad.write_bytes(jpeg(0, (113, 96)))  # one pixel row over the (lowered) limit
    out = tmp_path / "o"
    refused(capsys, model_argv(root, pairs, ckpt, out, "--fit", "center-crop"), str(bad), kind, out=out)
    assert not (out / "features.npz").exists()


def test_report_json_is_strict_json_when_a_threshold_is_infinite(tmp_path, capsys):
    pairs, feats, _ = write_pairs(tmp_path)
    out = tmp_path / "o"
    assert main(lfw_argv(pairs, feats, out, "--far", "1", "--far", "0", "--no-plots")) == 0
    rep = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert rep["tar_threshold"]["1"] == "-inf" and rep["tar_at_far"]["1"] == 1.0


def test_feature_cache_damaged_entry_is_recomputed_and_bad_folder_refused(tmp_path, capsys, ckpt):
    root, pairs = crops_tree(tmp_path)
    cache = tmp_path / "cache"
    out = tmp_path / "o"
    argv = model_argv(root, pairs, ckpt, out, "--no-plots", cache=cache)
    assert main(argv) == 0
    entry = next(cache.glob("*.npz"))
    want = load_features(entry).features
    entry.write_bytes(b"garbage")
    assert main(argv) == 0
    np.testing.assert_array_equal(load_features(entry).features, want)
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temp file left in the cache
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv[argv.index(str(cache))] = str(blocker / "cache")
    refused(capsys, argv, "feature cache folder", str(blocker / "cache"), out=tmp_path / "o2")


# ---------------------------------------------------------------- output folder, disk full, plots


def test_output_folder_refused_before_work(tmp_path, capsys):
    pairs, feats, _ = write_pairs(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(capsys, lfw_argv(pairs, feats, blocker), str(blocker), "not a folder")
    refused(capsys, lfw_argv(pairs, feats, blocker / "sub"), str(blocker))


def test_read_only_output_folder(tmp_path, capsys):
    import os

    pairs, feats, _ = write_pairs(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable here")
        refused(capsys, lfw_argv(pairs, feats, ro), str(ro), out=ro)
    finally:
        ro.chmod(0o755)


def test_read_only_output_is_refused_before_any_feature_is_extracted(tmp_path, capsys, ckpt, monkeypatch):
    """EROFS simulated where root would still write a chmod-ed folder: the folder is refused up front."""
    import builtins

    from centerloss.utils import atomic as atomic_mod

    root, pairs = crops_tree(tmp_path)
    out = tmp_path / "o"

    def read_only(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).parent == out:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic_mod, "open", read_only, raising=False)
    monkeypatch.setattr(feats_mod, "_run", lambda *a, **k: pytest.fail("features extracted before the check"))
    refused(capsys, model_argv(root, pairs, ckpt, out), f"cannot write to output folder {out}",
            "Read-only file system", out=out)


def _enospc_after_partial(file, *args, **kwargs):
    """Stands in for np.savez / Figure.savefig: writes some bytes, then fails as a full disk does."""
    if hasattr(file, "write"):
        file.write(b"PK\x03\x04 partial")
    else:
        with open(file, "wb") as f:
            f.write(b"\x89PNG partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_in_the_report_leaves_nothing(tmp_path, capsys, monkeypatch):
    pairs, feats, _ = write_pairs(tmp_path)
    out = tmp_path / "o"
    monkeypatch.setattr(np, "savez", _enospc_after_partial)  # scores.npz, mid-report
    line = refused(capsys, lfw_argv(pairs, feats, out), "disk full", code=1, out=out)
    assert str(out / "scores.npz") in line
    assert list(out.iterdir()) == []  # report.json's and report.md's finished temps are gone too


def test_disk_full_while_plotting_leaves_nothing(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    pairs, feats, _ = write_pairs(tmp_path)
    out = tmp_path / "o"
    monkeypatch.setattr(Figure, "savefig", lambda self, fname, **kw: _enospc_after_partial(fname))
    line = refused(capsys, lfw_argv(pairs, feats, out), "disk full", code=1, out=out)
    assert str(out / "roc.png") in line and list(out.iterdir()) == []


def test_disk_full_writing_features_npz(tmp_path, capsys, ckpt, monkeypatch):
    root, pairs = crops_tree(tmp_path)
    out = tmp_path / "o"
    monkeypatch.setattr(np, "savez", _enospc_after_partial)
    refused(capsys, model_argv(root, pairs, ckpt, out), str(out / "features.npz"), "disk full", code=1, out=out)
    assert list(out.iterdir()) == []


def test_disk_full_keeps_the_previous_report(tmp_path, capsys, monkeypatch):
    pairs, feats, _ = write_pairs(tmp_path)
    out = tmp_path / "o"
    assert main(lfw_argv(pairs, feats, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(np, "savez", _enospc_after_partial)
    assert main(lfw_argv(pairs, feats, out, "--pca-dim", "4")) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old version, whole; no temp file


def test_without_matplotlib_reports_say_plots_were_skipped(tmp_path, capsys, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    pairs, feats, _ = write_pairs(tmp_path)
    out = tmp_path / "o"
    assert main(lfw_argv(pairs, feats, out)) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["plots skipped: install centerloss[plots] for the ROC plots"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["plots"] == [] and rep["plots_skipped"] == "install centerloss[plots] for the ROC plots"
    assert "install centerloss[plots] for the ROC plots" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "scores.npz"]


@pytest.mark.parametrize("extra,needle", [
    (["--far", "2"], "--far must be in [0, 1], got 2"),
    (["--folds", "x"], "--folds takes 1-based fold numbers"),
])
def test_bad_options(tmp_path, capsys, extra, needle):
    pairs, feats, _ = write_pairs(tmp_path)
    out = tmp_path / "o"
    refused(capsys, lfw_argv(pairs, feats, out, *extra), needle, out=out)
