"""5-point similarity alignment onto the paper's template (Sec. 4): 112x96 crops, or 112x112 (+8 px in x).

A least-squares similarity (rotation, uniform scale, translation; no reflection, no shear) maps the five
detected points onto the template, and OpenCV's ``warpAffine`` resamples the image. Keeping the transform
a similarity keeps the face's shape: only pose in the image plane and size are normalised.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import ConfigError

__all__ = ["TEMPLATE_112x96", "template", "similarity_transform", "warp", "align", "parse_size"]

#: Reference points (x, y) of the 96-wide, 112-high crop used by caffe-face and SphereFace (docs/METHOD.md, Sec. 4 of the paper):
#: left eye, right eye, nose tip, left mouth corner, right mouth corner.
TEMPLATE_112x96 = np.array([
    [30.2946, 51.6963],
    [65.5318, 51.5014],
    [48.0252, 71.7366],
    [33.5493, 92.3655],
    [62.7299, 92.2041],
], dtype=np.float64)


def parse_size(size: str | tuple[int, int]) -> tuple[int, int]:
    """``"112x96"`` or ``(112, 96)`` -> (height, width); both sides must be positive."""
    if isinstance(size, str):
        parts = size.lower().replace("\u00d7", "x").split("x")
        try:
            h, w = (int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"size must look like HEIGHTxWIDTH, e.g. 112x96, got {size!r}") from None
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ConfigError(f"size must be (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"size must be positive, got {h}x{w}")
    return h, w


def template(size: tuple[int, int] = (112, 96)) -> np.ndarray:
    """The 5 reference points for a crop of ``size = (height, width)`` -> (5, 2) float64 (x, y).

    The 112-high template is scaled by ``height / 112`` and centred horizontally, so (112, 96) is the paper's
    template and (112, 112) is it shifted by +8 px in x (the InsightFace variant).
    """
    h, w = parse_size(size)
    s = h / 112.0
    pts = TEMPLATE_112x96 * s
    pts[:, 0] += (w - 96.0 * s) / 2.0
    return pts


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity mapping points ``src`` (N, 2) onto ``dst`` (N, 2) -> 2x3 matrix [sR | t].

    Closed form (Umeyama 1991): with centred point sets and ``C = dst_c^T src_c / N = U S V^T``,
    ``R = U diag(1, d) V^T`` (``d = sign det(U V^T)`` rules out reflections), ``s = tr(S diag(1, d)) / var(src)``
    and ``t = mean(dst) - s R mean(src)``. Minimises ``sum_i ||dst_i - (s R src_i + t)||^2``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two (N, 2) point sets with N >= 2 of the same shape, got {src.shape}, {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("source points all coincide; no similarity transform is defined")
    cov = dc.T @ sc / len(src)  # (2, 2)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sv * d).sum() / var_s)
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])  # (2, 3)


def warp(rgb: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample ``rgb`` (H, W, C) through the 2x3 ``matrix`` (source -> crop pixels) into a crop of ``size``.

    Bilinear, black outside the image. When the warp shrinks by more than 2x, the image is first reduced
    with area averaging so that the bilinear step does not alias (large photos, small crops).
    """
    h, w = parse_size(size)
    m = np.asarray(matrix, dtype=np.float64).copy()
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < 0.5:
        f = 2.0 * scale  # pre-shrink factor; the remaining warp scales by 0.5
        small = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))),
                           interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / rgb.shape[1], small.shape[0] / rgb.shape[0]
        # Pixel centres map as x' = (x + 0.5) * fx - 0.5; fold the inverse into the matrix.
        pre = np.array([[1.0 / fx, 0.0, 0.5 / fx - 0.5], [0.0, 1.0 / fy, 0.5 / fy - 0.5], [0.0, 0.0, 1.0]])
        m = m @ pre
        rgb = small
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def align(rgb: np.ndarray, points: np.ndarray, size: tuple[int, int] | str = (112, 96)) -> np.ndarray:
    """Aligned face crop (height, width, 3) uint8 from an RGB image and its 5 points (5, 2) in source pixels.

    Points are (x, y) in pixel-centre coordinates in the order left eye, right eye, nose, left mouth corner,
    right mouth corner (left = smaller x), as returned by :func:`centerloss.align.detect_faces`.
    """
    if not (isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3):
        raise ValueError(f"expected an RGB image (H, W, 3), got {getattr(rgb, 'shape', type(rgb))}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"expected 5 points of shape (5, 2), got {pts.shape}")
    hw = parse_size(size)
    return warp(rgb, similarity_transform(pts, template(hw)), hw)
