"""A PNG grid of random aligned crops, to check alignment by eye (eyes level, faces centred).

Faint guide lines mark the template's eye row and mouth row and the vertical centre line, so a
misaligned crop stands out at a glance.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

from ..errors import ConfigError, DataError
from ..utils.atomic import atomic_path
from ..utils.images import decode_image
from .transform import template

__all__ = ["contact_sheet"]

_EXTS = {".jpg", ".jpeg", ".png"}


def contact_sheet(folder: str | os.PathLike[str], out: str | os.PathLike[str], rows: int = 8, cols: int = 12,
                  seed: int = 0, guides: bool = True, pad: int = 2, colors: int | None = None) -> Path:
    """Write a rows x cols grid of crops sampled (seeded) from ``folder`` (recursively) to PNG ``out``.

    All crops must share one size (an aligner output folder does). ``colors`` (2-256) stores a palette
    PNG, ~3-4x smaller, for sheets committed to the repository. Returns the output path.
    """
    if rows < 1 or cols < 1:
        raise ConfigError(f"grid must be at least 1x1, got {rows}x{cols}")
    if colors is not None and not 2 <= colors <= 256:
        raise ConfigError(f"colors must be in 2..256, got {colors}")
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"crop folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _EXTS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"no .jpg/.png crops under {root}")
    pick = random.Random(seed).sample(files, min(rows * cols, len(files)))
    crops = [decode_image(p)[0] for p in pick]
    h, w = crops[0].shape[:2]
    if any(c.shape[:2] != (h, w) for c in crops):
        raise DataError(f"crops under {root} differ in size; a contact sheet needs one size")
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    tpl = template((h, w))
    eye_y, mouth_y, cx = tpl[:2, 1].mean(), tpl[3:, 1].mean(), tpl[2, 0]
    for k, c in enumerate(crops):
        tile = Image.fromarray(c)
        if guides:  # half-transparent, so the features under the lines stay visible
            marked = tile.copy()
            d = ImageDraw.Draw(marked)
            for y in (eye_y, mouth_y):
                d.line([(0, round(y)), (w - 1, round(y))], fill=(0, 255, 0), width=1)
            d.line([(round(cx), 0), (round(cx), h - 1)], fill=(0, 255, 0), width=1)
            tile = Image.blend(tile, marked, 0.5)
        r, q = divmod(k, cols)
        sheet.paste(tile, (pad + q * (w + pad), pad + r * (h + pad)))
    out_p = Path(out)
    if colors is not None:
        sheet = sheet.quantize(colors, method=Image.Quantize.MEDIANCUT)
    with atomic_path(out_p) as tmp:
        sheet.save(tmp, "PNG", optimize=True)
    return out_p
