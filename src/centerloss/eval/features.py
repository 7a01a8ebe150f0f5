"""Feature extraction: the I/O layer that feeds the pure evaluation maths.

The paper's test feature (PAPER.md Sec. 4): the embedding of the aligned crop and of its horizontal flip,
concatenated (``combine="concat"``, 2 x embed_dim); ``"sum"`` adds them instead (embed_dim) and ``"none"``
skips the flip. Crops are uint8 RGB, normalised by :func:`centerloss.data.transforms.to_tensor`.

Extraction is batched, shows a progress bar, runs the model in eval mode under ``torch.no_grad`` and visits
images in the given order, so the same inputs give the same features. With ``cache_dir`` the result is
stored as ``<cache_dir>/<key>.npz``; the key hashes the model (file bytes, or the state dict of an in-memory
model), the image list (relative path, size and mtime of each file) and every option that changes the
numbers. Change any of them and the features are recomputed.

Features files (``FEATS.npz``) hold ``paths`` (relative, ``/``-separated, e.g. ``Name/Name_0001.jpg``),
``features`` (N, D) float32 and ``meta`` (a JSON string). They load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = [
    "COMBINE_MODES",
    "FIT_MODES",
    "FeatureTable",
    "decode_image",
    "embed_images",
    "extract_bin_features",
    "extract_features",
    "fit_image",
    "list_images",
    "load_features",
    "load_image",
    "model_fingerprint",
    "save_features",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
COMBINE_MODES = ("concat", "sum", "none")
FIT_MODES = ("error", "center-crop", "resize")
DEFAULT_INPUT_SIZE = (112, 96)  # (H, W), the paper's crop
_CACHE_FORMAT = 1


# ---------------------------------------------------------------- features files


@dataclass
class FeatureTable:
    """Rows of ``features`` belong to ``paths``."""

    paths: list[str]
    features: np.ndarray  # (N, D) float32
    meta: dict[str, Any] = field(default_factory=dict)

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


def save_features(path: str | os.PathLike[str], paths: Sequence[str], features: np.ndarray,
                  meta: dict[str, Any] | None = None) -> None:
    """Atomically write a features file (uncompressed ``.npz``: it loads in milliseconds)."""
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != len(paths):
        raise DataError(f"features must be (N, D) with N = {len(paths)}, got {feats.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, paths=np.array(list(paths), dtype=np.str_), features=feats,
             meta=np.array(json.dumps(meta or {}, sort_keys=True)))
    os.replace(tmp, path)


def load_features(path: str | os.PathLike[str]) -> FeatureTable:
    """Read and validate a features file (``paths``, ``features`` and optional ``meta``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"paths", "features"} <= keys:
                raise DataError(f"{path} must hold arrays 'paths' and 'features'; it has {sorted(keys)}")
            paths = z["paths"]
            feats = z["features"]
            meta = json.loads(str(z["meta"])) if "meta" in keys else {}
    except DataError:
        raise
    except Exception as e:  # zipfile/numpy raise many types for corrupt or pickled content
        raise DataError(f"cannot read features file {path}: {e}") from e
    if paths.ndim != 1 or paths.dtype.kind not in "US":
        raise DataError(f"{path}: 'paths' must be a 1-D array of strings, got {paths.dtype} {paths.shape}")
    if feats.ndim != 2 or feats.shape[0] != paths.shape[0]:
        raise DataError(f"{path}: 'features' must be (N, D) with N = {paths.shape[0]} paths, got {feats.shape}")
    if feats.dtype.kind != "f":
        raise DataError(f"{path}: 'features' must be floating point, got {feats.dtype}")
    if not np.all(np.isfinite(feats)):
        raise DataError(f"{path}: {int((~np.isfinite(feats)).any(1).sum())} feature rows contain NaN or inf")
    plist = [str(p) for p in paths.tolist()]
    if len(set(plist)) != len(plist):
        raise DataError(f"{path}: 'paths' contains duplicates")
    return FeatureTable(plist, np.ascontiguousarray(feats, dtype=np.float32), meta)


# ---------------------------------------------------------------- images


def list_images(root: str | os.PathLike[str]) -> list[str]:
    """Every image under ``root`` (recursively), as sorted ``/``-separated paths relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    out = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    if not out:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
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


def _to_rgb_array(im: Any, name: str) -> np.ndarray:
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{name}: decoded to shape {arr.shape}, expected (H, W, 3)")
    return arr


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return _to_rgb_array(im, str(path))
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot decode image {path}: {e}") from e


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes (JPEG/PNG, e.g. from a ``.bin``) as uint8 RGB (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _to_rgb_array(im, name)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot decode {name}: {e}") from e


# ---------------------------------------------------------------- model side


def model_fingerprint(model: Any = None, path: str | os.PathLike[str] | None = None) -> str:
    """sha256 of a model file's bytes, or of an in-memory model's class and state dict."""
    h = hashlib.sha256()
    if path is not None:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
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


def _resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def _run(model: Any, n: int, get: Callable[[int], np.ndarray], *, batch_size: int, combine: str, device: str,
         progress: bool, desc: str, num_workers: int) -> np.ndarray:
    """Shared loop: ``get(i)`` returns crop ``i`` (already fitted). Decoding runs in ``num_workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    dev = _resolve_device(device)
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
            pool.shutdown()
    if not out:
        raise DataError("no images to embed")
    return np.concatenate(out).astype(np.float32, copy=False)


def _cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


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
        cache_dir: reuse/store the result here (key described in the module docstring).
        model_path: the checkpoint file ``model`` came from (hashing it is cheaper than the state dict).
        num_workers: threads that decode images while the model runs (0: decode inline).
    """
    root = Path(root)
    size = tuple(input_size or getattr(model, "input_size", None) or DEFAULT_INPUT_SIZE)
    if combine not in COMBINE_MODES:
        raise DataError(f"unknown combine mode {combine!r}; choose one of {COMBINE_MODES}")
    if fit not in FIT_MODES:
        raise DataError(f"unknown fit mode {fit!r}; choose one of {FIT_MODES}")
    cache_file = None
    if cache_dir is not None:
        items = []
        for p in paths:
            try:
                st = (root / p).stat()
            except FileNotFoundError:
                raise DataError(f"image not found: {root / p}") from None
            items.append([p, st.st_size, st.st_mtime_ns])
        key = _cache_key({
            "format": _CACHE_FORMAT,
            "model": model_fingerprint(model, model_path),
            "items": items,
            "root": str(root.resolve()),
            "combine": combine,
            "input_size": list(size),
            "fit": fit,
            "device": _resolve_device(device).type,
        })
        cache_file = Path(cache_dir) / f"{key}.npz"
        if cache_file.is_file():
            table = load_features(cache_file)
            if table.paths == list(paths):
                return table.features

    def get(i: int) -> np.ndarray:
        return fit_image(load_image(root / paths[i]), size, fit, name=str(root / paths[i]))  # type: ignore[arg-type]

    feats = _run(model, len(paths), get, batch_size=batch_size, combine=combine, device=device,
                 progress=progress, desc="embedding", num_workers=num_workers)
    if cache_file is not None:
        save_features(cache_file, paths, feats, {"combine": combine, "input_size": list(size), "fit": fit})
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
) -> np.ndarray:
    """Features ``(2P, E)`` of a ``.bin`` set's encoded images (:class:`protocols.BinSet.images`). InsightFace
    crops are 112x112; the default ``fit="center-crop"`` turns them into the paper's 112x96 template."""
    size = tuple(input_size or getattr(model, "input_size", None) or DEFAULT_INPUT_SIZE)

    def get(i: int) -> np.ndarray:
        return fit_image(decode_image(images[i], f"image {i}"), size, fit, name=f".bin image {i}")  # type: ignore[arg-type]

    return _run(model, len(images), get, batch_size=batch_size, combine=combine, device=device,
                progress=progress, desc="embedding .bin", num_workers=num_workers)
