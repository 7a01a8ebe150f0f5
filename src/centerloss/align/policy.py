"""What to do with zero, one or several faces: the paper's policy (Sec. 4), made explicit.

- **Several faces:** take the one with the highest ``area - 2 * d**2``, where ``area`` is the box area and
  ``d`` the distance (px) from the box centre to the image centre. Both terms are in px^2, so a face has to
  be clearly larger to win from further out: on a 250x250 LFW image a centred 110 px face (12,100) beats
  a 150 px face 80 px away (22,500 - 12,800 = 9,700). Ties go to the higher detector score.
- **No face, train mode:** the image is skipped and recorded (``detected = 0``, no crop).
- **No face, test mode:** points from a landmarks side file (:func:`read_landmarks_csv`) if it lists the
  image, else :func:`default_points`. The crop is always written and the manifest says which fallback.

Landmarks side file (CSV, UTF-8): one row per image, ``path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5`` with ``path``
relative to the source folder (``/`` separators) and the points in source pixels in the manifest's order
(left eye, right eye, nose, left mouth corner, right mouth corner). A header row is optional; with a header
the columns are found by name (``path``, ``x1`` ... ``y5``) and extra columns are ignored, so a previous
run's ``manifest.csv`` works as a landmarks file (with its ``path_escaped`` column, names that are not
valid UTF-8 are matched too).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .files import unescape_name
from .mtcnn import Faces

__all__ = ["choose_face", "default_points", "read_landmarks_csv", "DEFAULT_POINTS_FRAC", "POINT_COLUMNS"]

POINT_COLUMNS = tuple(f"{a}{i}" for i in range(1, 6) for a in ("x", "y"))

#: Fallback points as fractions of (width, height), pixel edges: the mean MTCNN landmarks of the 13,232 LFW
#: deep-funneled images (250x250, faces centred by congealing) in which this detector finds a face (their
#: spread is 2-6 px). benchmarks/bench_align.py recomputes them from a manifest. For LFW-style centred
#: crops this is close to the truth; for other images it is a plain centre crop.
DEFAULT_POINTS_FRAC = np.array([
    [0.4183, 0.4516],
    [0.5860, 0.4480],
    [0.5033, 0.5482],
    [0.4314, 0.6356],
    [0.5795, 0.6326],
], dtype=np.float64)


def choose_face(faces: Faces, height: int, width: int) -> int:
    """Index of the face to align: max ``area - 2 * dist(box centre, image centre)**2``; -1 if none."""
    if len(faces) == 0:
        return -1
    b = faces.boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    cx, cy = (b[:, 0] + b[:, 2]) / 2 - width / 2, (b[:, 1] + b[:, 3]) / 2 - height / 2
    key = area - 2.0 * (cx ** 2 + cy ** 2)
    # lexsort: last key is primary; ties broken by score, then by lower index (stable).
    order = np.lexsort((np.arange(len(key)), -faces.scores.astype(np.float64), -key))
    return int(order[0])


def default_points(height: int, width: int) -> np.ndarray:
    """Documented last-resort points (5, 2) for a test image with no detection and no side-file entry.

    The LFW mean landmarks (:data:`DEFAULT_POINTS_FRAC`) scaled to the image: right for LFW-style centred
    crops, a rough centre crop for anything else. The CLI reports every image that used it.
    """
    return DEFAULT_POINTS_FRAC * np.array([width, height], dtype=np.float64) - 0.5


def read_landmarks_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a landmarks side file (format in the module docstring) -> {relative path: (5, 2) points}."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"landmarks file not found: {p}")
    out: dict[str, np.ndarray] = {}
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read landmarks CSV ({e})") from e
    rows = [(n, r) for n, r in enumerate(rows, 1) if r and any(c.strip() for c in r)]
    if not rows:
        return out
    cols = [c.strip() for c in rows[0][1]]
    if cols and cols[0].lower() == "path":
        missing = [c for c in ("path", *POINT_COLUMNS) if c not in cols]
        if missing:
            raise DataError(f"{p}: header lacks columns {missing}; need path,x1,y1,...,x5,y5")
        idx = [cols.index(c) for c in ("path", *POINT_COLUMNS)]
        esc = cols.index("path_escaped") if "path_escaped" in cols else None
        rows = rows[1:]
    else:
        idx, esc = list(range(11)), None
    for line, r in rows:
        if len(r) <= max(idx):
            raise DataError(f"{p}:{line}: expected path and 10 coordinates, got {len(r)} fields")
        if esc is not None and len(r) > esc and r[esc].strip() == "1":  # a manifest row of a non-UTF-8 name
            rel = unescape_name(r[idx[0]])
        else:
            rel = r[idx[0]].strip().replace("\\", "/")
        vals = [r[i].strip() for i in idx[1:]]
        if all(v == "" for v in vals):  # e.g. a manifest row of an unreadable file: no points to offer
            continue
        try:
            pts = np.array([float(v) for v in vals], dtype=np.float64).reshape(5, 2)
        except ValueError:
            raise DataError(f"{p}:{line}: coordinates must be numbers, got {vals}") from None
        if not np.isfinite(pts).all():
            raise DataError(f"{p}:{line}: coordinates must be finite, got {vals}")
        if rel in out:
            raise DataError(f"{p}:{line}: {rel!r} is listed twice")
        out[rel] = pts
    return out

