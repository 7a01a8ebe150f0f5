"""One image end to end: decode -> detect -> choose a face (or fall back) -> align.

The batch aligner (:mod:`centerloss.align.runner`) calls :func:`align_rgb` per image; :func:`align_file`
is the same for one path, for scripts and notebooks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..utils.atomic import os_error
from ..utils.images import decode_image
from .files import path_str, read_source
from .mtcnn import MTCNN, Faces
from .policy import choose_face, default_points
from .transform import align, parse_size

__all__ = ["AlignResult", "get_detector", "detect_faces", "align_rgb", "align_file", "MODES",
           "REASON_FALLBACK_FILE", "REASON_FALLBACK_DEFAULT", "REASON_NO_FACE"]

MODES = ("train", "test")
REASON_FALLBACK_FILE = "no face detected; fallback: landmarks file"
REASON_FALLBACK_DEFAULT = "no face detected; fallback: default centre points"
REASON_NO_FACE = "no face detected; skipped (train mode)"


@dataclass
class AlignResult:
    """Outcome for one image.

    crop: aligned uint8 (H, W, 3), or None when the image was skipped (train mode, no face).
    detected: a face was detected (the points are MTCNN's), as opposed to a fallback.
    score: O-Net probability of the chosen face (None without detection).
    points: (5, 2) source-pixel points used for the crop (detected or fallback), or None.
    reason: "" for a plain detection; otherwise what happened ("; "-joined notes).
    num_faces: how many faces the detector returned.
    """

    crop: np.ndarray | None
    detected: bool
    score: float | None
    points: np.ndarray | None
    reason: str
    num_faces: int = 0


@lru_cache(maxsize=4)
def get_detector(min_face_size: float = 40.0, device: str = "cpu") -> MTCNN:
    """A shared :class:`MTCNN` per (min_face_size, device); loading weights once per process."""
    return MTCNN(min_face_size=min_face_size, device=device)


def detect_faces(rgb: np.ndarray, min_face_size: float = 40.0) -> Faces:
    """Faces in a uint8 RGB image (H, W, 3): ``.boxes`` (N, 4), ``.scores`` (N,), ``.points`` (N, 5, 2).

    Sorted by score. See :class:`~centerloss.align.mtcnn.Faces` for the coordinate conventions.
    """
    return get_detector(float(min_face_size)).detect(rgb)


def align_rgb(rgb: np.ndarray, size: tuple[int, int] | str = (112, 96), mode: str = "test",
              fallback: np.ndarray | None = None, detector: MTCNN | None = None) -> AlignResult:
    """Detect, choose and align the face of one RGB image under the paper's policy (:mod:`.policy`).

    ``fallback``: side-file points (5, 2) used in test mode when nothing is detected; without them the
    documented :func:`~centerloss.align.policy.default_points` are used. Train mode never falls back.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    hw = parse_size(size)
    det = detector if detector is not None else get_detector()
    faces = det.detect(rgb)
    notes = [f"{len(faces)} faces found; chose largest near centre"] if len(faces) > 1 else []
    k = choose_face(faces, rgb.shape[0], rgb.shape[1])
    if k >= 0:
        pts = faces.points[k].astype(np.float64)
        return AlignResult(align(rgb, pts, hw), True, float(faces.scores[k]), pts, "; ".join(notes), len(faces))
    if mode == "train":
        return AlignResult(None, False, None, None, REASON_NO_FACE, 0)
    if fallback is not None:
        pts, why = np.asarray(fallback, dtype=np.float64).reshape(5, 2), REASON_FALLBACK_FILE
    else:
        pts, why = default_points(rgb.shape[0], rgb.shape[1]), REASON_FALLBACK_DEFAULT
    return AlignResult(align(rgb, pts, hw), False, None, pts, why, 0)


def align_file(path: str | os.PathLike[str], size: tuple[int, int] | str = (112, 96), mode: str = "test",
               fallback: np.ndarray | None = None, detector: MTCNN | None = None) -> AlignResult:
    """:func:`align_rgb` on an image file; grayscale/CMYK/alpha are converted (noted in ``reason``).

    Raises :class:`~centerloss.errors.DataError` naming the file if it cannot be read or decoded (a FIFO or
    device is refused without being opened).
    """
    name = path_str(Path(path))
    try:
        data = read_source(path, name)
    except OSError as e:
        raise os_error(e, name, "read") from e
    rgb, note = decode_image(data, name=name)
    res = align_rgb(rgb, size, mode, fallback, detector)
    if note:
        res.reason = "; ".join(x for x in (note, res.reason) if x)
    return res
