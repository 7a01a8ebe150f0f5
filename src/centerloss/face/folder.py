"""Embed a folder of raw photos (detection + alignment inside) or of aligned crops, with a feature cache.

The cache file ``<cache_dir>/face-<key>.npz`` is a features file (:func:`centerloss.eval.features.save_features`)
whose ``meta`` also holds every photo's record, so a cache hit reproduces the manifest too. The key hashes the
model's weights and runtime, the photo list (relative path, size and mtime of each), the folder and every
option that changes the numbers (combine, crop size, minimum face size, aligned/fit). Torch models on aligned
crops go through :func:`centerloss.eval.features.extract_features` and its cache, exactly as ``eval lfw`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .photos import PhotoRecord, record_from_dict, record_to_dict

__all__ = ["FolderFeatures", "embed_folder"]

_CACHE_FORMAT = "face-folder/1"


@dataclass
class FolderFeatures:
    """``features`` (M, E) of the photos ``paths`` (those that gave a crop); ``records`` for all N photos."""

    paths: list[str]
    features: np.ndarray
    records: list[PhotoRecord]
    cached: bool = False


def _cache_file(rec: Any, root: Path, paths: Sequence[str], aligned: bool, fit: str, cache_dir: str | os.PathLike[str]) -> Path:
    from ..eval.features import image_stats

    items = image_stats(root, paths)
    parts = {"format": _CACHE_FORMAT, "weights": rec.model_sha256, "runtime": rec.embedder.kind,
             "file": rec.embedder.file_sha256, "root": str(root.resolve()), "items": items, "combine": rec.combine,
             "size": list(rec.input_size), "min_face": rec.min_face_size, "aligned": aligned, "fit": fit,
             "device": rec.device.split(":")[0]}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    return Path(cache_dir) / f"face-{key}.npz"


def embed_folder(rec: Any, root: str | os.PathLike[str], paths: Sequence[str], *, aligned: bool = False,
                 fit: str = "error", cache_dir: str | os.PathLike[str] | None = None, workers: int = 0,
                 progress: bool = True) -> FolderFeatures:
    """Features of ``root / paths[i]`` with :class:`~.recognizer.FaceRecognizer` ``rec``.

    Raw photos without a face, or that do not decode, are skipped; their record says why. With ``aligned``
    the photos are crops (of the model's size, or adapted by ``fit``); an unreadable crop is skipped too.
    """
    from tqdm import tqdm

    from ..eval.features import _write_cache, load_features

    root = Path(root)
    if aligned and rec.embedder.kind == "torch":
        return _aligned_torch(rec, root, paths, fit, cache_dir, workers, progress)
    cache = _cache_file(rec, root, paths, aligned, fit, cache_dir) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        t = load_features(cache)
        records = [record_from_dict(d) for d in t.meta.get("records", [])]
        if len(records) == len(paths) and [r.path for r in records] == list(paths):
            return FolderFeatures(t.paths, t.features, records, cached=True)
    with tqdm(total=len(paths), desc="detect+align+embed" if not aligned else "embed", unit="img",
              disable=not progress) as bar:
        feats, prep = rec.embed_photos([root / p for p in paths], list(paths), aligned=aligned, fit=fit,
                                       workers=workers, progress=bar.update)
    kept = [paths[i] for i in prep.kept]
    if cache is not None and kept:
        _write_cache(cache, kept, feats, {"records": [record_to_dict(r) for r in prep.records]})  # best effort
    return FolderFeatures(kept, feats, prep.records)


def _aligned_torch(rec: Any, root: Path, paths: Sequence[str], fit: str, cache_dir: Any, workers: int,
                   progress: bool) -> FolderFeatures:
    """Today's path for crops on a torch model: :func:`extract_features` (an unreadable crop is an error)."""
    from ..eval.features import extract_features

    emb = rec.embedder
    feats = extract_features(emb.model, list(paths), root, batch_size=rec.batch_size, combine=rec.combine,
                             input_size=tuple(rec.input_size), fit=fit, device=rec.device, cache_dir=cache_dir,
                             model_path=emb.path, num_workers=workers, progress=progress)
    records = [PhotoRecord(p, None, "given as an aligned crop", aligned_input=True, ok=True) for p in paths]
    return FolderFeatures(list(paths), feats, records)
