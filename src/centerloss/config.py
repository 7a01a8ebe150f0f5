"""Typed configs: a YAML preset supplies values, ``--set key=value`` overrides them, the result is validated
once, when it is loaded, and saved with every run.

One mechanism serves every command (``train``, ``mnist``, ``lfw-experiment``):

* **Presets** are YAML files in ``configs/<group>/`` (or any ``.yaml`` path). A preset may start with
  ``base: <other preset>``: the other one is loaded first and this one is merged over it, section by
  section (a mapping merges key by key; anything else replaces).
* **Overrides** are ``key=value`` strings with dotted keys; the value is parsed as YAML (``lr=0.1``,
  ``milestones=[8,12]``, ``kwargs={width: 8}``). A dotted key reaches into nested sections and into free-form
  mappings such as ``model.kwargs.width=4``. Setting a key twice, or a key and a part of it
  (``model.kwargs={...}`` with ``model.kwargs.width=4``), is an error rather than a silent winner.
* **Validation** happens in :func:`from_dict`: unknown keys are errors, values are converted to the declared
  type, ``Literal[...]`` fields must hold one of their values, and a dataclass's ``__post_init__`` checks
  the rest (registry names, ranges) -- all before anything runs.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from .errors import ConfigError

C = TypeVar("C")

#: Presets shipped with the package live here (``configs/<group>/<name>.yaml``).
PRESET_DIR = Path(__file__).resolve().parent / "configs"


# ---------------------------------------------------------------- presets


def preset_path(group: str, name_or_path: str) -> Path:
    """Resolve ``name_or_path``: an existing YAML file, or the name of a shipped preset in ``group``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if p.is_file():
            return p
        raise ConfigError(f"preset file {p} not found")
    cand = PRESET_DIR / group / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    raise ConfigError(f"no {group} preset {name_or_path!r}; shipped: {preset_names(group)}, or pass a .yaml path")


def preset_names(group: str) -> list[str]:
    return sorted(x.stem for x in (PRESET_DIR / group).glob("*.yaml"))


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: nested mappings key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read preset {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a YAML mapping, got {type(data).__name__}")
    return data


def load_preset(group: str, name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset's mapping with its ``base:`` chain resolved (the base first, this preset merged over it)."""
    path = preset_path(group, name_or_path)
    if str(path.resolve()) in _seen:
        raise ConfigError(f"preset {path} includes itself through 'base'")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        data = merge(load_preset(group, str(base), (*_seen, str(path.resolve()))), data)
    return data


# ---------------------------------------------------------------- overrides


def parse_overrides(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML); dicts pass through.

    A key given twice, or a key together with one of its parts, is a :class:`ConfigError`.
    """
    if not items:
        return {}
    pairs: dict[str, Any] = {}
    if isinstance(items, dict):
        pairs = dict(items)
    else:
        for item in items:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value")
            k, v = (s.strip() for s in item.split("=", 1))
            if not k:
                raise ConfigError(f"override {item!r} has an empty key")
            if k in pairs:
                raise ConfigError(f"override {k!r} is given twice ({pairs[k]!r} and {v!r})")
            try:
                pairs[k] = yaml.safe_load(v) if v else v
            except yaml.YAMLError:
                raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
    keys = sorted(pairs)
    for a, b in zip(keys, keys[1:]):
        if b.startswith(a + "."):
            raise ConfigError(f"conflicting overrides: {a!r} and {b!r} both set {a!r}; give one of them")
    return pairs


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """A copy of the mapping ``data`` with the dotted ``overrides`` set (missing sections are created; the
    dataclass that reads the result rejects keys it does not know)."""
    out = merge({}, data)
    for key, value in parse_overrides(overrides).items():
        node = out
        parts = key.split(".")
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


# ---------------------------------------------------------------- typed loading


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union or isinstance(tp, types.UnionType)


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(value, (dict, list, tuple, bool)) and tp in (int, float, str):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    try:
        if tp is int:
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
        return tp(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the declared type ``tp``, or raise a :class:`ConfigError` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if _is_union(tp):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: a value is required")
        return coerce(next(a for a in args if a is not type(None)), value, where)
    if value is None:
        raise ConfigError(f"{where}: a value is required")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        out = [coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {k: coerce(inner, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if tp in (int, float, str, bool):
        return _coerce_scalar(tp, value, where)
    return value


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "config") -> C:
    """Build dataclass ``cls`` from a mapping: unknown keys are errors, values are coerced and checked."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a section (mapping), got {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    kwargs = {k: coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def load(cls: type[C], group: str, preset: str | None, overrides: list[str] | dict[str, Any] | None = None,
         extra: dict[str, Any] | None = None) -> C:
    """Defaults of ``cls`` <- preset (with its ``base:`` chain) <- ``overrides`` <- ``extra`` (explicit flags)."""
    data = load_preset(group, preset) if preset else {}
    data = apply_overrides(data, overrides)
    if extra:
        data = apply_overrides(data, extra)
    return from_dict(cls, data, where=f"{group} preset {preset}" if preset else cls.__name__)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically: it is the run's record of what was asked."""
    from .utils.atomic import write_text

    write_text(path, to_yaml(cfg))
