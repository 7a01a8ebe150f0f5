"""`centerloss export` and ONNX models in verify / embed / identify: onnxruntime's features equal torch's to
1e-4 on real LFW crops; the recipe is in the ONNX metadata; a gallery accepts the export of its own model.

Skipped loudly without onnx/onnxruntime (pip install 'centerloss[onnx]') or without /work/shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, need

from centerloss.cli import main
from centerloss.face import FaceRecognizer, Gallery
from centerloss.face.models import TorchEmbedder
from centerloss.models import create_model
from centerloss.models.io import save_model

onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'centerloss[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'centerloss[onnx]'")
pytest.importorskip("onnxscript", reason="onnxscript (the exporter's dependency) is not installed")

LFW = DATA / "lfw" / "images"
PHOTOS = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "George_W_Bush/George_W_Bush_0001.jpg",
          "Tony_Blair/Tony_Blair_0010.jpg", "Serena_Williams/Serena_Williams_0004.jpg",
          "Winona_Ryder/Winona_Ryder_0002.jpg", "Abdullah_Gul/Abdullah_Gul_0003.jpg"]


def _need_lfw() -> None:
    need(LFW, "LFW images")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """face_small (the default width) with a threshold in its metadata, and its ONNX export."""
    d = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    st = d / "small.safetensors"
    save_model(st, create_model("face_small"), "face_small", {}, extra={"threshold": 0.3})
    out = d / "small.onnx"
    assert main(["export", "--model", str(st), "--out", str(out)]) == 0
    return st, out


def test_metadata_and_dynamic_batch(exported):
    st, path = exported
    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    inp = json.loads(props["centerloss.input"])
    assert (inp["layout"], inp["channels"], inp["height"], inp["width"]) == ("NCHW", "RGB", 112, 96)
    assert inp["normalization"] == "(x - 127.5) / 128"
    recipe = json.loads(props["centerloss.feature_recipe"])
    assert recipe["combine"] == "concat" and recipe["feature_dim"] == 2 * recipe["embed_dim"] == 256
    assert props["centerloss.source_sha256"] == TorchEmbedder(st).weights_sha256
    assert json.loads(props["centerloss.threshold"]) == 0.3
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # symbolic batch
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 7):
        assert sess.run(None, {"input": np.zeros((b, 3, 112, 96), np.float32)})[0].shape == (b, 128)


def test_onnxruntime_matches_torch_on_lfw_crops(exported):
    _need_lfw()
    st, path = exported
    rec_t, rec_o = FaceRecognizer(st), FaceRecognizer(path)
    assert rec_o.embedder.kind == "onnx" and rec_o.model_sha256 == rec_t.model_sha256
    crops = np.stack([rec_t.align(LFW / p) for p in PHOTOS])  # (6, 112, 96, 3) real aligned faces
    ft, fo = rec_t.embed_crops(crops), rec_o.embed_crops(crops)
    assert ft.shape == fo.shape == (6, 256)
    assert np.abs(ft - fo).max() < 1e-4
    # the reference recipe by hand: (x - 127.5) / 128, NCHW RGB; concat with the width-flipped input
    x = (crops.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 128
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    by_hand = np.concatenate([sess.run(None, {"input": x})[0], sess.run(None, {"input": x[..., ::-1].copy()})[0]], 1)
    np.testing.assert_allclose(fo, by_hand, atol=1e-6)


def test_cli_with_onnx_model(tmp_path, exported, capsys):
    _need_lfw()
    st, path = exported
    a, b = (str(LFW / p) for p in PHOTOS[:2])
    scores = {}
    for m in (st, path):
        assert main(["verify", a, b, "--model", str(m), "--json"]) in (0, 1)
        out = json.loads(capsys.readouterr().out)
        assert out["threshold"] == 0.3 and out["threshold_source"] == "model metadata"
        scores[m] = out["score"]
    assert abs(scores[st] - scores[path]) < 1e-4
    people = tmp_path / "people"
    for p in PHOTOS[:4]:
        (people / p).parent.mkdir(parents=True, exist_ok=True)
        (people / p).write_bytes((LFW / p).read_bytes())
    g = tmp_path / "g"
    assert main(["gallery", "build", str(people), "--model", str(st), "--out", str(g), "--quiet"]) == 0
    assert main(["embed", str(people), "--model", str(path), "--out", str(tmp_path / "f.npz"), "--no-cache",
                 "--quiet"]) == 0
    assert "4 images x 256 dims" in capsys.readouterr().out
    probe = str(LFW / "Tony_Blair/Tony_Blair_0011.jpg")
    answers = []
    for m in (st, path):  # the export of the gallery's own model is accepted (its source sha256 matches)
        assert main(["identify", probe, "--gallery", str(g), "--model", str(m), "--json", "--top-k", "4"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert [x["identity"] for x in answers[0]["matches"]] == [x["identity"] for x in answers[1]["matches"]]
    np.testing.assert_allclose([x["score"] for x in answers[0]["matches"]],
                               [x["score"] for x in answers[1]["matches"]], atol=1e-4)
    assert len(Gallery.load(g)) == 4


def test_corrupt_onnx_is_a_one_line_error(tmp_path, exported, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(exported[1].read_bytes()[:5000])
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((112, 96, 3), np.uint8)).save(img)
    assert main(["verify", str(img), str(img), "--model", str(bad), "--aligned", "--threshold", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err
