"""MTCNN in torch: weight mapping against a numpy re-implementation of the Keras layers, NMS against a slow
loop, and detections on real LFW images (plausible points, deterministic, batch == single, flip-consistent)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA

from centerloss.align import boxes as B
from centerloss.align.mtcnn import MTCNN
from centerloss.align.nets import _load_arrays, load_pretrained, weights_dir
from centerloss.utils.images import decode_image


def _data_dir() -> Path:
    return DATA


LFW = _data_dir() / "lfw" / "images"
# A spread of LFW images (different people, poses, lighting); fixed so the test is reproducible.
SAMPLES = ["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Abdullah_Gul/Abdullah_Gul_0003.jpg",
           "Gloria_Macapagal_Arroyo/Gloria_Macapagal_Arroyo_0001.jpg", "Serena_Williams/Serena_Williams_0004.jpg",
           "Tony_Blair/Tony_Blair_0010.jpg", "Winona_Ryder/Winona_Ryder_0002.jpg"]
needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason=f"DATA MISSING: LFW not found at {LFW} (set CENTERLOSS_DATA)")


@pytest.fixture(scope="module")
def det() -> MTCNN:
    torch.set_num_threads(1)
    return MTCNN()


@pytest.fixture(scope="module")
def lfw_images() -> list[np.ndarray]:
    if not LFW.is_dir():
        pytest.skip(f"DATA MISSING: LFW not found at {LFW} (set CENTERLOSS_DATA)")
    return [decode_image(LFW / s)[0] for s in SAMPLES]


# ------------------------------------------------------------------ weights: Keras semantics in numpy
def _k_conv(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:  # (H, W, Ci), HWIO -> (H', W', Co)
    win = np.lib.stride_tricks.sliding_window_view(x, k.shape[:2], axis=(0, 1))  # (H', W', Ci, kh, kw)
    return np.einsum("ijcab,abco->ijo", win, k) + b


def _k_prelu(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, a.reshape(-1) * x)


def _k_pool(x: np.ndarray, k: int, s: int, same: bool) -> np.ndarray:
    h, w = x.shape[:2]
    if same:  # TensorFlow "same": out = ceil(n / s), padding split with the extra on the bottom/right
        oh, ow = -(-h // s), -(-w // s)
        ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), constant_values=-np.inf)
    else:
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((oh, ow, x.shape[2]))
    for i in range(oh):
        for j in range(ow):
            out[i, j] = x[i * s:i * s + k, j * s:j * s + k].max(axis=(0, 1))
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _keras_onet(a: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, ...]:
    h = _k_pool(_k_prelu(_k_conv(x, a[0], a[1]), a[2]), 3, 2, True)
    h = _k_pool(_k_prelu(_k_conv(h, a[3], a[4]), a[5]), 3, 2, False)
    h = _k_pool(_k_prelu(_k_conv(h, a[6], a[7]), a[8]), 2, 2, True)
    h = _k_prelu(_k_conv(h, a[9], a[10]), a[11])
    f = h.transpose(1, 0, 2).reshape(-1)  # Keras Permute((2, 1, 3)) then Flatten
    f = _k_prelu(f @ a[12] + a[13], a[14])
    return f @ a[15] + a[16], f @ a[17] + a[18], _softmax(f @ a[19] + a[20])[1]


def _keras_rnet(a: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, ...]:
    h = _k_pool(_k_prelu(_k_conv(x, a[0], a[1]), a[2]), 3, 2, True)
    h = _k_pool(_k_prelu(_k_conv(h, a[3], a[4]), a[5]), 3, 2, False)
    h = _k_prelu(_k_conv(h, a[6], a[7]), a[8])
    f = _k_prelu(h.transpose(1, 0, 2).reshape(-1) @ a[9] + a[10], a[11])
    return f @ a[12] + a[13], _softmax(f @ a[14] + a[15])[1]


def _keras_pnet(a: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, ...]:
    h = _k_pool(_k_prelu(_k_conv(x, a[0], a[1]), a[2]), 2, 2, True)
    h = _k_prelu(_k_conv(h, a[3], a[4]), a[5])
    h = _k_prelu(_k_conv(h, a[6], a[7]), a[8])
    return _k_conv(h, a[9], a[10]), _softmax(_k_conv(h, a[11], a[12]))[..., 1]


def test_weights_come_from_package_files_without_importing_it():
    d = weights_dir()
    assert {p.name for p in d.glob("*.lz4")} >= {"pnet.lz4", "rnet.lz4", "onet.lz4"}
    load_pretrained()
    assert "mtcnn" not in sys.modules  # the TensorFlow package itself is never imported


@pytest.mark.parametrize("net", ["pnet", "rnet", "onet"])
def test_torch_nets_match_keras_layer_semantics(net):
    """Our HWIO->OIHW, PReLU, pooling and (permuted) flatten mapping reproduces the Keras computation."""
    arrs = [x.astype(np.float64) for x in _load_arrays(str(weights_dir()))[net]]
    pnet, rnet, onet = load_pretrained()
    rng = np.random.default_rng(0)
    size = {"pnet": (31, 27), "rnet": (24, 24), "onet": (48, 48)}[net]
    x = rng.uniform(-1, 1, size=(*size, 3))  # NHWC without batch, like a normalised image
    xt = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        if net == "pnet":
            ref_reg, ref_p = _keras_pnet(arrs, x)
            reg, p = pnet(xt)
            np.testing.assert_allclose(reg[0].numpy().transpose(1, 2, 0), ref_reg, atol=1e-4)
            np.testing.assert_allclose(p[0].numpy(), ref_p, atol=1e-5)
        elif net == "rnet":
            ref_reg, ref_p = _keras_rnet(arrs, x)
            reg, p = rnet(xt)
            np.testing.assert_allclose(reg[0].numpy(), ref_reg, atol=1e-4)
            np.testing.assert_allclose(float(p[0]), ref_p, atol=1e-5)
        else:
            ref_reg, ref_lm, ref_p = _keras_onet(arrs, x)
            reg, lm, p = onet(xt)
            np.testing.assert_allclose(reg[0].numpy(), ref_reg, atol=1e-4)
            np.testing.assert_allclose(lm[0].numpy(), ref_lm, atol=1e-4)
            np.testing.assert_allclose(float(p[0]), ref_p, atol=1e-5)


# ------------------------------------------------------------------ NMS against the slow loop
def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 5
    scores = torch.round(torch.rand(n, generator=g) * 20) / 20  # many exact ties
    return torch.cat([xy, xy + wh], 1), scores


@pytest.mark.parametrize("mode", ["union", "min"])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_slow_greedy_loop(mode, thr, monkeypatch):
    for seed in range(3):
        boxes, scores = _random_boxes(120, seed)
        ref = B.nms_reference(boxes, scores, thr, mode)
        assert B.nms(boxes, scores, thr, mode).tolist() == ref
        monkeypatch.setattr(B, "_MATRIX_NMS_MAX", 0)  # the O(K*N) path for huge candidate sets
        assert B.nms(boxes, scores, thr, mode).tolist() == ref
        monkeypatch.undo()


def test_batched_nms_equals_nms_per_group():
    boxes, scores = _random_boxes(150, 7)
    groups = torch.arange(150) % 3
    got = set(B.batched_nms(boxes, scores, groups, 0.5).tolist())
    want = set()
    for g in range(3):
        idx = torch.nonzero(groups == g)[:, 0]
        want |= {int(idx[i]) for i in B.nms(boxes[idx], scores[idx], 0.5)}
    assert got == want
    assert B.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).numel() == 0


def test_to_square_and_regression():
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    sq = B.to_square(b)
    assert torch.allclose(sq, torch.tensor([[0.0, 20.0, 40.0, 60.0]]))
    r = B.apply_regression(b, torch.tensor([[0.1, -0.1, 0.0, 0.5]]))
    assert torch.allclose(r, torch.tensor([[12.0, 16.0, 30.0, 80.0]]))


# ------------------------------------------------------------------ detections on LFW
@needs_lfw
def test_lfw_detections_are_plausible(det, lfw_images):
    for name, im in zip(SAMPLES, lfw_images, strict=True):
        faces = det.detect(im)
        assert len(faces) >= 1, name
        assert faces.boxes.shape == (len(faces), 4) and faces.points.shape == (len(faces), 5, 2)
        assert np.all(np.diff(faces.scores) <= 0), "sorted by score"
        # LFW deep-funneled: the person of interest is the big face near the centre.
        i = int(np.argmax((faces.boxes[:, 2] - faces.boxes[:, 0]) - np.abs(faces.boxes[:, 0] + faces.boxes[:, 2]
                                                                          - 250)))
        b, p, s = faces.boxes[i], faces.points[i], faces.scores[i]
        assert s > 0.9, name
        assert 60 < b[2] - b[0] < 200 and abs((b[0] + b[2]) / 2 - 125) < 40, (name, b)
        (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = p
        assert lex < nx < rex and lmx < rmx, (name, p)  # left/right order, nose between the eyes
        assert max(ley, rey) < ny < min(lmy, rmy), (name, p)  # eyes above nose above mouth
        assert np.all((p[:, 0] > b[0]) & (p[:, 0] < b[2]) & (p[:, 1] > b[1]) & (p[:, 1] < b[3])), (name, p, b)
        eye_dist = np.hypot(rex - lex, rey - ley)
        assert 0.2 < eye_dist / (b[2] - b[0]) < 0.6, name


@needs_lfw
def test_detection_is_deterministic_and_batch_equals_single(det, lfw_images):
    single = [det.detect(im) for im in lfw_images]
    again = [det.detect(im) for im in lfw_images]
    batch = det.detect_batch(lfw_images)
    for a, b, c in zip(single, again, batch, strict=True):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert len(a) == len(c)
        np.testing.assert_allclose(a.points, c.points, atol=1e-2)
        np.testing.assert_allclose(a.boxes, c.boxes, atol=1e-2)


@needs_lfw
def test_mirrored_image_gives_mirrored_points(det, lfw_images):
    """Catches transposed kernels, a wrong flatten order or an x offset: all make the points asymmetric."""
    errs = []
    for im in lfw_images:
        a, b = det.detect(im), det.detect(np.ascontiguousarray(im[:, ::-1]))
        pb = b.points[0].copy()
        pb[:, 0] = im.shape[1] - 1 - pb[:, 0]  # mirror back (pixel-centre coordinates)
        pb = pb[[1, 0, 2, 4, 3]]  # the mirror swaps left and right
        errs.append(np.abs(a.points[0] - pb).mean())
    assert np.median(errs) < 2.0, errs


def test_no_face_and_bad_input(det):
    faces = det.detect(np.full((120, 100, 3), 128, np.uint8))
    assert len(faces) == 0 and faces.points.shape == (0, 5, 2) and faces.boxes.shape == (0, 4)
    tiny = det.detect(np.zeros((20, 20, 3), np.uint8))  # smaller than min_face_size: no pyramid level
    assert len(tiny) == 0
    with pytest.raises(ValueError, match="uint8 RGB"):
        det.detect(np.zeros((50, 50), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        det.detect(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match="min_face_size"):
        MTCNN(min_face_size=5)
    assert det.scales(250, 250)[0] == pytest.approx(12 / 40)
    assert 12 <= 250 * det.scales(250, 250)[-1] < 12 / 0.709


def test_weight_files_are_checked_before_unpickling(tmp_path):
    """joblib files are pickles: anything but the known mtcnn==1.0.0 bytes is refused unread."""
    import pickle

    from centerloss.errors import DataError

    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for n in ("pnet", "rnet", "onet"):
        (tmp_path / f"{n}.lz4").write_bytes(pickle.dumps(Hostile()))
    with pytest.raises(DataError, match="refusing to unpickle"):
        _load_arrays(str(tmp_path))
    assert not marker.exists()
