""":class:`FaceRecognizer`: raw photos in, answers out -- detect, align, embed, compare, identify.

It strings together the aligner (MTCNN, the face-choice policy, 5-point alignment; :mod:`centerloss.align`),
a model (safetensors on torch, or ONNX on onnxruntime; :mod:`.models`) and a :class:`~.gallery.Gallery`.
The feature is the paper's (``docs/METHOD.md``, Sec. 4): crop and horizontal flip embedded, concatenated;
scores are cosines.

    rec = FaceRecognizer("model.safetensors")
    score = rec.compare("a.jpg", "b.jpg")              # cosine of the two faces' features
    rec.identify("who.jpg", Gallery.load("people.gallery")).best

Every method that takes an *image* accepts a path or a uint8 RGB array (H, W, 3). Photos are decoded only by
:mod:`centerloss.utils.images` (truncated files and decompression bombs are refused, naming the file).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError
from .photos import Face, Prepared, choose, crops_from_photos, faces_in

__all__ = ["FaceRecognizer", "Identification", "Image", "l2_normalize"]

Image = str | os.PathLike[str] | np.ndarray


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of (N, D) scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _name(image: Image, i: int = 0) -> str:
    return f"image {i}" if isinstance(image, np.ndarray) else str(image)


@dataclass
class Identification:
    """Answer for one probe: ``matches`` [(identity, cosine score)] best first, ``best`` the top identity or
    ``"unknown"`` when its score is below ``threshold`` (open set; None: closed set, the top is taken)."""

    matches: list[tuple[str, float]]
    threshold: float | None
    face: Face | None = None
    source: str = ""
    best: str = field(init=False)

    def __post_init__(self) -> None:
        top = self.matches[0] if self.matches else ("unknown", float("-inf"))
        known = self.threshold is None or top[1] >= self.threshold
        self.best = top[0] if known else "unknown"

    def to_dict(self) -> dict[str, Any]:
        return {"photo": self.source, "best": self.best, "threshold": self.threshold,
                "matches": [{"identity": n, "score": s} for n, s in self.matches],
                "face": None if self.face is None else self.face.to_dict()}


class FaceRecognizer:
    """Detect, align and embed faces with one model; compare them or look them up in a gallery.

    Args:
        model_path: a ``.safetensors`` file from ``save_model`` / training, or a ``.onnx`` file from
            ``centerloss export`` (runs on onnxruntime, ``pip install centerloss[onnx]``).
        device: ``"cpu"``, ``"cuda"``, ``"auto"``.
        min_face_size: smallest face side (px) the detector looks for.
        combine: ``"concat"`` (paper: crop and flip, 2 x embed_dim), ``"sum"`` or ``"none"`` (no flip).
        batch_size: crops per forward pass.
        threshold: cosine threshold for :meth:`verify` / :meth:`identify`; default: the model's metadata
            ``threshold`` if it has one.
        input_size: (H, W) of the crops; default: the model's.
    """

    def __init__(self, model_path: str | os.PathLike[str], device: str = "cpu", *, min_face_size: float = 40.0,
                 combine: str = "concat", batch_size: int = 64, threshold: float | None = None,
                 input_size: tuple[int, int] | None = None) -> None:
        from ..utils.device import resolve_device
        from .models import check_combine, load_embedder

        check_combine(combine)
        device = str(resolve_device(device))
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.embedder = load_embedder(model_path, device)
        self.model_path = str(model_path)
        self.device = str(device)
        self.min_face_size = float(min_face_size)
        self.combine = combine
        self.batch_size = int(batch_size)
        self.input_size = tuple(input_size or self.embedder.input_size)
        meta_thr = self.embedder.meta.get("threshold")
        self.threshold = threshold if threshold is not None else (
            float(meta_thr) if isinstance(meta_thr, int | float) else None)

    # ------------------------------------------------------------------ properties
    @property
    def model_sha256(self) -> str:
        """sha256 of the weights (for an exported ONNX file: of the safetensors file it came from)."""
        return self.embedder.weights_sha256

    @property
    def detector(self) -> Any:
        """The shared MTCNN of :func:`centerloss.align.get_detector` (loaded on first use)."""
        from ..align.pipeline import get_detector

        return get_detector(self.min_face_size, self.device)

    # ------------------------------------------------------------------ steps
    def detect(self, image: Image) -> list[Face]:
        """Every face in ``image``, by detector score: each with ``box`` (4,), ``score``, ``points`` (5, 2)."""
        rgb = self._decode(image)
        return faces_in(self.detector, rgb)

    def find_face(self, image: Image) -> Face:
        """The face the aligner's policy picks (largest near the centre); DataError naming the photo if none."""
        return self._choose(self._decode(image), _name(image))

    def _choose(self, rgb: np.ndarray, name: str) -> Face:
        face = choose(faces_in(self.detector, rgb), rgb.shape[0], rgb.shape[1])
        if face is None:
            raise DataError(f"{name}: no face detected (MTCNN, min face {self.min_face_size:g} px)")
        return face

    def align(self, image: Image, face: Face | None = None) -> np.ndarray:
        """The aligned crop (H, W, 3) uint8 of ``face`` (default: :meth:`find_face`) on the paper's template."""
        from ..align.transform import align

        rgb = self._decode(image)
        face = face if face is not None else self._choose(rgb, _name(image))
        return align(rgb, face.points.astype(np.float64), self.input_size)

    def embed(self, images: Image | Sequence[Image], aligned: bool = False) -> np.ndarray:
        """Features (N, E) float32 of the chosen face of each photo (one image gives (1, E)).

        ``aligned=True`` takes each image as a ready crop of the model's input size. A photo without a face,
        or one that does not decode, raises DataError naming it.
        """
        items = [images] if isinstance(images, str | os.PathLike | np.ndarray) and not (
            isinstance(images, np.ndarray) and images.ndim == 4) else list(images)
        feats, _ = self.embed_photos(items, aligned=aligned, strict=True)
        return feats

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Features (B, E) float32 of aligned uint8 crops (B, H, W, 3), in batches of ``batch_size``."""
        out = [self.embedder.embed(crops[i:i + self.batch_size], self.combine)
               for i in range(0, len(crops), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.embedder.feature_dim(self.combine)), np.float32)

    def embed_photos(self, sources: Sequence[Image], names: Sequence[str] | None = None, *, aligned: bool = False,
                     fit: str = "error", strict: bool = False, workers: int = 0,
                     progress: Any = None) -> tuple[np.ndarray, Prepared]:
        """Features (M, E) of the photos that gave a crop, and the per-photo records (all N of them).

        ``strict=False`` skips unreadable photos and photos without a face (their record says why);
        ``progress(n)`` is called after each chunk of photos.
        """
        names = list(names) if names is not None else [_name(s, i) for i, s in enumerate(sources)]
        prep = crops_from_photos(sources, names, self.input_size, None if aligned else self.detector,
                                 aligned=aligned, fit=fit, strict=strict, workers=workers, progress=progress)
        return self.embed_crops(prep.crops), prep

    # ------------------------------------------------------------------ answers
    def compare(self, a: Image, b: Image, aligned: bool = False) -> float:
        """Cosine similarity of two faces' features (in [-1, 1]; higher = more alike)."""
        f = l2_normalize(self.embed([a, b], aligned=aligned)).astype(np.float64)  # (2, E)
        return float(f[0] @ f[1])

    def verify(self, a: Image, b: Image, aligned: bool = False) -> bool:
        """Same person? ``compare(a, b) >= threshold``; needs a threshold (argument or model metadata)."""
        if self.threshold is None:
            raise DataError("no threshold: pass threshold= or store meta['threshold'] in the checkpoint")
        return self.compare(a, b, aligned) >= self.threshold

    def identify(self, image: Image, gallery: Any, top_k: int = 5, threshold: float | None = None,
                 aligned: bool = False) -> Identification:
        """The ``top_k`` gallery identities most like the face in ``image`` (see :meth:`identify_batch`)."""
        return self.identify_batch([image], gallery, top_k, threshold, aligned)[0]

    def identify_batch(self, images: Sequence[Image], gallery: Any, top_k: int = 5, threshold: float | None = None,
                       aligned: bool = False) -> list[Identification]:
        """Rank gallery identities for each photo by cosine to their templates (exact search).

        ``threshold``: below it the answer is ``"unknown"`` (default: the recognizer's, then the gallery's).
        A gallery built with other weights is refused (DataError naming both hashes).
        """
        gallery.check_model(self.model_sha256, self.model_path)
        names = [_name(s, i) for i, s in enumerate(images)]
        feats, prep = self.embed_photos(list(images), names, aligned=aligned, strict=True)
        scores, who = gallery.search(feats, top_k)  # (Q, k), [[name] * k] * Q
        thr = threshold if threshold is not None else (self.threshold if self.threshold is not None
                                                       else gallery.threshold)
        return [Identification([(n, float(s)) for n, s in zip(who[q], scores[q])], thr, prep.records[q].face, names[q])
                for q in range(len(names))]

    # ------------------------------------------------------------------ helpers
    def _decode(self, image: Image) -> np.ndarray:
        from ..utils.images import decode_image

        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise DataError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
            return image
        return decode_image(image)[0]
