"""Atomic, pickle-free training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step_XXXXXXXX/`` holding

* ``model.safetensors``     the network, written by :func:`centerloss.models.io.save_model` (its recipe and the
                            label map are in the metadata), so ``load_model(ckpt / "model.safetensors")`` works;
* ``objective.safetensors`` the classifier and the centers (``JointLoss.state_dict()``);
* ``optimizer.safetensors`` the optimizer's tensors (momentum buffers); its hyper-parameters go to JSON;
* ``state.json``            config, label map, step/epoch, sampler position, every rank's RNG states, the AMP
                            scaler and the open log window.

It is written into a hidden temporary folder and moved into place with ``os.replace`` (atomic on POSIX),
then ``checkpoints/latest`` (a one-line text file, itself replaced atomically) is pointed at it. A crash at
any moment leaves either the previous checkpoint or the new one, never half of one. Nothing is unpickled
on load: tensors come from safetensors and everything else from JSON.
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
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import DataError
from ..models.io import save_model

FORMAT = 1
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


# ---------------------------------------------------------------- optimizer state <-> (tensors, JSON)


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into safetensors-ready tensors and a JSON-ready remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---------------------------------------------------------------- save / load


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move folder ``tmp`` to ``final`` atomically; an existing ``final`` (same step re-saved) is swapped out."""
    if final.exists():
        trash = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(ckpt_root: str | os.PathLike[str], step: int, *, net: nn.Module, model_name: str,
                    model_kwargs: dict[str, Any], objective: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep_last: int = 2) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it and delete all but the ``keep_last`` newest."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(tmp / "model.safetensors", net, model_name, model_kwargs,
               {"classes": state.get("classes", []), "step": step})
    obj_state = {k: v.detach().contiguous().cpu() for k, v in objective.state_dict().items()}
    save_file(obj_state, str(tmp / "objective.safetensors"))
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    full = {"format": FORMAT, "step": step, **state, "optimizer": opt_meta}
    (tmp / "state.json").write_text(json.dumps(full), encoding="utf-8")
    for f in tmp.iterdir():  # file contents reach the disk before the rename publishes them
        _fsync_file(f)
    _fsync_dir(tmp)
    _replace_dir(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / "latest", final.name + "\n")
    if keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under ``ckpt_root``, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_RE.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))  # type: ignore[union-attr]


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


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a checkpoint folder (or the ``checkpoints`` folder / run folder holding one: its latest)."""
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
    if state.get("format") != FORMAT:
        raise DataError(f"{p}: unsupported checkpoint format {state.get('format')!r} (expected {FORMAT})")
    for f in ("model.safetensors", "objective.safetensors", "optimizer.safetensors"):
        if not (p / f).is_file():
            raise DataError(f"checkpoint {p} is incomplete: {f} is missing")
    return Checkpoint(p, state)


def restore(ckpt: Checkpoint, *, net: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device) -> None:
    """Load a checkpoint's tensors into already-built modules and optimizer (strict: every key must match)."""
    p = ckpt.path

    def _load(fname: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(p / fname), device=str(device))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise DataError(f"checkpoint file {p / fname} is unreadable ({e}); resume from an older one") from e

    for module, fname in ((net, "model.safetensors"), (objective, "objective.safetensors")):
        sd = _load(fname)
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise DataError(f"{p / fname} does not fit the configured {type(module).__name__}: missing {missing}, "
                            f"unexpected {unexpected}")
    tensors = _load("optimizer.safetensors")
    optimizer_from_flat(optimizer, tensors, ckpt.state["optimizer"])
