"""MTCNN face detector (Zhang et al., IEEE SPL 2016): P-Net -> R-Net -> O-Net cascade with 5 landmarks.

The cascade, for each image:

1. **Image pyramid.** Scales ``m * f**k`` with ``m = 12 / min_face_size`` and ``f = scale_factor`` while the
   shorter side stays >= 12 px. A face of ``min_face_size`` px becomes P-Net's 12 px window at the first scale.
   ``min_face_size`` is the main speed knob: 40 px (the default here) gives 6 scales on a 250x250 LFW image,
   20 px (the original default) gives 9 and ~4x the P-Net work. Faces smaller than it are not found.
2. **P-Net** on every scale (images of the same size are batched). Windows with face prob >= ``thresholds[0]``
   become boxes; NMS per scale (IoU 0.5), then across scales (0.7); box regression; made square.
3. **R-Net** on 24x24 crops of those boxes; keep prob >= ``thresholds[1]``; NMS 0.7; regression; square.
4. **O-Net** on 48x48 crops; keep prob >= ``thresholds[2]``; landmarks; regression; NMS 0.7 by
   intersection-over-min-area.

R-Net and O-Net run once over the candidates of all images in a batch. Everything is deterministic
(stable sorts, no random ops); results do not depend on the batch composition beyond float rounding.

Coordinates returned: boxes in edge coordinates (``x2 - x1`` = width), points in pixel-centre coordinates
(pixel ``(0, 0)`` has its centre at ``(0, 0)``, as in OpenCV and numpy indexing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from .boxes import apply_regression, batched_nms, to_square
from .nets import load_pretrained

__all__ = ["Faces", "MTCNN"]


@dataclass(frozen=True)
class Faces:
    """Faces found in one image, sorted by descending score.

    boxes: (N, 4) float32 x1, y1, x2, y2 (edge coordinates, source pixels).
    scores: (N,) float32 O-Net face probability.
    points: (N, 5, 2) float32 (x, y) of left eye, right eye, nose, left mouth corner, right mouth corner,
        where left/right mean smaller/larger x in the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Faces:
        return Faces(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


def _normalize(img: np.ndarray) -> Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) with (x - 127.5) / 128, MTCNN's input scaling."""
    t = torch.from_numpy(np.ascontiguousarray(img)).float()
    return ((t - 127.5) * (1.0 / 128.0)).movedim(-1, -3)


def _crops(images: list[np.ndarray], boxes: Tensor, ids: Tensor, size: int) -> np.ndarray:
    """Cut integer boxes out of their uint8 images, zero outside, resized to size x size -> (N, s, s, 3)."""
    out = np.zeros((boxes.shape[0], size, size, 3), np.uint8)
    for k, ((x1, y1, x2, y2), i) in enumerate(zip(boxes.to(torch.int64).tolist(), ids.tolist(), strict=True)):
        img = images[i]
        h, w = img.shape[:2]
        bw, bh = x2 - x1, y2 - y1
        ax1, ay1, ax2, ay2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if bw <= 0 or bh <= 0 or ax1 >= ax2 or ay1 >= ay2:
            continue
        if (ax1, ay1, ax2, ay2) == (x1, y1, x2, y2):
            patch = img[y1:y2, x1:x2]
        else:
            patch = np.zeros((bh, bw, 3), np.uint8)
            patch[ay1 - y1:ay2 - y1, ax1 - x1:ax2 - x1] = img[ay1:ay2, ax1:ax2]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


def _pyramid(img: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Area-resampled levels; each from the previous one (4x cheaper than each from the full image)."""
    out, prev = [], img
    for hs, ws in sizes:
        prev = cv2.resize(prev, (ws, hs), interpolation=cv2.INTER_AREA)
        out.append(prev)
    return out


class MTCNN:
    """The MTCNN cascade with the original weights; call :meth:`detect` or :meth:`detect_batch`.

    Args:
        min_face_size: smallest face side (px) searched for; see the module docstring (speed vs recall).
        thresholds: face-probability thresholds of P-, R- and O-Net (the original 0.6, 0.7, 0.7).
        scale_factor: ratio between pyramid levels (0.709 ~ 1/sqrt(2), as in the original).
        device: torch device for the networks ("cpu" by default).
    """

    def __init__(self, min_face_size: float = 40.0, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 scale_factor: float = 0.709, device: str | torch.device = "cpu") -> None:
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 px (P-Net's window), got {min_face_size}")
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor}")
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities, got {thresholds}")
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.device = torch.device(device)
        pnet, rnet, onet = load_pretrained()
        self.pnet = pnet.to(self.device)
        self.rnet = rnet.to(self.device, memory_format=torch.channels_last)
        self.onet = onet.to(self.device, memory_format=torch.channels_last)

    # ------------------------------------------------------------------ public
    def detect(self, rgb: np.ndarray) -> Faces:
        """Faces in one uint8 RGB image (H, W, 3)."""
        return self.detect_batch([rgb])[0]

    @torch.inference_mode()
    def detect_batch(self, images: list[np.ndarray]) -> list[Faces]:
        """Faces in each of several uint8 RGB images (any sizes; equal sizes share P-Net batches)."""
        for i, im in enumerate(images):
            if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3):
                got = f"{im.dtype} {im.shape}" if isinstance(im, np.ndarray) else type(im).__name__
                raise ValueError(f"image {i}: expected a uint8 RGB array (H, W, 3), got {got}")
        if not images:
            return []
        boxes, ids = self._stage1(images)  # (K, 4) square integer boxes, (K,) image index
        boxes, ids = self._stage2(images, boxes, ids)
        return self._stage3(images, boxes, ids)

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales for an image of this size (empty if it is smaller than ``min_face_size``)."""
        m = 12.0 / self.min_face_size
        side = min(height, width) * m
        out = []
        while side >= 12:
            out.append(m * self.scale_factor ** len(out))
            side *= self.scale_factor
        return out

    # ------------------------------------------------------------------ stages
    # Candidates travel as one flat set for the whole batch: boxes (K, 4) and the image index of each (K,).
    def _stage1(self, images: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        t1, n_img = self.thresholds[0], len(images)
        rows, groups = [], []  # rows: x1 y1 x2 y2 score dx1 dy1 dx2 dy2; group = scale * n_img + image
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(im.shape[:2], []).append(i)
        for (h, w), idx in by_shape.items():
            scales = self.scales(h, w)
            sizes = [(int(math.ceil(h * s)), int(math.ceil(w * s))) for s in scales]
            levels = [_pyramid(images[i], sizes) for i in idx]
            for k, s in enumerate(scales):
                x = _normalize(np.stack([lv[k] for lv in levels])).to(self.device)  # (B, 3, hs, ws)
                reg, prob = self.pnet(x)  # (B, 4, h', w'), (B, h', w')
                reg, prob = reg.cpu(), prob.cpu()
                b, ys, xs = torch.nonzero(prob >= t1, as_tuple=True)
                if b.numel() == 0:
                    continue
                x1, y1 = (2.0 * xs) / s, (2.0 * ys) / s  # the 12x12 window at stride 2, in source pixels
                box = torch.stack([x1, y1, x1 + 12.0 / s, y1 + 12.0 / s], dim=1)
                rows.append(torch.cat([box, prob[b, ys, xs][:, None], reg[b, :, ys, xs]], dim=1))  # (K, 9)
                groups.append(k * n_img + torch.tensor(idx)[b])
        if not rows:
            return torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long)
        r, g = torch.cat(rows), torch.cat(groups)
        keep = batched_nms(r[:, :4], r[:, 4], g, 0.5)  # within each (image, scale)
        r, ids = r[keep], g[keep] % n_img
        keep = batched_nms(r[:, :4], r[:, 4], ids, 0.7)  # across scales, within each image
        r, ids = r[keep], ids[keep]
        return torch.floor(to_square(apply_regression(r[:, :4], r[:, 5:9]))), ids

    def _refine_input(self, images: list[np.ndarray], boxes: Tensor, ids: Tensor, size: int) -> Tensor:
        x = _normalize(_crops(images, boxes, ids, size))  # (N, 3, s, s)
        # channels_last: oneDNN runs the R/O-Net convolutions 3-4x faster in this layout on CPU.
        return x.to(self.device).contiguous(memory_format=torch.channels_last)

    def _stage2(self, images: list[np.ndarray], boxes: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        if boxes.shape[0] == 0:
            return boxes, ids
        reg, prob = (o.cpu() for o in self.rnet(self._refine_input(images, boxes, ids, 24)))
        ok = prob >= self.thresholds[1]
        boxes, reg, prob, ids = boxes[ok], reg[ok], prob[ok], ids[ok]
        keep = batched_nms(boxes, prob, ids, 0.7)
        return torch.floor(to_square(apply_regression(boxes[keep], reg[keep]))), ids[keep]

    def _stage3(self, images: list[np.ndarray], boxes: Tensor, ids: Tensor) -> list[Faces]:
        if boxes.shape[0] == 0:
            return [Faces.empty() for _ in images]
        reg, lmk, prob = (o.cpu() for o in self.onet(self._refine_input(images, boxes, ids, 48)))
        ok = prob >= self.thresholds[2]
        boxes, reg, lmk, prob, ids = boxes[ok], reg[ok], lmk[ok], prob[ok], ids[ok]
        w = (boxes[:, 2] - boxes[:, 0])[:, None]
        h = (boxes[:, 3] - boxes[:, 1])[:, None]
        px = boxes[:, 0:1] + lmk[:, 0:5] * w - 0.5  # edge -> pixel-centre coordinates
        py = boxes[:, 1:2] + lmk[:, 5:10] * h - 0.5
        pts = torch.stack([px, py], dim=2)  # (N, 5, 2)
        boxes = apply_regression(boxes, reg)
        keep = batched_nms(boxes, prob, ids, 0.7, mode="min")  # global score order, kept per image below
        boxes, prob, pts, ids = boxes[keep], prob[keep], pts[keep], ids[keep]
        out = []
        for i in range(len(images)):
            sel = ids == i
            out.append(Faces(boxes[sel].numpy().astype(np.float32), prob[sel].numpy().astype(np.float32),
                             _order_left_right(pts[sel].numpy().astype(np.float32))))
        return out


def _order_left_right(pts: np.ndarray) -> np.ndarray:
    """Swap eyes / mouth corners where needed so index 0 has the smaller x (the manifest's definition)."""
    pts = pts.copy()
    for a, b in ((0, 1), (3, 4)):
        swap = pts[:, a, 0] > pts[:, b, 0]
        pts[swap, a], pts[swap, b] = pts[swap, b].copy(), pts[swap, a].copy()
    return pts
