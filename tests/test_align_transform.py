"""Similarity transform and warp: recovers known transforms, matches a linear least-squares reference, and
warped points land on the template (both at normal scale and through the large-image pre-shrink)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from centerloss.align.transform import (
    TEMPLATE_112x96,
    align,
    parse_size,
    similarity_transform,
    template,
    warp,
)


def _sim(scale: float, theta: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Independent reference: x' = a x - b y + tx, y' = b x + a y + ty solved by linear least squares."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


@pytest.mark.parametrize("seed", range(5))
def test_recovers_known_similarity(seed):
    rng = np.random.default_rng(seed)
    m = _sim(rng.uniform(0.2, 5), rng.uniform(-np.pi, np.pi), *rng.uniform(-300, 300, 2))
    src = rng.uniform(0, 250, size=(5, 2))
    np.testing.assert_allclose(similarity_transform(src, _apply(m, src)), m, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_points_match_linear_least_squares(seed):
    rng = np.random.default_rng(100 + seed)
    src = rng.uniform(50, 200, size=(5, 2))
    dst = _apply(_sim(0.8, 0.3, 10, -20), src) + rng.normal(0, 3, size=(5, 2))
    np.testing.assert_allclose(similarity_transform(src, dst), _lstsq_similarity(src, dst), atol=1e-9)


def test_never_reflects():
    src = TEMPLATE_112x96 * 2 + 30
    mirrored = src.copy()
    mirrored[:, 0] = -mirrored[:, 0]  # a mirror image: the best similarity must still be a rotation
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_transform_rejects_degenerate_input():
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), TEMPLATE_112x96)
    with pytest.raises(ValueError, match="same shape"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        similarity_transform(np.full((5, 2), np.nan), TEMPLATE_112x96)


def test_template_sizes():
    np.testing.assert_allclose(template((112, 96)), TEMPLATE_112x96)
    np.testing.assert_allclose(template((112, 112)), TEMPLATE_112x96 + [8, 0])  # InsightFace variant
    np.testing.assert_allclose(template("224x192"), TEMPLATE_112x96 * 2)
    assert parse_size("112x96") == (112, 96) and parse_size((112, 112)) == (112, 112)
    for bad in ("112", "ax96", "0x96", "112x-1"):
        with pytest.raises(ValueError):
            parse_size(bad)


def _dots_image(points: np.ndarray, shape: tuple[int, int], radius: float) -> np.ndarray:
    """Black image with a smooth bright blob at each point (pixel-centre coordinates)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * radius ** 2))
    return np.repeat((np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


def _blob_centres(crop: np.ndarray, near: np.ndarray) -> np.ndarray:
    g = crop[..., 0].astype(np.float64)
    yy, xx = np.mgrid[:g.shape[0], :g.shape[1]]
    out = []
    for x, y in near:  # intensity centroid in a window around each expected point
        w = (np.abs(xx - x) <= 4) & (np.abs(yy - y) <= 4)
        m = g * w
        out.append([(m * xx).sum() / m.sum(), (m * yy).sum() / m.sum()])
    return np.array(out)


@pytest.mark.parametrize("size", [(112, 96), (112, 112)])
@pytest.mark.parametrize("scale,shape", [(1.6, (300, 280)), (8.0, (1400, 1300))])  # 8x: pre-shrink path
def test_warped_points_land_on_template(size, scale, shape):
    tpl = template(size)
    m = _sim(scale, 0.35, 60, 40)  # template -> a rotated, scaled face in a bigger image
    src_pts = _apply(m, tpl)
    assert src_pts.min() > 10 and src_pts[:, 0].max() < shape[1] - 10 and src_pts[:, 1].max() < shape[0] - 10
    img = _dots_image(src_pts, shape, radius=1.5 * scale)
    crop = align(img, src_pts, size)
    assert crop.shape == (*size, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(_blob_centres(crop, tpl), tpl, atol=0.1)


def test_warp_outside_is_black_and_shapes():
    img = np.full((50, 50, 3), 200, np.uint8)
    crop = warp(img, np.array([[1.0, 0, 30], [0, 1.0, 30]]), (112, 96))  # image moved into the lower right
    assert crop[0, 0].tolist() == [0, 0, 0] and crop[60, 60].tolist() == [200, 200, 200]
    with pytest.raises(ValueError, match="5 points"):
        align(img, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="RGB"):
        align(np.zeros((50, 50)), TEMPLATE_112x96)
    assert cv2.__version__  # the warp uses OpenCV
