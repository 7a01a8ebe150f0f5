"""Typed configs: a YAML preset supplies defaults, CLI flags override them, the resolved config is saved.

Each concern defines its own ``@dataclass``; this module only knows how to fill one from YAML and
``key=value`` overrides, and how to write it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")

#: Presets shipped with the package live here (``configs/<group>/<name>.yaml``).
PRESET_DIR = Path(__file__).resolve().parent / "configs"


def preset_path(group: str, name_or_path: str) -> Path:
    """Resolve ``name_or_path``: an existing YAML file, or the name of a shipped preset in ``group``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    cand = PRESET_DIR / group / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    have = sorted(x.stem for x in (PRESET_DIR / group).glob("*.yaml"))
    raise FileNotFoundError(f"no {group} preset {name_or_path!r}; shipped presets: {have}, or pass a .yaml path")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the dataclass field's declared type, with a clear error."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin is typing.Union or (origin is not None and str(origin) == "types.UnionType"):
        non_none = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        return _coerce(non_none[0], value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        inner = args[0] if args else Any
        out = [_coerce(inner, v, where) for v in value]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{where}: expected a boolean, got {value!r}")
        return bool(value)
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, str):
                return int(float(value)) if "e" in value.lower() else int(value)
            return tp(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "config") -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error, not silently ignored."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def parse_overrides(overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML); dicts pass through."""
    if isinstance(overrides, dict):
        return dict(overrides)
    pairs: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        pairs[k.strip()] = yaml.safe_load(v) if v.strip() else v
    return pairs


def apply_overrides(cfg: C, overrides: list[str] | dict[str, Any]) -> C:
    """Return a copy of ``cfg`` with ``key=value`` (dotted keys reach nested dataclasses) applied."""
    overrides = parse_overrides(overrides)
    d = dataclasses.asdict(cfg)  # type: ignore[call-overload]
    for key, value in overrides.items():
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise KeyError(f"override {key!r}: {p!r} is not a section")
            node = node[p]
        if parts[-1] not in node:
            raise KeyError(f"override {key!r}: unknown key; valid keys here: {sorted(node)}")
        node[parts[-1]] = value
    return from_dict(type(cfg), d)


def load(cls: type[C], path: str | os.PathLike[str] | None, overrides: list[str] | dict[str, Any] | None = None) -> C:
    """Defaults of ``cls`` <- YAML file ``path`` <- ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: a preset must be a YAML mapping, got {type(loaded).__name__}")
        data = loaded or {}
    cfg = from_dict(cls, data, where=str(path or cls.__name__))
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def save(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (human) next to a JSON twin is unnecessary; YAML is the record."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), encoding="utf-8")


def to_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)
