"""The training run's typed config. A YAML preset (``configs/face/*.yaml``) supplies values, ``key=value``
overrides and CLI flags change them, and the resolved config is written into the run folder.

A preset may start with ``base: <other preset>``: the other preset is loaded first and this one's sections
are merged over it, so model A/B/C presets differ only in their ``loss`` section.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import config as cfgmod


@dataclass
class ModelConfig:
    name: str = "face_small"  # a centerloss.models registry name
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments (saved with the weights)


@dataclass
class DataConfig:
    kind: str = "folder"  # "folder" (root/<identity>/<image>) or "recordio" (InsightFace train.rec + .idx)
    root: str = ""  # the identity folder, or the .rec file
    min_images: int = 2  # folder: drop identities with fewer images
    file_list: str | None = None  # folder: text file of '<identity>/<image>' paths to use instead of a scan
    identities: str | None = None  # folder: text file, one identity per line, to train on (None: all)
    exclude_identities: str | None = None  # folder: text file of identities never to train on
    index_cache: str | None = None  # folder: JSON listing cache (rescans only changed identity folders)
    on_empty: str = "error"  # folder: "error" or "skip" for identity folders without images
    input_size: list[int] = field(default_factory=lambda: [112, 96])  # (H, W) crops must already have
    flip: bool = True  # random horizontal flip, the paper's only augmentation
    batch_size: int = 256  # GLOBAL batch: split evenly over the ranks of a DDP run
    workers: int = 2  # DataLoader worker processes per rank


@dataclass
class LossConfig:
    type: str = "softmax"  # "softmax" (model A), "contrastive" (B) or "center" (C)
    lam: float = 0.003  # lambda of Eq. 5 (paper's model C: 0.003)
    alpha: float = 0.5  # Eq. 4 center rate (paper: 0.5)
    center_update: str = "paper"  # "paper" (Eq. 4 buffer) or "learnable" (an SGD-trained parameter)
    center_reduction: str = "mean"  # "mean" (caffe-face, batch-averaged) or "sum" (Eq. 2 as printed)
    margin: float = 1.0  # contrastive margin (model B), on the raw features
    contrastive_reduction: str = "balanced"  # "balanced" (mean of positive + mean of negative pairs), "mean", "sum"
    classifier_bias: bool = True


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_mult: float = 2.0  # caffe-face: biases learn at 2x with no weight decay
    bias_weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [16000, 24000])  # lr *= gamma at these
    milestone_unit: str = "step"  # "step" or "epoch"
    gamma: float = 0.1
    warmup_steps: int = 0  # linear warm-up of the lr over the first N steps (0: none, as in the paper)
    max_steps: int = 28000  # optimizer steps; ignored when epochs > 0
    epochs: int = 0  # train for this many epochs instead (0: use max_steps)
    grad_clip: float = 0.0  # max global grad norm (0: off)


@dataclass
class RuntimeConfig:
    out_dir: str = "runs/train"
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    amp: str = "none"  # "none", "bf16" or "fp16" (autocast; fp16 adds a GradScaler); GPU only
    channels_last: bool = False
    seed: int = 0  # weights init, data order and flips are pure functions of it (and the epoch)
    deterministic: bool = True  # torch.use_deterministic_algorithms: needed for bit-exact resume on GPU
    ckpt_every: int = 500  # steps between checkpoints (a checkpoint is also written at the end)
    keep_last: int = 2  # checkpoints kept (older ones are deleted)
    log_every: int = 20  # steps between CSV/TensorBoard rows
    tensorboard: bool = True  # write TensorBoard events if the package is installed
    progress: bool = True  # tqdm bar (rank 0)
    resume: str | None = None  # None, "auto" (latest checkpoint in out_dir if any) or a checkpoint folder
    threads: int = 0  # torch intra-op threads on CPU (0: leave PyTorch's default)


@dataclass
class VerifyConfig:
    pairs: str | None = None  # LFW-style pairs.txt checked during training (None: off)
    root: str | None = None  # folder of aligned crops the pairs name
    folds: list[int] | None = None  # 0-based folds to use (None: all)
    every: int = 0  # steps between checks (0: only at the end)
    pca_dim: int | None = None
    subfolds: int = 10  # when only one fold is used (see centerloss.eval.verification)
    batch_size: int = 128


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)


#: Sections/keys that may differ between a checkpoint and the run that resumes it (they do not change results).
RESUME_FREE_KEYS = {"data.workers", "data.index_cache", "runtime.out_dir", "runtime.resume", "runtime.progress",
                    "runtime.tensorboard", "runtime.log_every", "runtime.ckpt_every", "runtime.keep_last",
                    "runtime.threads", "optim.max_steps", "optim.epochs", "verify.every", "data.root"}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs" else v
    return out


def _read_preset(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = cfgmod.preset_path("face", name_or_path)
    if str(path) in seen:
        raise ValueError(f"preset {path} includes itself through 'base'")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset must be a YAML mapping")
    base = data.pop("base", None)
    if base is not None:
        data = _merge(_read_preset(str(base), (*seen, str(path))), data)
    return data


def load_train_config(preset: str | None, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- preset (shipped name like ``lfw_cpu_C`` or a .yaml path, with ``base:`` chains) <- overrides."""
    data = _read_preset(preset) if preset else {}
    cfg = cfgmod.from_dict(TrainConfig, data, where=str(preset or "TrainConfig"))
    if overrides:
        cfg = apply(cfg, overrides)
    return cfg


def apply(cfg: TrainConfig, overrides: list[str] | dict[str, Any]) -> TrainConfig:
    """``key=value`` overrides; ``model.kwargs.<name>=value`` may add constructor arguments."""
    overrides = cfgmod.parse_overrides(overrides)
    rest = {}
    kwargs = dict(cfg.model.kwargs)
    for k, v in overrides.items():
        if k.startswith("model.kwargs."):
            kwargs[k[len("model.kwargs."):]] = v
        else:
            rest[k] = v
    if kwargs != cfg.model.kwargs:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, kwargs=kwargs))
    return cfgmod.apply_overrides(cfg, rest) if rest else cfg


def flat(cfg: TrainConfig) -> dict[str, Any]:
    """``{"section.key": value}`` of a config."""
    return {f"{s}.{k}": v for s, sec in dataclasses.asdict(cfg).items() for k, v in sec.items()}


def resume_conflicts(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Keys whose value differs between a checkpoint's config and ``cfg`` and that would change the results."""
    now = flat(cfg)
    then = {f"{s}.{k}": v for s, sec in saved.items() for k, v in sec.items()}
    defaults = flat(TrainConfig())
    out = []
    for key in sorted(set(now) | set(then)):
        if key in RESUME_FREE_KEYS:
            continue
        if key not in then and now.get(key) == defaults.get(key):
            continue  # an option added after the checkpoint was written, left at its default
        a, b = then.get(key), now.get(key)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            out.append(f"{key}: checkpoint {a!r} vs now {b!r}")
    return out


def save_resolved(cfg: TrainConfig, path: str | os.PathLike[str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cfgmod.save(cfg, path)


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
