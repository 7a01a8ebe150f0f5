"""Feature extraction (flip-concat, cache, determinism) and the eval / verify / embed commands, end to end on
tiny synthetic data and a tiny network registered here."""

from __future__ import annotations

import io
import json
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA
from PIL import Image
from torch import nn

from centerloss.cli import main
from centerloss.data.transforms import hflip, to_tensor
from centerloss.errors import DataError
from centerloss.eval.features import (
    embed_images,
    extract_features,
    fit_image,
    list_images,
    load_features,
    save_features,
)
from centerloss.models import MODELS, create_model, register_model
from centerloss.models.io import save_model

TINY = "_test_eval_tiny"

if TINY not in MODELS:

    @register_model(TINY)
    class _Tiny(nn.Module):
        """(B, 3, 112, 96) -> (B, embed_dim): a strided conv, average pool and a linear layer."""

        def __init__(self, embed_dim: int = 8) -> None:
            super().__init__()
            self.embed_dim = embed_dim
            self.conv = nn.Conv2d(3, 6, kernel_size=8, stride=8)
            self.fc = nn.Linear(6 * 14 * 12, embed_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).flatten(1))


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(TINY, embed_dim=8).eval()


def _run(argv: list[str]) -> int:
    """The real entry point: handlers raise, ``centerloss.cli.main`` prints one line and returns the code."""
    return main(argv)


def _img(rng, h=112, w=96) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def image_tree(tmp_path):
    """4 people x 3 aligned 112x96 crops as Name/Name_000k.jpg (PNG content would change under JPEG; we
    save PNG bytes under .jpg names - PIL sniffs the format)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name in ("Ann", "Bob", "Cid", "Dee"):
        (root / name).mkdir(parents=True)
        for k in range(1, 4):
            Image.fromarray(_img(rng)).save(root / name / f"{name}_{k:04d}.jpg", format="PNG")
    return root


def test_flip_concat_and_sum():
    m = _model()
    imgs = np.stack([_img(np.random.default_rng(i)) for i in range(3)])
    x = torch.stack([to_tensor(im) for im in imgs])
    with torch.no_grad():
        f, g = m(x).numpy(), m(hflip(x)).numpy()
    cat = embed_images(m, imgs, "concat")
    assert cat.shape == (3, 16)
    np.testing.assert_allclose(cat, np.concatenate([f, g], 1), atol=1e-6)
    np.testing.assert_allclose(embed_images(m, imgs, "sum"), f + g, atol=1e-6)
    np.testing.assert_allclose(embed_images(m, imgs, "none"), f, atol=1e-6)
    with pytest.raises(DataError, match="combine"):
        embed_images(m, imgs, "max")


def test_extract_is_deterministic_batched_and_cached(image_tree, tmp_path):
    m = _model()
    paths = list_images(image_tree)
    assert len(paths) == 12 and paths[0] == "Ann/Ann_0001.jpg"
    calls = []
    hook = m.register_forward_hook(lambda *a: calls.append(1))
    a = extract_features(m, paths, image_tree, batch_size=5, progress=False)
    b = extract_features(m, paths, image_tree, batch_size=12, progress=False, num_workers=2)
    np.testing.assert_allclose(a, b, atol=1e-6)  # batching and threads do not change the features
    one = embed_images(m, np.stack([np.asarray(Image.open(image_tree / paths[7]).convert("RGB"))]))
    np.testing.assert_allclose(a[7], one[0], atol=1e-6)

    cache = tmp_path / "cache"
    calls.clear()
    c1 = extract_features(m, paths, image_tree, cache_dir=cache, progress=False)
    n_first = len(calls)
    c2 = extract_features(m, paths, image_tree, cache_dir=cache, progress=False)
    assert n_first > 0 and len(calls) == n_first  # second call served from the cache
    np.testing.assert_array_equal(c1, c2)
    extract_features(m, paths, image_tree, cache_dir=cache, combine="sum", progress=False)
    assert len(calls) > n_first  # another option -> another key
    assert len(list(cache.glob("*.npz"))) == 2
    # touching an image (new size/mtime) invalidates the entry
    n = len(calls)
    Image.fromarray(_img(np.random.default_rng(9))).save(image_tree / paths[0], format="PNG")
    c3 = extract_features(m, paths, image_tree, cache_dir=cache, progress=False)
    assert len(calls) > n and not np.allclose(c3[0], c1[0])
    # another model -> another key
    n = len(calls)
    extract_features(_model(seed=1), paths, image_tree, cache_dir=cache, progress=False)
    hook.remove()
    assert len(list(cache.glob("*.npz"))) == 4 and len(calls) == n  # hook is on the first model only


def test_fit_image_modes():
    img = _img(np.random.default_rng(0), 112, 112)
    with pytest.raises(DataError, match="112x112 .* takes 112x96"):
        fit_image(img, (112, 96), "error", "x.jpg")
    crop = fit_image(img, (112, 96), "center-crop")
    np.testing.assert_array_equal(crop, img[:, 8:104])  # InsightFace 112x112 -> paper 112x96 template
    assert fit_image(img, (112, 96), "resize").shape == (112, 96, 3)
    with pytest.raises(DataError, match="smaller"):
        fit_image(img[:50], (112, 96), "center-crop")


def test_features_file_validation(tmp_path):
    p = tmp_path / "f.npz"
    save_features(p, ["a/1.jpg", "b/2.jpg"], np.ones((2, 3)), {"k": 1})
    t = load_features(p)
    assert t.paths == ["a/1.jpg", "b/2.jpg"] and t.features.dtype == np.float32 and t.meta == {"k": 1}
    np.savez(p, paths=np.array(["a", "b"], dtype=object), features=np.ones((2, 3)))
    with pytest.raises(DataError, match="object .*arrays"):  # object arrays need pickle: refused
        load_features(p)
    np.savez(p, names=np.array(["a"]), features=np.ones((1, 3)))
    with pytest.raises(DataError, match="must hold arrays 'paths' and 'features'"):
        load_features(p)
    np.savez(p, paths=np.array(["a", "b"]), features=np.array([[1.0], [np.nan]]))
    with pytest.raises(DataError, match="NaN"):
        load_features(p)
    np.savez(p, paths=np.array(["a", "a"]), features=np.ones((2, 1)))
    with pytest.raises(DataError, match="duplicates"):
        load_features(p)


# ---------------------------------------------------------------- commands


def _synthetic_lfw(tmp_path, n_folds=10, per=20, d=32, noise=0.6):
    """A pairs.txt in the official layout plus a features file where people are clusters."""
    rng = np.random.default_rng(0)
    lines = [f"{n_folds}\t{per}"]
    feats: dict[str, np.ndarray] = {}

    def feat(name, k):
        key = f"{name}/{name}_{k:04d}.jpg"
        if key not in feats:
            center = np.random.default_rng(zlib.crc32(name.encode())).normal(size=d)
            feats[key] = center + noise * rng.normal(size=d)
        return key

    for f in range(n_folds):
        for i in range(per):
            name = f"P{f}_{i}"
            feat(name, 1), feat(name, 2)
            lines.append(f"{name}\t1\t2")
        for i in range(per):
            n1, n2 = f"Q{f}_{i}", f"R{f}_{i}"
            feat(n1, 1), feat(n2, 3)
            lines.append(f"{n1}\t1\t{n2}\t3")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    save_features(tmp_path / "feats.npz", list(feats), np.stack(list(feats.values())))
    return tmp_path / "pairs.txt", tmp_path / "feats.npz"


def test_eval_lfw_from_features(tmp_path, capsys):
    pairs, feats = _synthetic_lfw(tmp_path)
    out = tmp_path / "run"
    assert _run(["eval", "lfw", "--features", str(feats), "--pairs", str(pairs), "--out", str(out),
                 "--pca-dim", "16"]) == 0
    rep = json.loads((out / "report.json").read_text())
    for key in ("accuracy_mean", "accuracy_std", "auc", "eer", "tar_at_far", "verify_threshold"):
        assert key in rep
    assert set(rep["tar_at_far"]) == {"0.001", "0.01"}
    assert rep["n_pairs"] == 400 and rep["n_folds"] == 10 and rep["pca_dim"] == 16
    assert 0.8 < rep["accuracy_mean"] <= 1.0 and rep["auc"] > 0.9
    for f in ("report.md", "roc.png", "scores.png", "scores.npz"):
        assert (out / f).is_file()
    assert "accuracy" in capsys.readouterr().out
    assert "| TAR @ FAR 0.001 |" in (out / "report.md").read_text()


def test_eval_lfw_single_fold_and_errors(tmp_path, capsys):
    pairs, feats = _synthetic_lfw(tmp_path)
    base = ["eval", "lfw", "--features", str(feats), "--pairs", str(pairs), "--out", str(tmp_path / "o")]
    assert _run([*base, "--folds", "1"]) == 2
    assert "subfolds" in capsys.readouterr().err
    assert _run([*base, "--folds", "1", "--subfolds", "4", "--no-plots"]) == 0
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["n_pairs"] == 40 and rep["n_folds"] == 4 and "sub-folds" in rep["protocol"]
    assert _run([*base, "--folds", "11"]) == 2
    assert "no fold [11]" in capsys.readouterr().err
    t = load_features(feats)
    save_features(feats, t.paths[1:], t.features[1:])
    assert _run(base) == 2
    assert "the features lack 1 of the" in capsys.readouterr().err


@pytest.fixture
def checkpoint(tmp_path):
    m = _model()
    path = tmp_path / "tiny.safetensors"
    save_model(path, m, TINY, {"embed_dim": 8})
    return path, m


def _lfw_pairs_for(root: Path, tmp_path: Path) -> Path:
    p = tmp_path / "pairs_small.txt"
    p.write_text("2\t2\nAnn\t1\t2\nBob\t1\t3\nAnn\t1\tBob\t2\nCid\t2\tDee\t3\n"
                 "Cid\t1\t3\nDee\t1\t2\nAnn\t3\tCid\t1\nBob\t1\tDee\t1\n")
    return p


def test_eval_lfw_with_model_and_embed(tmp_path, image_tree, checkpoint, capsys):
    ckpt, m = checkpoint
    pairs = _lfw_pairs_for(image_tree, tmp_path)
    out = tmp_path / "run"
    common = ["--model", str(ckpt), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--workers", "0"]
    assert _run(["eval", "lfw", "--images", str(image_tree), "--pairs", str(pairs), "--out", str(out),
                 "--no-plots", *common]) == 0
    t = load_features(out / "features.npz")
    assert len(t.paths) == 12 and t.features.shape == (12, 16)
    direct = extract_features(m, t.paths, image_tree, progress=False)
    np.testing.assert_allclose(t.features, direct, atol=1e-6)

    feats = tmp_path / "all.npz"
    assert _run(["embed", str(image_tree), "--out", str(feats), "--aligned", *common]) == 0
    e = load_features(feats)
    assert e.paths == list_images(image_tree) and e.meta["model_sha256"]
    np.testing.assert_allclose(e.features, direct, atol=1e-6)
    assert "12 images x 16 dims" in capsys.readouterr().out


def test_verify(tmp_path, image_tree, checkpoint, capsys):
    ckpt, m = checkpoint
    a, b = image_tree / "Ann" / "Ann_0001.jpg", image_tree / "Bob" / "Bob_0001.jpg"
    f = extract_features(m, ["Ann/Ann_0001.jpg", "Bob/Bob_0001.jpg"], image_tree, progress=False)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    score = float(f[0] @ f[1])
    base = ["verify", str(a), str(b), "--model", str(ckpt), "--quiet", "--aligned"]
    assert _run([*base, "--threshold", str(score - 1e-3), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == "same" and abs(out["score"] - score) < 1e-5
    assert _run([*base, "--threshold", str(score + 1e-3)]) == 1
    assert "different" in capsys.readouterr().out
    assert _run(base) == 2  # no threshold anywhere
    assert "no threshold" in capsys.readouterr().err
    with_thr = tmp_path / "thr.safetensors"
    save_model(with_thr, m, TINY, {"embed_dim": 8}, extra={"threshold": score - 1e-3})
    assert _run(["verify", str(a), str(b), "--model", str(with_thr), "--aligned"]) == 0
    assert "(model metadata)" in capsys.readouterr().out
    assert _run(["verify", str(a), str(tmp_path / "nope.jpg"), "--model", str(ckpt), "--aligned"]) == 2


def test_eval_bin(tmp_path, checkpoint):
    ckpt, _ = checkpoint
    rng = np.random.default_rng(0)
    images = []
    for _ in range(40):
        buf = io.BytesIO()
        Image.fromarray(_img(rng, 112, 112)).save(buf, format="JPEG")
        images.append(buf.getvalue())
    bin_path = tmp_path / "toy.bin"
    bin_path.write_bytes(pickle.dumps((images, [bool(i % 2) for i in range(20)]), protocol=2))
    out = tmp_path / "bin_run"
    assert _run(["eval", "bin", str(bin_path), "--model", str(ckpt), "--out", str(out), "--n-folds", "4",
                 "--no-plots", "--quiet", "--workers", "0"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_pairs"] == 20 and rep["n_folds"] == 4


def test_eval_ytf_and_megaface(tmp_path):
    rng = np.random.default_rng(0)
    people = [f"P{i}" for i in range(20)]
    centers = {p: rng.normal(size=16) for p in people}
    paths, feats = [], []
    for p in people:
        for v in range(2):
            for fr in range(3):
                paths.append(f"{p}/{v}/{fr}.jpg")
                feats.append(centers[p] + 0.5 * rng.normal(size=16))
    save_features(tmp_path / "frames.npz", paths, np.array(feats))
    lines = ["split number, pair number, first name, second name, is same"]
    for i, p in enumerate(people):
        q = people[(i + 1) % 20]
        lines += [f"{i % 2 + 1}, {i}, {p}/0, {p}/1, 1", f"{i % 2 + 1}, {i}, {p}/0, {q}/1, 0"]
    (tmp_path / "splits.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ytf"
    assert _run(["eval", "ytf", "--features", str(tmp_path / "frames.npz"), "--splits", str(tmp_path / "splits.txt"),
                 "--out", str(out), "--no-plots"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_pairs"] == 40 and rep["accuracy_mean"] > 0.8

    np.save(tmp_path / "distr.npy", rng.normal(size=(500, 16)).astype(np.float32))
    out = tmp_path / "mf"
    assert _run(["eval", "megaface", "--probes", str(tmp_path / "frames.npz"), "--distractors",
                 str(tmp_path / "distr.npy"), "--out", str(out), "--far", "1e-3", "--quiet"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_probes"] == 120 and rep["n_genuine"] == 120 * 5 and rep["rank1"] > 0.5
    assert (out / "report.md").is_file()


def test_registered_in_main_cli():
    from centerloss.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["eval", "lfw", "--features", "f.npz", "--pairs", "p.txt", "--out", "o"])
    assert args.func is not None
    args = parser.parse_args(["verify", "a.jpg", "b.jpg", "--model", "m.safetensors"])
    assert args.threshold is None


def _data_dir() -> Path:

    return DATA


@pytest.mark.skipif(not (_data_dir() / "lfw" / "pairs.txt").is_file(), reason="DATA MISSING: LFW pairs.txt not found (set CENTERLOSS_DATA)")
def test_real_lfw_images_end_to_end(tmp_path, checkpoint):
    """The official file's first 8 matched + 8 mismatched pairs of folds 1 and 2, real 250x250 JPEGs
    (center-cropped to 112x96 -- not aligned, so only the plumbing is tested, not the accuracy)."""
    ckpt, m = checkpoint
    lfw = _data_dir() / "lfw"
    lines = (lfw / "pairs.txt").read_text().splitlines()[1:]
    keep = [ln for f in range(2) for ln in lines[f * 600:f * 600 + 8] + lines[f * 600 + 300:f * 600 + 308]]
    small = tmp_path / "pairs2.txt"
    small.write_text("2\t8\n" + "\n".join(keep) + "\n")
    out = tmp_path / "real"
    assert _run(["eval", "lfw", "--model", str(ckpt), "--images", str(lfw / "images"), "--pairs", str(small),
                 "--out", str(out), "--fit", "center-crop", "--no-cache", "--quiet", "--workers", "0"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_pairs"] == 32 and rep["n_genuine"] == 16 and 0.0 <= rep["accuracy_mean"] <= 1.0
    t = load_features(out / "features.npz")
    assert t.paths[0].count("/") == 1 and t.paths[0].endswith("_0001.jpg") and t.features.shape[1] == 16
    assert (out / "roc.png").stat().st_size > 1000
