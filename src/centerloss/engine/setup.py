"""Building a run's data and network from the config, and finding the checkpoint to resume."""

from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from . import checkpoint as ck
from .config import TrainConfig


def _read_names(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read identity list {path}: {e}") from e


def build_dataset(cfg: TrainConfig) -> Dataset:
    """The training set described by ``cfg.data`` (identity folder or RecordIO)."""
    from ..data.identity_folder import IdentityFolderDataset, index_from_file_list, index_identity_folder

    d = cfg.data
    hw = tuple(d.input_size)
    if not d.root:
        raise ConfigError("data.root is not set: pass --data DIR (an identity folder of aligned crops) or a .rec file")
    if d.kind == "recordio":
        from ..data.recordio import RecordIODataset

        return RecordIODataset(d.root, flip=d.flip, seed=cfg.runtime.seed, expected_hw=hw)
    keep, drop = _read_names(d.identities), _read_names(d.exclude_identities)
    if d.file_list:
        files = _read_names(d.file_list) or []
        keep_s, drop_s = set(keep or []), set(drop or [])
        files = [f for f in files if (keep is None or f.split("/")[0] in keep_s) and f.split("/")[0] not in drop_s]
        index = index_from_file_list(d.root, files, min_images=d.min_images)
    else:
        index = index_identity_folder(d.root, min_images=d.min_images, identities=keep, exclude=drop,
                                      on_empty=d.on_empty, cache=d.index_cache)
    return IdentityFolderDataset(index, flip=d.flip, seed=cfg.runtime.seed, expected_hw=hw)


def build_network(cfg: TrainConfig) -> nn.Module:
    """The configured network; every registered network exposes ``embed_dim`` (its feature width)."""
    from ..models import create_model

    try:
        net = create_model(cfg.model.name, **cfg.model.kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model {cfg.model.name!r} with kwargs {cfg.model.kwargs}: {e}") from None
    if not isinstance(getattr(net, "embed_dim", None), int):
        raise ConfigError(f"model {cfg.model.name!r} does not state its feature width as an int `embed_dim`")
    return net


def find_resume(resume: str | None, out_dir: Path, ckpt_dir: Path) -> ck.Checkpoint | None:
    """The checkpoint to resume from, or None for a fresh run.

    Without ``--resume`` a folder that already holds checkpoints is refused (nothing is overwritten).
    ``--resume auto`` resumes the latest checkpoint; on a folder that shows checkpoints were written but none
    is usable (deleted state.json, corrupt files) it refuses, instead of silently restarting from step 0.
    """
    if resume in (None, "", "none"):
        if ck.has_checkpoint_traces(ckpt_dir):
            raise DataError(f"{out_dir} already holds checkpoints; pass --resume auto to continue that run, or "
                            "choose another --out folder")
        return None
    if resume == "auto":
        p = ck.latest_checkpoint(ckpt_dir)
        if p is None:
            if ck.has_checkpoint_traces(ckpt_dir):
                raise DataError(f"--resume auto: {ckpt_dir} holds checkpoint folders but none is complete "
                                "(state.json missing); refusing to restart from step 0. Point --resume at a good "
                                "checkpoint, or use a new --out")
            return None
        return ck.read_checkpoint(p)
    return ck.read_checkpoint(resume)


def no_buffer_sync() -> dict[str, bool]:
    """DDP kwargs that stop the per-forward buffer broadcast (the centers sync themselves). Newer PyTorch
    renamed ``broadcast_buffers`` to ``forward_sync_buffers``; both still sync once at construction, which is
    harmless (every rank builds identical centers)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
