"""The training run's typed config, one dataclass per concern.

Swappable parts are chosen as ``{name, kwargs}`` from a registry, like ``model`` always was:

=============  ==============================================  ======================================
section        registry                                        shipped names
=============  ==============================================  ======================================
``model``      :data:`centerloss.models.MODELS`                face_small, face_resnet27, face_paper, lenetpp
``head``       :data:`centerloss.losses.HEADS`                 linear, normface, cosface, arcface, sphereface, sharded
``aux``        :data:`centerloss.losses.AUX` (or ``none``)     center, contrastive, triplet
``optimizer``  :data:`centerloss.engine.parts.OPTIMIZERS`       sgd, adamw
``schedule``   :data:`centerloss.engine.parts.SCHEDULES`        multistep, cosine, constant
=============  ==============================================  ======================================

Names and kwargs are checked against the registry (the factory's signature) when the config is loaded, so
``--set aux.name=centr`` or ``--set head.kwargs.margn=0.5`` fails before anything runs. Models A/B/C are
presets (``aux.name: none / contrastive / center``), not code.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import config as cfgmod
from ..errors import ConfigError


def check_kwargs(factory: Any, kwargs: dict[str, Any], where: str, supplied: tuple[str, ...] = ()) -> None:
    """Raise if ``kwargs`` holds a name ``factory`` does not accept (``supplied`` are passed by the engine)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    clash = sorted(set(kwargs) & set(supplied))
    if clash:
        raise ConfigError(f"{where}: {clash} are set by the engine, not in kwargs")
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = sorted(k for k in params if k not in supplied and k != "self")
        raise ConfigError(f"{where}: unknown argument(s) {unknown}; valid: {valid}")


def _registry_check(registry: Any, name: str, kwargs: dict[str, Any], where: str, supplied: tuple[str, ...],
                    trial: dict[str, Any] | None = None) -> None:
    """The name is registered and the kwargs fit its factory; with ``trial``, a tiny instance is built with
    them (e.g. 1 class of width 1) so that bad values (alpha=2, m=-1) fail now, not when the run starts."""
    if name not in registry:
        raise ConfigError(f"{where}.name: unknown {registry.kind} {name!r}; choose one of {registry.names()}")
    factory = registry.get(name)
    check_kwargs(factory, kwargs, f"{where}.kwargs", supplied)
    if trial is not None and not getattr(factory, "takes_aux", False):
        try:
            factory(**trial, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}.kwargs {kwargs}: {e}") from None


@dataclass
class ModelConfig:
    name: str = "face_small"  # a centerloss.models registry name
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments (saved with the weights)

    def __post_init__(self) -> None:
        import torch

        from ..models import MODELS

        _registry_check(MODELS, self.name, self.kwargs, "model", ())
        try:  # built on the meta device: checks the values (e.g. width > 0) with no memory and no RNG draws
            with torch.device("meta"):
                MODELS.create(self.name, **self.kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"model {self.name!r} with kwargs {self.kwargs}: {e}") from None


@dataclass
class HeadConfig:
    name: str = "linear"  # a centerloss.losses.HEADS name: features -> logits -> L_S
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {bias: false}, {s: 64, m: 0.5}

    def __post_init__(self) -> None:
        from ..losses import HEADS

        _registry_check(HEADS, self.name, self.kwargs, "head", ("feat_dim", "num_classes", "aux", "seed"),
                        trial={"feat_dim": 2, "num_classes": 2})


@dataclass
class AuxConfig:
    name: str = "none"  # "none" (model A), or a centerloss.losses.AUX name: center (C), contrastive (B), triplet
    lam: float = 0.003  # lambda of Eq. 5 (paper's model C: 0.003)
    kwargs: dict[str, Any] = field(default_factory=dict)  # center: {alpha, update, reduction, init}

    def __post_init__(self) -> None:
        from ..losses import AUX

        if not self.lam >= 0 or self.lam == float("inf"):
            raise ConfigError(f"aux.lam must be a finite number >= 0, got {self.lam}")
        if self.name != "none":
            _registry_check(AUX, self.name, self.kwargs, "aux", ("feat_dim", "num_classes"),
                            trial={"feat_dim": 1, "num_classes": 1})
        elif self.kwargs:
            raise ConfigError(f"aux.kwargs {self.kwargs} given, but aux.name is none")


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # a centerloss.engine.parts.OPTIMIZERS name
    lr: float = 0.1  # base learning rate; the schedule multiplies it
    weight_decay: float = 5e-4
    bias_lr_mult: float = 2.0  # caffe-face: biases learn at 2x ...
    bias_decay_mult: float = 0.0  # ... with no weight decay
    grad_clip: float = 0.0  # max global gradient norm (0: off)
    kwargs: dict[str, Any] = field(default_factory=lambda: {"momentum": 0.9})

    def __post_init__(self) -> None:
        from .parts import OPTIMIZERS

        if not self.lr > 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.bias_lr_mult < 0 or self.bias_decay_mult < 0:
            raise ConfigError("optimizer.weight_decay, grad_clip, bias_lr_mult and bias_decay_mult must be >= 0")
        _registry_check(OPTIMIZERS, self.name, self.kwargs, "optimizer", ("groups", "lr", "weight_decay"))


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # a centerloss.engine.parts.SCHEDULES name: the lr factor at each step
    unit: Literal["step", "epoch"] = "step"  # unit of the step counts in kwargs (e.g. milestones)
    warmup_steps: int = 0  # linear warm-up of the lr over the first N optimizer steps (0: none, as in the paper)
    max_steps: int = 28000  # optimizer steps; ignored when epochs > 0
    epochs: int = 0  # train for this many epochs instead (0: use max_steps)
    kwargs: dict[str, Any] = field(default_factory=lambda: {"milestones": [16000, 24000], "gamma": 0.1})

    def __post_init__(self) -> None:
        from .parts import SCHEDULES

        if self.warmup_steps < 0 or self.epochs < 0 or (self.epochs == 0 and self.max_steps < 1):
            raise ConfigError("schedule: warmup_steps and epochs must be >= 0, and max_steps >= 1 when epochs is 0")
        _registry_check(SCHEDULES, self.name, self.kwargs, "schedule", ("total", "per_unit"))


@dataclass
class DataConfig:
    kind: Literal["folder", "recordio"] = "folder"  # root/<identity>/<image>, or InsightFace train.rec + .idx
    root: str = ""  # the identity folder, or the .rec file
    min_images: int = 2  # folder: drop identities with fewer images (listed in the run's data_report.json)
    file_list: str | None = None  # folder: text file of '<identity>/<image>' paths to use instead of a scan
    identities: str | None = None  # folder: text file, one identity per line, to train on (None: all)
    exclude_identities: str | None = None  # folder: text file of identities never to train on
    index_cache: str | None = None  # folder: JSON listing cache (rescans only changed identity folders)
    on_empty: Literal["error", "skip"] = "error"  # folder: identity folders without images
    input_size: list[int] = field(default_factory=lambda: [112, 96])  # (H, W) crops must already have
    flip: bool = True  # random horizontal flip, the paper's only augmentation
    batch_size: int = 256  # GLOBAL batch: split evenly over the ranks of a DDP run
    workers: int = 2  # DataLoader worker processes per rank (started once, with forkserver)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.workers < 0 or self.min_images < 1:
            raise ConfigError("data.batch_size and data.min_images must be >= 1 and data.workers >= 0")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ConfigError(f"data.input_size must be [H, W], got {self.input_size}")


@dataclass
class RuntimeConfig:
    out_dir: str = "runs/train"
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    amp: Literal["none", "bf16", "fp16"] = "none"  # autocast dtype (fp16 adds a GradScaler; GPU only)
    channels_last: bool = False
    seed: int = 0  # weights init, data order and flips are pure functions of it (and the epoch)
    deterministic: bool = True  # torch.use_deterministic_algorithms: needed for bit-exact resume on GPU
    ckpt_every: int = 500  # steps between checkpoints (a checkpoint is also written at the end)
    keep_last: int = 2  # checkpoints kept (older ones are deleted)
    log_every: int = 20  # steps between log rows; the only steps at which metrics reach the host
    tensorboard: bool = True  # write TensorBoard events if the package is installed
    progress: bool = True  # tqdm bar (rank 0)
    resume: str | None = None  # None, "auto" (latest checkpoint in out_dir if any) or a checkpoint folder
    threads: int = 0  # torch intra-op threads on CPU (0: leave PyTorch's default)

    def __post_init__(self) -> None:
        if self.ckpt_every < 1 or self.log_every < 1 or self.keep_last < 0 or self.threads < 0:
            raise ConfigError("runtime.ckpt_every and log_every must be >= 1, keep_last and threads >= 0")


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
    head: HeadConfig = field(default_factory=HeadConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    def __post_init__(self) -> None:
        from ..losses import HEADS

        factory = HEADS.get(self.head.name)
        if getattr(factory, "takes_aux", False):  # a head that builds the aux term itself: check the pair now
            try:
                factory(feat_dim=2, num_classes=2, aux=self.aux, **self.head.kwargs)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"head {self.head.name!r} with aux {self.aux.name!r}: {e}") from None
        if self.aux.kwargs.get("update") == "caffe" and self.runtime.amp == "fp16":
            raise ConfigError("aux.kwargs.update=caffe cannot be used with runtime.amp=fp16 (its center gradient "
                              "ignores the loss scale); use bf16 or none")


#: Keys that may differ between a checkpoint and the run that resumes it (they do not change results).
RESUME_FREE_KEYS = {"data.workers", "data.index_cache", "runtime.out_dir", "runtime.resume", "runtime.progress",
                    "runtime.tensorboard", "runtime.log_every", "runtime.ckpt_every", "runtime.keep_last",
                    "runtime.threads", "schedule.max_steps", "schedule.epochs", "verify.every", "data.root"}


def load_train_config(preset: str | None, overrides: list[str] | dict[str, Any] | None = None,
                      extra: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- preset (``configs/train/<name>.yaml`` or a path, with ``base:``) <- overrides <- extra."""
    return cfgmod.load(TrainConfig, "train", preset, overrides, extra)


def apply(cfg: TrainConfig, overrides: list[str] | dict[str, Any]) -> TrainConfig:
    """``cfg`` with ``key=value`` overrides applied (re-validated)."""
    return cfgmod.from_dict(TrainConfig, cfgmod.apply_overrides(dataclasses.asdict(cfg), overrides), "config")


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"section.key": value}`` of a nested mapping (free-form ``kwargs`` stay whole)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_conflicts(saved: dict[str, Any], now: dict[str, Any], free: set[str] | frozenset[str],
                     labels: tuple[str, str] = ("", "")) -> list[str]:
    """``"key: saved vs now"`` (each value after its label) for each flattened key outside ``free`` whose value
    differs; tuples read as lists, as they come back from JSON or YAML."""
    a_all, b_all = flat(saved), flat(now)
    out = []
    for key in sorted(set(a_all) | set(b_all)):
        if key in free:
            continue
        a, b = a_all.get(key), b_all.get(key)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            out.append(f"{key}: {labels[0]}{a!r} vs {labels[1]}{b!r}")
    return out


def resume_conflicts(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Keys whose value differs between a checkpoint's config and ``cfg`` and that would change the results."""
    return config_conflicts(saved, dataclasses.asdict(cfg), RESUME_FREE_KEYS, ("checkpoint ", "now "))


#: Resume-free keys that still change what a *finished* run is (its length, threads, data root, periodic
#: verification): one finished training stands for another only where these agree as well.
FINISHED_STRICT_KEYS = {"runtime.threads", "schedule.max_steps", "schedule.epochs", "verify.every", "data.root"}


def finished_conflicts(saved: dict[str, Any], now: dict[str, Any], also_free: frozenset[str] = frozenset()) -> list[str]:
    """Why a finished training with config ``saved`` cannot stand for one with config ``now`` ([] if it can)."""
    return config_conflicts(saved, now, (RESUME_FREE_KEYS - FINISHED_STRICT_KEYS) | also_free)
