"""Atomic, pickle-free, verified training checkpoints, also for heads sharded over ranks.

A checkpoint is a folder ``<run>/checkpoints/step_XXXXXXXX/`` holding

* ``model.safetensors``     the network, written by :func:`centerloss.models.io.save_model` (its recipe and the
                            label map are in the metadata), so ``load_model(ckpt / "model.safetensors")`` works;
* ``objective.safetensors`` the replicated part of the objective (classifier, centers);
* ``optimizer.safetensors`` the optimizer's tensors (momentum buffers) of replicated parameters, keyed by
                            parameter name; hyper-parameters go to JSON;
* ``shard_rank<r>.safetensors``  (sharded heads only) rank r's rows of the sharded classifier and centers and
                            their optimizer state, with its class range in ``state.json``;
* ``state.json``            config, label map, step/epoch, sampler position, every rank's RNG states, the AMP
                            scaler, the open metrics window, and the **sha256 of every file above**.

It is written into a hidden temporary folder and moved into place with ``os.replace`` (atomic on POSIX),
then ``checkpoints/latest`` is pointed at it. A crash at any moment leaves either the previous checkpoint or
the new one, never half of one. On resume every file's hash is checked, so flipped bytes in a centers table
are refused instead of resumed silently. Nothing is unpickled: tensors come from safetensors, the rest
from JSON. A sharded checkpoint re-shards on resume onto a different world size: each rank reads only the
rows of its new class range from the old shards (``safe_open(...).get_slice``).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import DataError
from ..models.io import save_model
from ..utils.atomic import atomic_path, fsync_dir, write_json, write_text
from ..utils.digest import file_digest
from .distributed import DistInfo, barrier

FORMAT = 2
_STEP_RE = re.compile(r"^step_(\d{8,})$")


# ---------------------------------------------------------------- RNG states (JSON-able)


def rng_state() -> dict[str, Any]:
    """This process's RNG states: torch CPU and CUDA, numpy's global generator and Python's ``random``."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch_cpu"])), dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "torch_cuda" in state and torch.cuda.is_available():
        states = [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["torch_cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ---------------------------------------------------------------- tensors <-> files


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def is_sharded_key(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether state-dict ``key`` lies under one of ``prefixes`` ("" is the root: every key)."""
    return any(p == "" or key == p or key.startswith(p + ".") for p in prefixes)


def sharded_prefixes(objective: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the objective's modules marked ``sharded = True``."""
    return tuple(n for n, m in objective.named_modules() if getattr(m, "sharded", False))


def optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's per-parameter state keyed ``"<param name>::<key>"``, plus a JSON-ready remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                key = f"{names[id(p)]}::{k}"
                if torch.is_tensor(v):
                    tensors[key] = v
                else:
                    scalars[key] = v
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, names: dict[int, str], tensors: dict[str, torch.Tensor],
                   meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_tensors` (state matched to parameters by name)."""
    if len(meta["param_groups"]) != len(opt.param_groups):
        raise DataError(f"the checkpoint's optimizer has {len(meta['param_groups'])} parameter groups, the "
                        f"configured one {len(opt.param_groups)}")
    by_name = {names[id(p)]: p for g in opt.param_groups for p in g["params"]}
    state: dict[torch.Tensor, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pname, k = key.split("::", 1)
        if pname not in by_name:
            raise DataError(f"the checkpoint's optimizer holds state for {pname!r}, which this run lacks")
        p = by_name[pname]
        if torch.is_tensor(v) and v.shape == p.shape:  # momentum & co: the parameter's memory format
            v = torch.empty_like(p).copy_(v)  # (a contiguous buffer beside a channels_last weight would make
        elif torch.is_tensor(v):  # the fused kernel pair up the wrong elements)
            v = v.to(p.device)
        state.setdefault(p, {})[k] = v
    for g, saved in zip(opt.param_groups, meta["param_groups"]):
        g.update({k: v for k, v in saved.items() if k != "params"})
    opt.state.clear()
    opt.state.update(state)


# ---------------------------------------------------------------- save


@dataclass
class Parts:
    """What a checkpoint holds besides the JSON state."""

    net: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    param_names: dict[int, str]  # id(parameter) -> "net.x" / "objective.y"


def _split(parts: Parts) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor],
                                  dict[str, torch.Tensor]]:
    """(replicated objective, sharded objective, replicated optimizer, sharded optimizer) tensors."""
    pref = sharded_prefixes(parts.objective)
    obj = parts.objective.state_dict()
    rep_o = {k: v for k, v in obj.items() if not is_sharded_key(k, pref)}
    sh_o = {k: v for k, v in obj.items() if is_sharded_key(k, pref)}
    opt, _ = optimizer_tensors(parts.optimizer, parts.param_names)
    sh_pref = tuple(f"objective.{p}" if p else "objective" for p in pref)
    rep_m = {k: v for k, v in opt.items() if not is_sharded_key(k.split("::")[0], sh_pref)}
    sh_m = {k: v for k, v in opt.items() if is_sharded_key(k.split("::")[0], sh_pref)}
    return rep_o, sh_o, rep_m, sh_m


def save_checkpoint(ckpt_root: str | os.PathLike[str], step: int, parts: Parts, state: dict[str, Any],
                    info: DistInfo, keep_last: int = 2, class_ranges: list[list[int]] | None = None) -> Path:
    """Write checkpoint ``step`` atomically (collective: every rank calls it), point ``latest`` at it and delete
    all but the ``keep_last`` newest. Sharded rows are written by their owner into the same folder, so a
    sharded run needs a file system all ranks share (as for any multi-rank checkpoint)."""
    root = Path(ckpt_root)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}"
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(info)
    try:
        _write_parts(tmp, step, parts, state, info, class_ranges)
        if info.is_main:
            _publish(tmp, final, root, keep_last)
    except BaseException:  # disk full, Ctrl-C: no half-written folder stays behind
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier(info)
    return final


def _write_parts(tmp: Path, step: int, parts: Parts, state: dict[str, Any], info: DistInfo,
                 class_ranges: list[list[int]] | None) -> None:
    """Every rank writes its shard (if any); rank 0 the replicated tensors, then the hashes and state.json."""
    rep_o, sh_o, rep_m, sh_m = _split(parts)
    if sh_o or sh_m:
        _save_tensors(tmp / f"shard_rank{info.rank}.safetensors",
                      {**{f"objective::{k}": v for k, v in sh_o.items()}, **{f"optimizer::{k}": v for k, v in sh_m.items()}})
    if info.is_main:
        save_model(tmp / "model.safetensors", parts.net, parts.model_name, parts.model_kwargs,
                   {"classes": state.get("classes", []), "step": step})
        _save_tensors(tmp / "objective.safetensors", rep_o)
        _save_tensors(tmp / "optimizer.safetensors", rep_m)
    barrier(info)
    if info.is_main:
        _, opt_meta = optimizer_tensors(parts.optimizer, parts.param_names)
        files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.suffix == ".safetensors"}
        shards = {"world_size": info.world_size, "class_ranges": class_ranges} if (sh_o or sh_m) else None
        write_json(tmp / "state.json", {"format": FORMAT, "step": step, **state, "optimizer": opt_meta,
                                        "files": files, "shards": shards}, indent=None)


def _publish(tmp: Path, final: Path, root: Path, keep_last: int) -> None:
    """Rename the finished folder into place, point ``latest`` at it, prune old checkpoints."""
    fsync_dir(tmp)
    trash = root / f".old-{final.name}"
    if final.exists():  # the same step saved again: swap, so that one complete version exists at any moment
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_dir(root)
    shutil.rmtree(trash, ignore_errors=True)
    write_text(root / "latest", final.name + "\n")
    if keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- find and verify


def list_checkpoints(ckpt_root: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint folders (with a state.json) under ``ckpt_root``, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_RE.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def has_checkpoint_traces(ckpt_root: str | os.PathLike[str]) -> bool:
    """Whether ``ckpt_root`` shows that checkpoints were written (even if none is usable any more)."""
    root = Path(ckpt_root)
    return root.is_dir() and any(_STEP_RE.match(p.name) or p.name == "latest" for p in root.iterdir())


def latest_checkpoint(ckpt_root: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``latest`` points to (falling back to the newest complete one), or None."""
    root = Path(ckpt_root)
    ptr = root / "latest"
    if ptr.is_file():
        cand = root / ptr.read_text(encoding="utf-8").strip()
        if (cand / "state.json").is_file():
            return cand
    found = list_checkpoints(root)
    return found[-1] if found else None


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_checkpoint(path: str | os.PathLike[str], verify: bool = True) -> Checkpoint:
    """Open a checkpoint folder (or the run / ``checkpoints`` folder holding one: its latest) and check the
    sha256 of every tensor file it lists; any mismatch or missing file is a :class:`DataError`."""
    p = Path(path)
    if not (p / "state.json").is_file():
        for root in (p, p / "checkpoints"):
            cand = latest_checkpoint(root)
            if cand is not None:
                p = cand
                break
        else:
            raise DataError(f"no checkpoint found at {path} (expected a folder with state.json)")
    try:
        state = json.loads((p / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {p / 'state.json'}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else None
        raise DataError(f"{p}: unsupported checkpoint format {got!r} (expected {FORMAT})")
    for name, digest in state.get("files", {}).items():
        f = p / name
        if not f.is_file():
            raise DataError(f"checkpoint {p} is incomplete: {name} is missing")
        if verify and sha256_file(f) != digest:
            raise DataError(f"checkpoint file {f} is corrupt (its sha256 differs from the one recorded when it "
                            "was written); resume from an older checkpoint with --resume <folder>")
    return Checkpoint(p, state)


# ---------------------------------------------------------------- restore


def _load(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise DataError(f"checkpoint file {path} is unreadable ({e}); resume from an older one") from e


def _rows(ckpt: Checkpoint, key: str, lo: int, hi: int, device: torch.device) -> torch.Tensor:
    """Rows [lo, hi) of a sharded tensor, read from whichever old shards hold them."""
    ranges = ckpt.state["shards"]["class_ranges"]
    pieces = []
    for r, (a, b) in enumerate(ranges):
        s, e = max(a, lo), min(b, hi)
        if s >= e:
            continue
        with safe_open(str(ckpt.path / f"shard_rank{r}.safetensors"), framework="pt", device=str(device)) as f:
            pieces.append(f.get_slice(key)[s - a: e - a])
    return torch.cat(pieces)


def _sharded_tensors(ckpt: Checkpoint, lo: int, hi: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's sharded tensors: its own shard file on the same world size, else re-sharded rows."""
    sh = ckpt.state.get("shards")
    if not sh:
        return {}
    ranges = sh["class_ranges"]
    if rank < len(ranges) and ranges[rank] == [lo, hi]:
        return _load(ckpt.path / f"shard_rank{rank}.safetensors", device)
    with safe_open(str(ckpt.path / "shard_rank0.safetensors"), framework="pt", device=str(device)) as f:
        keys = {k: f.get_slice(k).get_shape() for k in f.keys()}
    out = {}
    for key, shape in keys.items():
        if len(shape) == 0:  # a scalar (e.g. the sampling step): the same on every rank
            out[key] = _load(ckpt.path / "shard_rank0.safetensors", device)[key]
        else:
            out[key] = _rows(ckpt, key, lo, hi, device)
    return out


def restore(ckpt: Checkpoint, parts: Parts, device: torch.device, rank: int = 0,
            class_range: tuple[int, int] | None = None) -> None:
    """Load a checkpoint's tensors into already-built modules and optimizer (strict: every key must match)."""
    p = ckpt.path
    sharded = _sharded_tensors(ckpt, *(class_range or (0, 0)), rank, device) if class_range else {}
    obj = {**_load(p / "objective.safetensors", device),
           **{k.split("::", 1)[1]: v for k, v in sharded.items() if k.startswith("objective::")}}
    for module, sd, name in ((parts.net, _load(p / "model.safetensors", device), "model.safetensors"),
                             (parts.objective, obj, "objective.safetensors")):
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise DataError(f"{p / name} does not fit the configured {type(module).__name__}: missing {missing}, "
                            f"unexpected {unexpected}")
    opt = {**_load(p / "optimizer.safetensors", device),
           **{k.split("::", 1)[1]: v for k, v in sharded.items() if k.startswith("optimizer::")}}
    load_optimizer(parts.optimizer, parts.param_names, opt, ckpt.state["optimizer"])
