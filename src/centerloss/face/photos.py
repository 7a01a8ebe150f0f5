"""Raw photos -> aligned crops, with a record of what happened to each (the ``centerloss align`` manifest format).

The steps are the aligner's (:mod:`centerloss.align`): decode (:mod:`centerloss.utils.images`), MTCNN
detection, the face-choice policy of :func:`centerloss.align.policy.choose_face` (largest face near the centre)
and the 5-point similarity alignment of :func:`centerloss.align.transform.align`. Unlike ``align --mode test``
there is no fallback: a photo without a face is *skipped* and its record says so, because a feature of a
guessed crop would silently be compared with real ones.

A record (:class:`PhotoRecord`) maps to one row of :data:`centerloss.align.runner.MANIFEST_COLUMNS`:
``path, detected, score, x1..y5, reason, status, ...``; :func:`write_manifest` writes them with the aligner's
own writer (:func:`centerloss.align.report.write_manifest`, atomic).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["Face", "PhotoRecord", "Prepared", "choose", "crops_from_photos", "faces_in", "record_to_dict",
           "to_align_record", "write_manifest"]



@dataclass
class Face:
    """One detected face.

    box: (4,) float32 ``x1, y1, x2, y2`` in source pixels. score: the detector's (O-Net) probability.
    points: (5, 2) float32 landmarks (x, y), pixel-centre coordinates: left eye, right eye, nose, left and
    right mouth corner (left = smaller x). index: its position in the detector's output (sorted by score).
    num_faces: how many faces the photo holds.
    """

    box: np.ndarray
    score: float
    points: np.ndarray
    index: int = 0
    num_faces: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(float(v), 2) for v in self.box], "detector_score": round(float(self.score), 5),
                "points": np.round(self.points.astype(np.float64), 2).tolist(), "face_index": self.index,
                "num_faces": self.num_faces}


@dataclass
class PhotoRecord:
    """What happened to one photo: a crop from a detected face, or a reason for skipping it."""

    path: str
    face: Face | None = None
    reason: str = ""
    aligned_input: bool = False  # the photo was given as an aligned crop (--aligned): no detection ran
    ok: bool = False  # a crop was made (and is embedded)
    decoded: bool = True  # False: the file did not decode


@dataclass
class Prepared:
    """Crops ready to embed: ``crops`` (M, H, W, 3) uint8 for the photos ``records[i]`` with ``ok``, in order."""

    crops: np.ndarray
    records: list[PhotoRecord] = field(default_factory=list)

    @property
    def kept(self) -> list[int]:
        return [i for i, r in enumerate(self.records) if r.ok]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run MTCNN on one torch thread, as ``centerloss align``'s workers do: the landmarks then equal the
    aligner's bit for bit (other thread counts change float summation order, moving points by ~1e-5 px and
    now and then a crop pixel by one level), and MTCNN's small convolutions run faster so on a shared CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def faces_in(det: Any, rgb: np.ndarray) -> list[Face]:
    """Every face MTCNN ``det`` finds in uint8 RGB (H, W, 3), in the detector's order (by score)."""
    with one_thread():
        return _to_faces(det.detect(rgb))


def _to_faces(found: Any) -> list[Face]:
    n = len(found)
    return [Face(found.boxes[k].astype(np.float32), float(found.scores[k]), found.points[k].astype(np.float32), k, n)
            for k in range(n)]


def choose(faces: list[Face], height: int, width: int) -> Face | None:
    """The face the aligner would use (:func:`centerloss.align.policy.choose_face`), or None."""
    from ..align.mtcnn import Faces
    from ..align.policy import choose_face

    if not faces:
        return None
    packed = Faces(np.stack([f.box for f in faces]), np.array([f.score for f in faces], np.float32),
                   np.stack([f.points for f in faces]))
    return faces[choose_face(packed, height, width)]


def multi_face_note(face: Face) -> str:
    return f"{face.num_faces} faces found; chose largest near centre" if face.num_faces > 1 else ""


def crops_from_photos(sources: Sequence[str | os.PathLike[str] | np.ndarray], names: Sequence[str],
                      size: tuple[int, int], detector: Any, *, aligned: bool = False, fit: str = "error",
                      strict: bool = False, chunk: int = 16, workers: int = 0,
                      progress: Callable[[int], None] | None = None) -> Prepared:
    """Decode, detect, choose and align each photo (or, with ``aligned``, take it as the crop).

    Args:
        sources: paths or uint8 RGB arrays (H, W, 3).
        names: what records and errors call each source (e.g. its path relative to the folder).
        size: crop (H, W), the model's input size.
        detector: an MTCNN (``centerloss.align.get_detector``); unused with ``aligned``.
        fit: with ``aligned``, how a crop of another size is adapted (:func:`centerloss.eval.features.fit_image`).
        strict: raise DataError (naming the file) for an unreadable photo or one without a face, instead of
            skipping it with a record.
        chunk: photos per detector call (equal-sized photos share P-Net batches).
        workers: decoding threads (0: decode inline).
    """
    from concurrent.futures import ThreadPoolExecutor

    records: list[PhotoRecord] = []
    crops: list[np.ndarray] = []
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    try:
        for start in range(0, len(sources), chunk):
            idx = range(start, min(start + chunk, len(sources)))
            decoded = list(pool.map(lambda i: _decode(sources[i], names[i], strict), idx)) if pool else \
                [_decode(sources[i], names[i], strict) for i in idx]
            recs, out = _chunk_crops(decoded, [names[i] for i in idx], size, detector, aligned, fit, strict)
            records += recs
            crops += out
            if progress is not None:
                progress(len(idx))
    finally:
        if pool:
            pool.shutdown()
    arr = np.stack(crops) if crops else np.zeros((0, *size, 3), np.uint8)
    return Prepared(arr, records)


def _decode(src: str | os.PathLike[str] | np.ndarray, name: str, strict: bool) -> tuple[np.ndarray | None, str]:
    from ..utils.images import decode_image

    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
            raise DataError(f"{name}: expected a uint8 RGB array (H, W, 3), got {src.dtype} {src.shape}")
        return src, ""
    try:
        return decode_image(src, name=str(src))
    except DataError as e:
        if strict:
            raise
        return None, "unreadable: " + str(e).removeprefix(f"{src}: ")


def _chunk_crops(decoded: list[tuple[np.ndarray | None, str]], names: list[str], size: tuple[int, int],
                 detector: Any, aligned: bool, fit: str, strict: bool) -> tuple[list[PhotoRecord], list[np.ndarray]]:
    from ..eval.features import fit_image

    recs, out = [], []
    if aligned:
        for (rgb, note), name in zip(decoded, names):
            if rgb is None:
                recs.append(PhotoRecord(name, None, note, aligned_input=True, decoded=False))
                continue
            out.append(fit_image(rgb, size, fit, name=name))
            recs.append(PhotoRecord(name, None, "; ".join(x for x in (note, "given as an aligned crop") if x), True,
                                    ok=True))
        return recs, out
    from ..align.transform import align  # OpenCV (centerloss[align]): only photos that need aligning

    live = [i for i, (rgb, _) in enumerate(decoded) if rgb is not None]
    with one_thread():
        found = detector.detect_batch([decoded[i][0] for i in live]) if live else []
    faces_of = dict(zip(live, found))
    for i, ((rgb, note), name) in enumerate(zip(decoded, names)):
        if rgb is None:
            recs.append(PhotoRecord(name, None, note, decoded=False))
            continue
        face = choose(_to_faces(faces_of[i]), rgb.shape[0], rgb.shape[1])
        if face is None:
            if strict:
                raise DataError(f"{name}: no face detected (MTCNN found none at the minimum face size); "
                                "pass --aligned if it is already an aligned crop")
            recs.append(PhotoRecord(name, None, "; ".join(x for x in (note, "no face detected; skipped") if x)))
            continue
        out.append(align(rgb, face.points.astype(np.float64), size))
        recs.append(PhotoRecord(name, face, "; ".join(x for x in (note, multi_face_note(face)) if x), ok=True))
    return recs, out


def record_to_dict(r: PhotoRecord) -> dict[str, Any]:
    """A record as a JSON-able dict (for caches and galleries)."""
    d: dict[str, Any] = {"path": r.path, "reason": r.reason, "aligned_input": r.aligned_input, "ok": r.ok,
                         "decoded": r.decoded}
    if r.face is not None:
        d.update(r.face.to_dict())
    return d


def record_from_dict(d: dict[str, Any]) -> PhotoRecord:
    face = None
    if "box" in d:
        face = Face(np.asarray(d["box"], np.float32), float(d["detector_score"]),
                    np.asarray(d["points"], np.float32).reshape(5, 2), int(d["face_index"]), int(d["num_faces"]))
    return PhotoRecord(d["path"], face, d.get("reason", ""), bool(d.get("aligned_input", False)), bool(d.get("ok")),
                       bool(d.get("decoded", True)))


def to_align_record(r: PhotoRecord) -> dict[str, Any]:
    """A record in the aligner's form (:mod:`centerloss.align.report`): status ``ok`` (a crop was embedded;
    ``out`` stays empty since no crop file is written), ``skipped`` (no face) or ``failed`` (unreadable)."""
    rec: dict[str, Any] = {"path": r.path, "detected": int(r.face is not None), "reason": r.reason,
                           "score": None if r.face is None else float(r.face.score),
                           "points": None if r.face is None else r.face.points.astype(np.float64).tolist(),
                           "status": "ok" if r.ok else ("failed" if not r.decoded else "skipped"),
                           "failure": "" if r.ok else "permanent", "decoded": int(r.decoded), "out": "",
                           "faces": 0 if r.face is None else r.face.num_faces}
    return rec


def write_manifest(path: str | os.PathLike[str], records: Sequence[PhotoRecord]) -> None:
    """Write ``records`` as an align manifest CSV (sorted by path, the aligner's own writer), atomically."""
    from ..align.report import write_manifest as write_align_manifest

    write_align_manifest(Path(path), [to_align_record(r) for r in sorted(records, key=lambda r: r.path)])
