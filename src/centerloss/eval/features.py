"""Feature extraction: the I/O layer that feeds the pure evaluation maths.

The paper's test feature (docs/METHOD.md; paper Sec. 4): the embedding of the aligned crop and of its horizontal
flip, concatenated (``combine="concat"``, 2 x embed_dim); ``"sum"`` adds them instead (embed_dim) and
``"none"`` skips the flip. Crops are uint8 RGB, decoded by the project's one decoder
(:func:`centerloss.utils.images.read_rgb`: a truncated file or a decompression bomb is a
:class:`~centerloss.errors.DataError` naming the image, for files and for a ``.bin`` set's bytes alike) and
normalised by :func:`centerloss.data.transforms.to_tensor`.

Extraction is batched, shows a progress bar, runs the model in eval mode under ``torch.no_grad`` and visits
images in the given order, so the same inputs give the same features. With ``cache_dir`` the result is
stored as ``<cache_dir>/<key>.npz``; the key hashes the model (file bytes, or the state dict of an in-memory
model), the image list (relative path, size and mtime of each file) and every option that changes the
numbers. Change any of them and the features are recomputed. A cache entry that cannot be read is recomputed
and replaced; one that cannot be written is reported and skipped (the cache only saves time).

Features files (``FEATS.npz``) hold ``paths`` (relative, ``/``-separated, e.g. ``Name/Name_0001.jpg``),
``features`` (N, D) float32 and ``meta`` (a JSON string). They load with ``allow_pickle=False`` and are
validated (:func:`load_features`); every write is atomic (:mod:`centerloss.utils.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CenterLossError, DataError, Note
from ..utils.atomic import atomic_path, check_output_dir
from ..utils.images import IMAGE_EXTENSIONS, read_rgb

__all__ = [
    "COMBINE_MODES",
    "FIT_MODES",
    "FeatureTable",
    "check_feature_matrix",
    "embed_images",
    "extract_bin_features",
    "extract_features",
    "fit_image",
    "list_images",
    "load_distractors",
    "load_features",
    "model_fingerprint",
    "save_features",
]

IMAGE_EXTS = IMAGE_EXTENSIONS  # kept for callers of the old name
COMBINE_MODES = ("concat", "sum", "none")
FIT_MODES = ("error", "center-crop", "resize")
DEFAULT_INPUT_SIZE = (112, 96)  # (H, W), the paper's crop
_CACHE_FORMAT = 1
_CHECK_BYTES = 64 << 20  # rows checked for NaN/Inf per block of a (memory-mapped) matrix


# ---------------------------------------------------------------- features files


@dataclass
class FeatureTable:
    """Rows of ``features`` belong to ``paths``."""

    paths: list[str]
    features: np.ndarray  # (N, D) float32
    meta: dict[str, Any] = field(default_factory=dict)

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


def _nonfinite_rows(arr: np.ndarray) -> tuple[int, int]:
    """(number of rows holding NaN/Inf, index of the first such row or -1), reading ``arr`` in blocks so a
    memory-mapped matrix larger than RAM is checked in bounded memory."""
    n, d = arr.shape
    step = max(1, _CHECK_BYTES // max(1, d * arr.dtype.itemsize))
    count, first = 0, -1
    for i in range(0, n, step):
        bad = ~np.isfinite(np.asarray(arr[i:i + step])).all(axis=1)  # (C,)
        if bad.any():
            count += int(bad.sum())
            if first < 0:
                first = i + int(np.argmax(bad))
    return count, first


def check_feature_matrix(arr: np.ndarray, source: str, what: str = "features") -> None:
    """Refuse (DataError naming ``source``) anything but a non-empty (N, D) float matrix of finite values."""
    if arr.ndim != 2:
        raise DataError(f"{source}: {what} must be a 2-D (N, D) array, got shape {arr.shape}")
    n, d = arr.shape
    if n == 0:
        raise DataError(f"{source}: {what}: empty, shape (0, {d})")
    if d == 0:
        raise DataError(f"{source}: {what}: zero width, shape ({n}, 0)")
    if arr.dtype.kind != "f":
        raise DataError(f"{source}: {what} must be floating point, got {arr.dtype}")
    bad, first = _nonfinite_rows(arr)
    if bad == n:
        raise DataError(f"{source}: {what}: all {n} rows contain NaN or Inf")
    if bad:
        raise DataError(f"{source}: {what}: {bad} of {n} rows contain NaN or Inf (first: row {first})")


def save_features(path: str | os.PathLike[str], paths: Sequence[str], features: np.ndarray,
                  meta: dict[str, Any] | None = None) -> None:
    """Atomically write a features file (uncompressed ``.npz``: it loads in milliseconds)."""
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != len(paths):
        raise DataError(f"features must be (N, D) with N = {len(paths)}, got {feats.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, paths=np.array(list(paths), dtype=np.str_), features=feats,
                 meta=np.array(json.dumps(meta or {}, sort_keys=True)))


def _read_npz(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (no pickles); any failure is a DataError naming the file."""
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as e:  # pickled content: object arrays, or not an npz/npy at all
        raise DataError(f"{path}: not a plain numeric .npz file ({e})") from None
    except Exception as e:  # BadZipFile, EOFError, OSError ...
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz with arrays {', '.join(required)}")
    with z:
        keys = set(z.files)
        if not set(required) <= keys:
            raise DataError(f"{path} must hold arrays {' and '.join(map(repr, required))}; it has {sorted(keys)}")
        try:
            return {k: z[k] for k in keys}
        except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
            raise DataError(f"{path}: holds object (pickled) arrays, which are refused ({e})") from None
        except Exception as e:
            raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def load_features(path: str | os.PathLike[str]) -> FeatureTable:
    """Read and validate a features file (``paths``, ``features`` and optional ``meta``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file not found: {path}")
    z = _read_npz(path, ("paths", "features"))
    paths, feats = z["paths"], z["features"]
    if paths.ndim != 1 or paths.dtype.kind not in "US":
        raise DataError(f"{path}: 'paths' must be a 1-D array of strings, got {paths.dtype} {paths.shape}")
    if feats.ndim != 2 or feats.shape[0] != paths.shape[0]:
        raise DataError(f"{path}: 'features' must be (N, D) with N = {paths.shape[0]} paths, got {feats.shape}")
    check_feature_matrix(feats, str(path), "'features'")
    meta: dict[str, Any] = {}
    if "meta" in z:
        try:
            meta = json.loads(str(z["meta"]))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: 'meta' is not a JSON string ({e})") from None
        if not isinstance(meta, dict):
            raise DataError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    plist = [str(p) for p in paths.tolist()]
    if len(set(plist)) != len(plist):
        dup = next(p for i, p in enumerate(plist) if p in plist[:i])
        raise DataError(f"{path}: 'paths' contains duplicates, e.g. {dup!r}")
    return FeatureTable(plist, np.ascontiguousarray(feats, dtype=np.float32), meta)


def load_distractors(path: str | os.PathLike[str], dim: int | None = None) -> np.ndarray:
    """Distractor features (N, D): a ``.npy`` (memory-mapped, checked for NaN/Inf in blocks) or an ``.npz``
    with ``features`` (and optionally ``paths``). ``dim``: the probes' width, which they must share."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"distractor file not found: {p}")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as e:  # object dtype, pickled content, bad header, data shorter than the header says
            raise DataError(f"{p}: not a plain numeric .npy array ({e})") from None
        except Exception as e:
            raise DataError(f"cannot read {p}: {type(e).__name__}: {e}") from None
    else:
        arr = _read_npz(p, ("features",))["features"]
    check_feature_matrix(arr, str(p), "distractor features")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"{p}: distractor features are {arr.shape[1]}-dim but the probes are {dim}-dim")
    return arr


# ---------------------------------------------------------------- images


def list_images(root: str | os.PathLike[str]) -> list[str]:
    """Every image under ``root`` (recursively), as sorted ``/``-separated paths relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    out = [p.relative_to(root).as_posix() for p in root.rglob("*")
           if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not out:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return sorted(out)


def fit_image(img: np.ndarray, size: tuple[int, int], fit: str = "error", name: str = "image") -> np.ndarray:
    """Bring a (H, W, 3) uint8 crop to ``size`` = (H, W): ``"error"`` demands it already is (aligned crops
    should be), ``"center-crop"`` cuts the middle (a 112x112 InsightFace crop becomes the paper's 112x96
    template exactly), ``"resize"`` rescales (bilinear)."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    if fit == "error":
        raise DataError(f"{name} is {img.shape[0]}x{img.shape[1]} (HxW) but the model takes {h}x{w}; align it "
                        "first, or pass fit='center-crop' / 'resize' (--fit)")
    if fit == "center-crop":
        if img.shape[0] < h or img.shape[1] < w:
            raise DataError(f"{name} ({img.shape[0]}x{img.shape[1]}) is smaller than {h}x{w}; cannot center-crop")
        y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        return np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w])
    if fit == "resize":
        from PIL import Image

        return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    raise DataError(f"unknown fit mode {fit!r}; choose one of {FIT_MODES}")


# ---------------------------------------------------------------- model side


def model_fingerprint(model: Any = None, path: str | os.PathLike[str] | None = None) -> str:
    """sha256 of a model file's bytes, or of an in-memory model's class and state dict."""
    if path is not None:
        from ..utils.digest import file_digest

        return file_digest(path)
    h = hashlib.sha256()
    if model is None:
        raise ValueError("pass a model or a path")
    import torch

    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def embed_images(model: Any, images: np.ndarray, combine: str = "concat", device: Any = None) -> np.ndarray:
    """Features of one batch of crops ``(B, H, W, 3)`` uint8 -> ``(B, E)`` float32 (E = 2 x embed_dim for
    ``"concat"``). The model must already be in eval mode on ``device``."""
    import torch

    from ..data.transforms import hflip, to_tensor

    if combine not in COMBINE_MODES:
        raise DataError(f"unknown combine mode {combine!r}; choose one of {COMBINE_MODES}")
    if device is None:
        device = next(iter(model.parameters())).device
    x = torch.stack([to_tensor(im) for im in images]).to(device)  # (B, 3, H, W)
    with torch.no_grad():
        f = model(x).float()  # (B, d)
        if combine != "none":
            g = model(hflip(x)).float()  # (B, d)
            f = torch.cat([f, g], dim=1) if combine == "concat" else f + g
    return f.cpu().numpy()


def _batches(n: int, batch_size: int) -> Iterator[range]:
    for i in range(0, n, batch_size):
        yield range(i, min(i + batch_size, n))


def _run(model: Any, n: int, get: Callable[[int], np.ndarray], name: Callable[[int], str], *, batch_size: int,
         combine: str, device: str, progress: bool, desc: str, num_workers: int) -> np.ndarray:
    """Shared loop: ``get(i)`` returns crop ``i`` (already fitted), ``name(i)`` what errors call it.
    Decoding runs in ``num_workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from ..utils.device import resolve_device

    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    model = model.eval().to(dev)
    out: list[np.ndarray] = []
    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
            for idx in _batches(n, batch_size):
                imgs = list(pool.map(get, idx)) if pool else [get(i) for i in idx]
                out.append(embed_images(model, np.stack(imgs), combine, dev))
                bar.update(len(idx))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if not out:
        raise DataError("no images to embed")
    feats = np.concatenate(out).astype(np.float32, copy=False)  # (N, E)
    bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
    if bad.size:
        raise DataError(f"the model produced NaN/Inf features for {bad.size} of {n} images, e.g. {name(bad[0])}")
    return feats


def _cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def image_stats(root: Path, paths: Sequence[str]) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of every image: what a feature cache key must change with."""
    items = []
    for p in paths:
        try:
            st = (root / p).stat()
        except FileNotFoundError:
            raise DataError(f"{root / p}: no such file") from None
        items.append([p, st.st_size, st.st_mtime_ns])
    return items


def _cache_file(model: Any, model_path: Any, paths: Sequence[str], root: Path, cache_dir: Any,
                options: dict[str, Any]) -> Path:
    items = image_stats(root, paths)
    key = _cache_key({"format": _CACHE_FORMAT, "model": model_fingerprint(model, model_path), "items": items,
                      "root": str(root.resolve()), **options})
    return Path(cache_dir) / f"{key}.npz"


def _read_cache(cache_file: Path, paths: Sequence[str]) -> np.ndarray | None:
    if not cache_file.is_file():
        return None
    try:
        table = load_features(cache_file)
    except DataError:  # damaged entry: recompute, and the atomic write replaces it
        return None
    return table.features if table.paths == list(paths) else None


def _write_cache(cache_file: Path, paths: Sequence[str], feats: np.ndarray, meta: dict[str, Any]) -> None:
    try:
        save_features(cache_file, paths, feats, meta)
    except CenterLossError as e:  # disk full, folder gone read-only: the features are still good
        warnings.warn(f"feature cache not written: {e}", Note, stacklevel=2)


def extract_features(
    model: Any,
    paths: Sequence[str],
    root: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    combine: str = "concat",
    input_size: tuple[int, int] | None = None,
    fit: str = "error",
    device: str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    model_path: str | os.PathLike[str] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Features ``(N, E)`` of the crops ``root / paths[i]``, in order (flip-concatenated by default).

    Args:
        model: maps (B, 3, H, W) normalised crops to (B, embed_dim).
        paths: image paths relative to ``root`` (``/``-separated).
        batch_size: crops per forward pass.
        combine: ``"concat"`` (paper), ``"sum"`` or ``"none"`` (no flip).
        input_size: (H, W) the model takes; default ``model.input_size`` if it has one, else (112, 96).
        fit: what to do with crops of another size, see :func:`fit_image`.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` ...
        cache_dir: reuse/store the result here (key described in the module docstring); it is checked to be
            writable before any image is embedded.
        model_path: the checkpoint file ``model`` came from (hashing it is cheaper than the state dict).
        num_workers: threads that decode images while the model runs (0: decode inline).
    """
    from ..utils.device import resolve_device

    root = Path(root)
    size = tuple(input_size or getattr(model, "input_size", None) or DEFAULT_INPUT_SIZE)
    if combine not in COMBINE_MODES:
        raise DataError(f"unknown combine mode {combine!r}; choose one of {COMBINE_MODES}")
    if fit not in FIT_MODES:
        raise DataError(f"unknown fit mode {fit!r}; choose one of {FIT_MODES}")
    cache_file = None
    if cache_dir is not None:
        options = {"combine": combine, "input_size": list(size), "fit": fit,
                   "device": resolve_device(device).type}
        cache_file = _cache_file(model, model_path, paths, root, cache_dir, options)
        cached = _read_cache(cache_file, paths)
        if cached is not None:
            return cached
        check_output_dir(cache_dir, "feature cache folder")

    def get(i: int) -> np.ndarray:
        src = root / paths[i]
        return fit_image(read_rgb(src), size, fit, name=str(src))  # type: ignore[arg-type]

    feats = _run(model, len(paths), get, lambda i: str(root / paths[i]), batch_size=batch_size, combine=combine,
                 device=device, progress=progress, desc="embedding", num_workers=num_workers)
    if cache_file is not None:
        _write_cache(cache_file, paths, feats, {"combine": combine, "input_size": list(size), "fit": fit})
    return feats


def extract_bin_features(
    model: Any,
    images: Sequence[bytes],
    *,
    batch_size: int = 64,
    combine: str = "concat",
    input_size: tuple[int, int] | None = None,
    fit: str = "center-crop",
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    source: str = ".bin set",
) -> np.ndarray:
    """Features ``(2P, E)`` of a ``.bin`` set's encoded images (:class:`protocols.BinSet.images`). InsightFace
    crops are 112x112; the default ``fit="center-crop"`` turns them into the paper's 112x96 template.
    ``source`` (the .bin file) and the image's index name a bad image in errors."""
    size = tuple(input_size or getattr(model, "input_size", None) or DEFAULT_INPUT_SIZE)

    def name(i: int) -> str:
        return f"{source} image {i} (pair {i // 2})"

    def get(i: int) -> np.ndarray:
        return fit_image(read_rgb(images[i], name=name(i)), size, fit, name=name(i))  # type: ignore[arg-type]

    return _run(model, len(images), get, name, batch_size=batch_size, combine=combine, device=device,
                progress=progress, desc="embedding .bin", num_workers=num_workers)
