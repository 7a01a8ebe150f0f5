"""The one image decoder: files or encoded bytes -> uint8 RGB ``(H, W, 3)``, with one error type.

Training, evaluation, alignment, ``.bin`` sets, RecordIO and the face tools all decode through
:func:`decode_image`, so a crop gives the same pixels whichever command reads it. It is Pillow (no OpenCV:
OpenCV's thread pool does not survive a ``fork`` into DataLoader workers).

Face datasets scraped from the web hold grayscale, CMYK, palette, 16-bit and transparent images, and broken
files. Every decodable kind is converted to RGB (:func:`decode_image` returns a note saying what it
converted); anything else raises :class:`~centerloss.errors.DataError` naming the file and the problem:

* missing, empty, not an image, or a damaged header;
* truncated (Pillow refuses a JPEG cut short instead of filling it with grey, as libjpeg's warning would);
* a decompression bomb: more than ``MAX_PIXELS`` pixels (``Image.MAX_IMAGE_PIXELS``, ~89 Mpx) is refused
  before the pixels are decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .atomic import atomic_path

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "decode_image", "read_rgb", "write_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, str]:
    """PIL image of any mode -> (uint8 (H, W, 3), note on what was converted or "")."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8), ""
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


def _open(source: str | os.PathLike[str] | bytes, name: str) -> tuple[np.ndarray, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fp = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
            with Image.open(fp) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise DataError(f"{name}: {w}x{h} pixels is over the {MAX_PIXELS:,}-pixel limit "
                                    "(a decompression bomb?); refusing to decode it")
                im.load()  # decodes now, so truncation and corruption raise here
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except UnidentifiedImageError as e:
        raise DataError(f"{name}: not an image, or its header is damaged (no image format recognised)") from e
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(f"{name}: image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        kind = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise DataError(f"{name}: {kind} image ({msg})") from e


def decode_image(source: str | os.PathLike[str] | bytes, name: str | None = None) -> tuple[np.ndarray, str]:
    """Decode a file (path) or encoded bytes -> (uint8 RGB (H, W, 3), conversion note; "" for plain RGB).

    EXIF orientation is applied (landmarks then refer to the upright image, as viewers show it).
    Multi-frame files give their first frame. ``name`` is what error messages call the source (default:
    the path, or "image bytes").
    """
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "image bytes"
        if len(source) == 0:
            raise DataError(f"{label}: empty")
        rgb, note = _open(bytes(source), label)
    else:
        label = name or str(source)
        try:
            size = Path(source).stat().st_size
        except FileNotFoundError:
            raise DataError(f"{label}: no such file") from None
        except OSError as e:
            raise DataError(f"{label}: cannot read ({e.strerror or e})") from e
        if size == 0:
            raise DataError(f"{label}: empty file")
        rgb, note = _open(source, label)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DataError(f"{label}: decoded to an unusable array of shape {rgb.shape}")
    return np.ascontiguousarray(rgb), note


def read_rgb(source: str | os.PathLike[str] | bytes, name: str | None = None) -> np.ndarray:
    """:func:`decode_image` without the note: uint8 RGB (H, W, 3)."""
    return decode_image(source, name)[0]


def write_image(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> None:
    """Write a uint8 RGB array as JPEG or PNG (by suffix), atomically, creating folders."""
    p = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{p}: output must end in .jpg, .jpeg or .png")
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    with atomic_path(p, durable=False) as tmp:
        if fmt == "JPEG":
            img.save(tmp, fmt, quality=quality, subsampling=0)
        else:
            img.save(tmp, fmt, compress_level=1)
