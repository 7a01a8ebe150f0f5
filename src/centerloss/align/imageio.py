"""Reading arbitrary image files as uint8 RGB, and writing crops atomically.

Face datasets scraped from the web contain grayscale, CMYK, palette, 16-bit and transparent images, and
broken files. :func:`read_rgb` converts every decodable kind to RGB and says what it converted; anything
it cannot decode raises :class:`~centerloss.errors.DataError` naming the file and the problem, so the batch
aligner can record it and move on.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

__all__ = ["read_rgb", "write_image"]


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, str]:
    """PIL image of any mode -> (uint8 (H, W, 3), note on what was converted or "")."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8), ""
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        # Composite over black: the same value warpAffine uses outside the image.
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), f"converted {mode} (alpha) -> RGB"
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grayscale
        a = np.asarray(im, dtype=np.float64)
        if a.size and np.nanmax(a) > 255:
            a = a * (255.0 / 65535.0)
        g = np.clip(np.nan_to_num(a) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2), f"converted {mode} -> RGB"
    return np.asarray(im.convert("RGB"), dtype=np.uint8), f"converted {mode} -> RGB"


def read_rgb(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """Decode an image file -> (uint8 RGB (H, W, 3), conversion note; "" for plain RGB).

    EXIF orientation is applied (points then refer to the upright image, as viewers show it). Multi-frame
    files give their first frame. Raises DataError for missing, empty, truncated, corrupt or non-image files.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise DataError(f"{p}: cannot stat ({e.strerror or e})") from e
    if size == 0:
        raise DataError(f"{p}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()  # decodes now, so truncation and corruption raise here
                im = ImageOps.exif_transpose(im)
                rgb, note = _to_rgb(im)
    except UnidentifiedImageError as e:
        raise DataError(f"{p}: not an image, or its header is damaged (no image format recognised)") from e
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(f"{p}: image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        kind = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise DataError(f"{p}: {kind} image ({msg})") from e
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DataError(f"{p}: decoded to an unusable array of shape {rgb.shape}")
    return np.ascontiguousarray(rgb), note


def write_image(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> None:
    """Write a uint8 RGB array as JPEG or PNG (by suffix), atomically (temp file + rename), creating folders."""
    p = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(f"{p}: output must end in .jpg, .jpeg or .png")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    try:
        if fmt == "JPEG":
            img.save(tmp, fmt, quality=quality, subsampling=0)
        else:
            img.save(tmp, fmt, compress_level=1)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
