"""The swappable parts of a training run, built from the config's ``{name, kwargs}`` sections.

Registries (add one with a decorator and one file; ``README.md``, "Architecture", shows how):

* :data:`OPTIMIZERS` -- ``factory(groups, lr, weight_decay, **kwargs) -> torch.optim.Optimizer``. The
  shipped ones use PyTorch's fused kernels, which can skip a step on the device (``found_inf``): that is
  how the engine refuses non-finite gradients without a host sync.
* :data:`SCHEDULES` -- ``factory(total, per_unit, **kwargs) -> f(step) -> lr factor``, a pure function of
  the step (exact resume). Warm-up is applied on top by :func:`build_schedule`.
* heads and aux losses live in :mod:`centerloss.losses` (``HEADS``, ``AUX``), networks in
  :mod:`centerloss.models` (``MODELS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .._registry import Registry
from ..errors import ConfigError
from .config import AuxConfig, OptimizerConfig, ScheduleConfig, TrainConfig

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
SCHEDULES: Registry[Callable[[int], float]] = Registry("schedule")


# ---------------------------------------------------------------- optimizers


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict[str, Any]], lr: float, weight_decay: float, momentum: float = 0.9,
        nesterov: bool = False, dampening: float = 0.0) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's and caffe-face's solver), fused kernel."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                           dampening=dampening, fused=True)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float, betas: Sequence[float] = (0.9, 0.999),
          eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), fused kernel."""
    return torch.optim.AdamW(groups, lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps,
                             weight_decay=weight_decay, fused=True)


# ---------------------------------------------------------------- schedules (lr factor of the step)


@SCHEDULES.register("multistep")
def multistep(total: int, per_unit: int, milestones: Sequence[int] = (), gamma: float = 0.1) -> Callable[[int], float]:
    """``gamma ** (number of milestones <= step)``; milestones in the schedule's unit (steps or epochs)."""
    steps = [int(m) * per_unit for m in milestones]
    return lambda step: gamma ** sum(step >= m for m in steps)


@SCHEDULES.register("cosine")
def cosine(total: int, per_unit: int, final: float = 0.0) -> Callable[[int], float]:
    """Half a cosine from 1 at step 0 to ``final`` at the last step."""
    return lambda step: final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


@SCHEDULES.register("constant")
def constant(total: int, per_unit: int) -> Callable[[int], float]:
    return lambda step: 1.0


def build_schedule(cfg: ScheduleConfig, total: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr factor of each step: the registered schedule times a linear warm-up ``(step + 1) / warmup``."""
    per_unit = steps_per_epoch if cfg.unit == "epoch" else 1
    base = _create(SCHEDULES, cfg.name, cfg.kwargs, "schedule", total=total, per_unit=per_unit)
    warm = cfg.warmup_steps
    return (lambda step: base(step) * min(1.0, (step + 1) / warm)) if warm > 0 else base


# ---------------------------------------------------------------- objective (head + aux)


def _create(registry: Registry, name: str, kwargs: dict[str, Any], where: str, **supplied: Any) -> Any:
    """``registry.create`` whose argument errors name the config section."""
    try:
        return registry.create(name, **supplied, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{where} {name!r} with kwargs {kwargs}: {e}") from None


def build_objective(cfg: TrainConfig, feat_dim: int, num_classes: int) -> nn.Module:
    """``JointLoss(head, aux, lam)`` from the config (Eq. 5); model A is ``aux.name: none``.

    A head registered with ``takes_aux = True`` (the sharded head) builds the whole objective itself, since
    its centers are sharded like its classifier rows.
    """
    from ..losses import HEADS, JointLoss

    factory = HEADS.get(cfg.head.name)
    if getattr(factory, "takes_aux", False):
        return _create(HEADS, cfg.head.name, cfg.head.kwargs, "head", feat_dim=feat_dim, num_classes=num_classes,
                       aux=cfg.aux, seed=cfg.runtime.seed)
    import inspect

    seeded = {"seed": cfg.runtime.seed} if "seed" in inspect.signature(factory).parameters else {}
    head = _create(HEADS, cfg.head.name, cfg.head.kwargs, "head", feat_dim=feat_dim, num_classes=num_classes,
                   **seeded)
    aux = build_aux(cfg.aux, feat_dim, num_classes) if cfg.aux.name != "none" else None
    return JointLoss(feat_dim, num_classes, head=head, aux=aux, lam=cfg.aux.lam if aux is not None else 0.0)


def build_aux(cfg: AuxConfig, feat_dim: int, num_classes: int) -> nn.Module:
    from ..losses import AUX

    return _create(AUX, cfg.name, cfg.kwargs, "aux", feat_dim=feat_dim, num_classes=num_classes)


# ---------------------------------------------------------------- parameter groups


def sharded_parameter_names(module: nn.Module, prefix: str = "", buffers: bool = False) -> set[str]:
    """Names of the parameters (and with ``buffers``, the buffers) of modules marked ``sharded = True``, whose
    rows differ per rank: they stay out of DDP (no averaging, no broadcast) and get their own optimizer
    groups and checkpoint shards."""
    out: set[str] = set()
    for name, sub in module.named_modules(prefix=prefix.rstrip(".")):
        if getattr(sub, "sharded", False):
            items = list(sub.named_parameters()) + (list(sub.named_buffers()) if buffers else [])
            out |= {f"{name}.{p}" if name else p for p, _ in items}
    return out


def _overrides_of(modules: Iterable[nn.Module]) -> dict[int, dict[str, float]]:
    """``id(param) -> {lr_mult, decay_mult}`` for modules that ask for special treatment (caffe centers)."""
    out: dict[int, dict[str, float]] = {}
    for top in modules:
        for m in top.modules():
            ov = getattr(m, "optim_overrides", None)
            if ov:
                for p in m.parameters(recurse=False):
                    out[id(p)] = dict(ov)
    return out


def param_groups(cfg: OptimizerConfig, named: list[tuple[str, nn.Parameter]], sharded: set[str],
                 overrides: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    """caffe-face's groups: weights (lr x1, decay), biases (``bias_lr_mult``, ``bias_decay_mult``), modules with
    ``optim_overrides`` (caffe centers: lr x1, decay x2), each split into replicated and sharded groups, the
    sharded ones last so that parameter indices of the replicated ones agree on every rank."""
    keyed: dict[tuple[str, float, float, bool], list[nn.Parameter]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        ov = overrides.get(id(p))
        if ov is not None:
            key = ("override", ov.get("lr_mult", 1.0), ov.get("decay_mult", 1.0), name in sharded)
        elif name.endswith("bias"):
            key = ("bias", cfg.bias_lr_mult, cfg.bias_decay_mult, name in sharded)
        else:
            key = ("weight", 1.0, 1.0, name in sharded)
        keyed.setdefault(key, []).append(p)
    order = sorted(keyed, key=lambda k: (k[3], ["weight", "bias", "override"].index(k[0]), k[1], k[2]))
    return [{"params": keyed[k], "lr_mult": k[1], "weight_decay": cfg.weight_decay * k[2], "kind": k[0],
             "sharded": k[3]} for k in order]


def build_optimizer(cfg: OptimizerConfig, net: nn.Module, objective: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the network's and the objective's trainable parameters."""
    named = [(f"net.{n}", p) for n, p in net.named_parameters()]
    named += [(f"objective.{n}", p) for n, p in objective.named_parameters()]
    groups = param_groups(cfg, named, sharded_parameter_names(objective, "objective."),
                          _overrides_of([net, objective]))
    if not groups:
        raise ConfigError("nothing to train: the network and the objective have no trainable parameters")
    return _create(OPTIMIZERS, cfg.name, cfg.kwargs, "optimizer", groups=groups, lr=cfg.lr,
                   weight_decay=cfg.weight_decay)
