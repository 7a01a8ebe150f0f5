"""Save and load networks as safetensors files that carry their own recipe.

The file's metadata holds the registry name and constructor kwargs (and anything else you pass, e.g. a
label map), so ``load_model(path)`` rebuilds the network without unpickling anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import DataError
from . import create_model

_MODEL_KEY = "centerloss.model"
_KWARGS_KEY = "centerloss.model_kwargs"


def save_model(path: str | os.PathLike[str], model: nn.Module, name: str, kwargs: dict[str, Any],
               extra: dict[str, Any] | None = None) -> None:
    """Atomically write ``model``'s state dict with its recipe (``name``, ``kwargs``) and JSON ``extra``."""
    meta = {_MODEL_KEY: name, _KWARGS_KEY: json.dumps(kwargs)}
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON-decoded metadata of a model file written by :func:`save_model`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise DataError(f"{path} is not a safetensors model file ({e})") from e
    if _MODEL_KEY not in raw:
        raise DataError(f"{path} has no centerloss model recipe in its metadata; was it written by save_model?")
    out: dict[str, Any] = {"model": raw[_MODEL_KEY], "model_kwargs": json.loads(raw[_KWARGS_KEY])}
    for k, v in raw.items():
        if k not in (_MODEL_KEY, _KWARGS_KEY):
            out[k] = json.loads(v)
    return out


def load_model(path: str | os.PathLike[str], map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved at ``path``; returns ``(model in eval mode, metadata)``."""
    meta = read_metadata(path)
    model = create_model(meta["model"], **meta["model_kwargs"])
    state = load_file(str(path), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{path}: weights do not match {meta['model']}: missing {missing}, unexpected {unexpected}")
    return model.eval(), meta
