"""Save and load networks as safetensors files that carry their own recipe.

The file's metadata holds the registry name and constructor kwargs (and anything else you pass, e.g. a
label map), so ``load_model(path)`` rebuilds the network without unpickling anything.

A model file is input like any other: :func:`load_model` refuses, with a :class:`~centerloss.errors.DataError`
naming the file and the problem, a file that is not safetensors or is truncated, recipe metadata that is not
JSON, an unknown model name, constructor kwargs the network does not take or cannot be built with, weights
whose names or shapes do not match the recipe, and NaN/Inf weights (a diverged run's last save).
:func:`save_model` writes through :func:`centerloss.utils.atomic.atomic_path`: the file is complete or absent.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from numbers import Number
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import DataError
from ..utils.atomic import atomic_path
from . import MODELS

__all__ = ["load_model", "read_metadata", "save_model"]

_MODEL_KEY = "centerloss.model"
_KWARGS_KEY = "centerloss.model_kwargs"


def save_model(path: str | os.PathLike[str], model: nn.Module, name: str, kwargs: dict[str, Any],
               extra: dict[str, Any] | None = None) -> None:
    """Atomically write ``model``'s state dict with its recipe (``name``, ``kwargs``) and JSON ``extra``."""
    from safetensors.torch import save_file

    meta = {_MODEL_KEY: name, _KWARGS_KEY: json.dumps(kwargs)}
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        try:
            save_file(state, str(tmp), metadata=meta)
        except Exception as e:  # safetensors reports a failed write as SafetensorError("... (os error N)")
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(tmp)) from e


def _json_field(path: Path, key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{path}: metadata {key!r} is not JSON ({e}): {text[:80]!r}") from None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON-decoded metadata of a model file written by :func:`save_model`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error type for malformed or cut-short headers
        raise DataError(f"{path} is not a safetensors model file, or it is truncated ({e})") from e
    if _MODEL_KEY not in raw or _KWARGS_KEY not in raw:
        raise DataError(f"{path} has no centerloss model recipe in its metadata; was it written by save_model?")
    kwargs = _json_field(path, _KWARGS_KEY, raw[_KWARGS_KEY])
    if not isinstance(kwargs, dict):
        raise DataError(f"{path}: metadata {_KWARGS_KEY!r} must be a JSON object of constructor arguments, "
                        f"got {type(kwargs).__name__}")
    out: dict[str, Any] = {"model": raw[_MODEL_KEY], "model_kwargs": kwargs}
    for k, v in raw.items():
        if k not in (_MODEL_KEY, _KWARGS_KEY):
            out[k] = _json_field(path, k, v)
    return out


def _negative(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, Number):
        return value < 0  # type: ignore[operator]
    if isinstance(value, list | tuple):
        return any(_negative(v) for v in value)
    return False


def _build(path: Path, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The network of the recipe; every way the recipe can be wrong is a DataError naming the file."""
    if name not in MODELS:
        raise DataError(f"{path}: unknown model {name!r} in its recipe; known models: {', '.join(MODELS.names())}")
    factory = MODELS.get(name)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise DataError(f"{path}: the recipe's constructor arguments do not fit {name} ({e}); it takes "
                        f"{', '.join(params) or 'none'}") from None
    except ValueError:  # pragma: no cover - a factory without a signature: let the call decide
        pass
    try:
        return factory(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        bad = [k for k, v in kwargs.items() if _negative(v)]
        hint = f"; {', '.join(f'{k}={kwargs[k]!r}' for k in bad)} is negative" if bad else ""
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise DataError(f"{path}: cannot build {name}({args}) from its recipe: {e}{hint}") from None


def _check_weights(path: Path, name: str, model: nn.Module, state: dict[str, Any]) -> None:
    """Names, shapes and finiteness of the file's tensors against the network the recipe builds."""
    import torch

    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        raise DataError(f"{path}: weights do not match {name}: {len(missing)} missing (e.g. {missing[:3]}), "
                        f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for k, t in want.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise DataError(f"{path}: weight {k} has shape {tuple(state[k].shape)} in the file but {name} built "
                            f"from its recipe expects {tuple(t.shape)}")
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise DataError(f"{path}: model weights contain NaN/Inf: {bad[0]}{more}")


def load_model(path: str | os.PathLike[str], map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved at ``path``; returns ``(model in eval mode, metadata)``."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    model = _build(path, meta["model"], meta["model_kwargs"])
    try:
        state = load_file(str(path), device=map_location)
    except Exception as e:  # SafetensorError: data section damaged although the header parsed
        raise DataError(f"{path}: cannot read the weights ({e})") from e
    _check_weights(path, meta["model"], model, state)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta
