"""The one training loop: ``network -> features -> objective (head + aux, Eq. 5)``, from a laptop to many GPUs.

What it guarantees, and how:

* **Data order is a pure function of (seed, epoch)**, whatever the world size or number of workers (see
  :mod:`.data`): global batch ``k`` of an epoch is positions ``[k*B, (k+1)*B)`` of that epoch's permutation.
* **Exact resume.** A checkpoint records the step; resuming skips the batches already consumed and restores
  weights, centers, optimizer, AMP scaler, RNG states and the open metrics window. On CPU (and on GPU with
  ``runtime.deterministic``) the resumed run ends bit-identical to an uninterrupted one.
* **DDP.** Under ``torchrun`` the network and the objective are wrapped together in
  ``DistributedDataParallel(broadcast_buffers=False)``: DDP averages the replicated gradients, the paper-mode
  centers keep themselves in sync (:class:`~centerloss.losses.CenterLoss` applies one Eq. 4 step to the
  gathered global batch on every rank), and the parameters of a sharded head stay out of DDP altogether.
* **No host sync in the steady-state step** (see :mod:`.metrics`): labels are checked once per dataset,
  losses and accuracy accumulate on the device and reach the host at log steps only, and a non-finite loss or
  gradient becomes a device flag that makes the fused optimizer skip the step. So no parameter moves by a NaN
  update; the run stops at the next log or checkpoint step with
  :class:`~centerloss.errors.NonFiniteLossError`, and no checkpoint is written from a bad state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, NonFiniteLossError
from . import checkpoint as ck
from .config import TrainConfig, resume_conflicts
from .data import EpochSampler, dataset_labels, make_loader, start_batches
from .distributed import barrier, cleanup, gather_objects, hold_until_exit, init_distributed
from .metrics import NonFiniteGuard, RunningMetrics, total_grad_norm
from .parts import build_objective, build_optimizer, build_schedule, sharded_parameter_names
from .run import RunFolder
from .setup import build_dataset, build_network, find_resume, no_buffer_sync

TRAIN_FIELDS = ["step", "epoch", "lr", "loss", "softmax", "aux", "accuracy", "images_per_s", "elapsed_s"]
Callback = Callable[["Trainer", dict[str, Any]], None]


class TrainStep(nn.Module):
    """``(images, labels) -> JointOutput``: the unit DDP wraps (network and objective together)."""

    def __init__(self, net: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.net, self.objective = net, objective

    def forward(self, x: Tensor, y: Tensor):
        return self.objective(self.net(x), y)  # features (B, d) -> JointOutput


class Trainer:
    """Train ``cfg.model`` under ``cfg.head`` + ``cfg.aux`` on ``cfg.data``; ``Trainer(cfg).fit()`` -> summary.

    Args:
        cfg: the resolved config (see :mod:`centerloss.engine.config`).
        dataset: use this dataset instead of building one from ``cfg.data`` (``ds[i] -> (x, label)``, with a
            ``classes`` list or a ``labels`` array; ``set_epoch(epoch)`` is called when present).
        callbacks: objects with optional hooks ``on_step_end(trainer, row)``, ``on_log(trainer, row)`` and
            ``on_fit_end(trainer, summary)``, or plain callables used as ``on_step_end``. ``row`` holds the
            step, epoch and lr (and the metrics, in ``on_log``). Verification during training is such a
            callback (:class:`centerloss.eval.callbacks.VerificationCallback`).
    """

    def __init__(self, cfg: TrainConfig, dataset: Dataset | None = None, callbacks: Sequence[Any] = ()) -> None:
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.out_dir = Path(cfg.runtime.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self._dataset = dataset
        self.step = 0

    # -- the loop --------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            self._setup(stack)
            self._hook("on_fit_start", self)
            t0 = time.perf_counter()
            for x, y in self._batches():
                self.train_step(x, y)
                self.step += 1
                self._after_step(t0)
            summary = self._finish(time.perf_counter() - t0)
            self._hook("on_fit_end", self, summary)
            return summary

    def train_step(self, x: Tensor, y: Tensor) -> None:
        """One optimizer step. Nothing here reads a device value on the host."""
        self.lr = lr = self.cfg.optimizer.lr * self.schedule(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_mult"]
        with self.autocast():
            out = self.model(x, y)  # JointOutput: loss = L_S + lambda * L_aux (Eq. 5)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        if self.cfg.optimizer.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optimizer.grad_clip)
        else:
            norm = total_grad_norm(self.params)
        if self.scaler.is_enabled():  # fp16: the GradScaler skips overflowing steps itself
            self.guard.check(out.loss, None, self.info)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:  # the fused kernel skips the step on the device when found_inf is set
            self.optimizer.found_inf = self.guard.check(out.loss, norm, self.info)
            self.optimizer.step()
        self.metrics.add(out)

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        dev, spe = self.device, self.steps_per_epoch
        while self.step < self.max_steps:
            epoch, k = divmod(self.step, spe)
            self.sampler.set_epoch(epoch, skip=k * self.local_batch)
            for x, y in start_batches(self.loader):  # workers start on the first, Ctrl-C held
                if self._labels is None:  # a dataset without a labels array: check on the CPU, no device sync
                    self._check_labels(y)
                x = x.to(dev, non_blocking=True)
                if self.cfg.runtime.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y.to(dev, non_blocking=True)
                if self.step >= self.max_steps:
                    break

    def _after_step(self, t0: float) -> None:
        rt, step = self.cfg.runtime, self.step
        row: dict[str, Any] = {"step": step, "epoch": (step - 1) // self.steps_per_epoch, "lr": self.lr}
        last = step == self.max_steps
        if step % rt.log_every == 0 or last:
            self._raise_if_bad()
            row.update(self.metrics.read(self.info))
            now = time.perf_counter()
            row["images_per_s"] = self._window_images(step) / max(now - self._t_window, 1e-9)
            row["elapsed_s"] = self.elapsed_before + now - t0
            self._t_window, self._step_window = now, step
            if self.info.is_main:
                self.run.log("train", row, TRAIN_FIELDS)
            self.last_row = row
            self._hook("on_log", self, row)
        if self.bar is not None:
            self.bar.update(1)
            if "loss" in row:
                self.bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}", lr=f"{row['lr']:.3g}")
        if step % rt.ckpt_every == 0 or last:
            self._raise_if_bad()
            self.save(self.elapsed_before + time.perf_counter() - t0)
        self._hook("on_step_end", self, row)

    # -- guards, hooks, checkpoints ----------------------------------------------------------------------

    def _raise_if_bad(self) -> None:
        first = self.guard.first_bad_step(self.step)
        if first is not None:
            epoch, k = divmod(first, self.steps_per_epoch)
            p = ck.latest_checkpoint(self.ckpt_dir)
            last = f"The last good checkpoint is {p} (resume with --resume {p})." if p else "No checkpoint was written."
            raise NonFiniteLossError(
                f"non-finite loss or gradients at step {first} (epoch {epoch}, batch {k}); no optimizer step was "
                f"taken from it and training stopped. {last} Lower optimizer.lr or aux.lam, set "
                "optimizer.grad_clip, or use runtime.amp=bf16 instead of fp16.")

    def _check_labels(self, y: Tensor) -> None:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise DataError(f"a batch holds labels in [{int(y.min())}, {int(y.max())}], outside the "
                            f"{len(self.classes)} classes of the dataset")

    def _hook(self, name: str, *args: Any) -> None:
        """Call hook ``name`` of every callback; a plain function is an ``on_step_end`` hook."""
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is None and name == "on_step_end" and callable(cb) and not hasattr(cb, "on_log"):
                fn = cb
            if fn is not None:
                fn(*args)

    def _window_images(self, step: int) -> int:
        return (step - self._step_window) * self.cfg.data.batch_size

    def save(self, elapsed: float) -> Path:
        """Write a checkpoint of the current step (collective: every rank must call it)."""
        rngs = gather_objects(ck.rng_state(), self.info)
        epoch = self.step // self.steps_per_epoch
        state = {"config": dataclasses.asdict(self.cfg), "classes": self.classes, "epoch": epoch,
                 "steps_per_epoch": self.steps_per_epoch, "global_batch": self.cfg.data.batch_size,
                 "world_size": self.info.world_size,
                 "sampler": {"seed": self.cfg.runtime.seed, "epoch": epoch,
                             "consumed_batches": self.step - epoch * self.steps_per_epoch,
                             "num_samples": len(self.dataset)},  # type: ignore[arg-type]
                 "metrics": self.metrics.state(),
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                 "elapsed_s": elapsed, "rng": rngs, "last_row": _finite(self.last_row)}
        ranges = gather_objects(list(self.class_range), self.info) if self.class_range else None
        return ck.save_checkpoint(self.ckpt_dir, self.step, self.parts, state, self.info,
                                  self.cfg.runtime.keep_last, ranges)

    # -- setup and teardown ------------------------------------------------------------------------------

    def _setup(self, stack: contextlib.ExitStack) -> None:
        cfg, rt = self.cfg, self.cfg.runtime
        self.info = init_distributed(rt.device)
        stack.callback(cleanup, self.info)
        self.device = self.info.device
        stack.enter_context(_torch_flags(rt.deterministic, rt.threads, self.device))
        if rt.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("runtime.amp=fp16 needs a CUDA device; use bf16 or none on CPU")
        self.run = RunFolder(self.out_dir, rt.tensorboard, None)
        stack.callback(self.run.close)
        if self.info.is_main:
            self.run.lock()
        barrier(self.info)
        self.resume_from = find_resume(rt.resume, self.out_dir, self.ckpt_dir)
        if self.resume_from is not None:
            saved = self.resume_from.state["config"]
            bad = resume_conflicts(saved, cfg)
            if bad:
                raise ConfigError(f"cannot resume {self.resume_from.path} with a different setup: " + "; ".join(bad))
            if not cfg.data.root and self._dataset is None:  # `--resume` need not restate --data
                cfg.data.root = saved.get("data", {}).get("root") or ""
        self._setup_data()
        self._setup_model()
        self._setup_state()
        self._setup_records(stack)

    def _setup_data(self) -> None:
        cfg, info = self.cfg, self.info
        self.dataset = self._dataset if self._dataset is not None else build_dataset(cfg)
        self.classes, self._labels = dataset_labels(self.dataset)
        n = len(self.dataset)  # type: ignore[arg-type]
        if len(self.classes) < 2:
            where = cfg.data.root or type(self.dataset).__name__
            raise DataError(f"{where}: the training set has {len(self.classes)} identity (with >= "
                            f"{cfg.data.min_images} images); a classifier needs at least 2")
        if cfg.data.batch_size % info.world_size:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be divisible by the world size "
                              f"{info.world_size}")
        self.local_batch = cfg.data.batch_size // info.world_size
        self.steps_per_epoch = (n // info.world_size) // self.local_batch
        if self.steps_per_epoch < 1:
            raise DataError(f"the training set has {n} images, fewer than one global batch of {cfg.data.batch_size}")
        s = cfg.schedule
        self.max_steps = s.epochs * self.steps_per_epoch if s.epochs > 0 else s.max_steps
        self.schedule = build_schedule(s, self.max_steps, self.steps_per_epoch)
        self.sampler = EpochSampler(n, info.world_size, info.rank, cfg.runtime.seed)
        self.loader = make_loader(self.dataset, self.sampler, self.local_batch, cfg.data.workers,
                                  self.device.type == "cuda", cfg.runtime.seed)
        if self.resume_from is not None:
            _check_same_data(self.resume_from, self.classes, n, self.steps_per_epoch)

    def _setup_model(self) -> None:
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.runtime.seed)  # the same initial weights on every rank
        self.net = build_network(cfg)
        self.objective = build_objective(cfg, int(self.net.embed_dim), len(self.classes))
        for m in self.objective.modules():  # the engine checks labels per dataset and NaNs on the device
            if hasattr(m, "validate"):
                m.validate = False
        self.net.to(self.device)
        self.objective.to(self.device)
        if cfg.runtime.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.class_range = getattr(self.objective, "class_range", None)
        self.optimizer = build_optimizer(cfg.optimizer, self.net, self.objective)
        names = {id(p): f"net.{n}" for n, p in self.net.named_parameters()}
        names.update({id(p): f"objective.{n}" for n, p in self.objective.named_parameters()})
        self.parts = ck.Parts(self.net, cfg.model.name, dict(cfg.model.kwargs), self.objective, self.optimizer, names)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.model: nn.Module = TrainStep(self.net, self.objective)
        if info.enabled:
            ignore = sorted(sharded_parameter_names(self.objective, "objective.", buffers=True))
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ignore)
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **no_buffer_sync())
            if torch.distributed.get_backend() == "gloo":  # freeing it later could deadlock: see hold_until_exit
                hold_until_exit(self.model)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.runtime.amp)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.runtime.amp == "fp16")

    def _setup_state(self) -> None:
        self.metrics = RunningMetrics(self.device)
        self.guard = NonFiniteGuard(self.device)
        self.elapsed_before, self.last_row = 0.0, {}
        r = self.resume_from
        if r is not None:
            ck.restore(r, self.parts, self.device, self.info.rank, self.class_range)
            st = r.state
            self.step = int(st["step"])
            self.metrics.load(st["metrics"])
            self.elapsed_before = float(st.get("elapsed_s", 0.0))
            self.last_row = dict(st.get("last_row") or {})  # a finished run resumed still reports its final row
            if st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
            rngs = st["rng"]
            ck.set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])
            if st.get("world_size") != self.info.world_size and self.info.is_main:
                print(f"note: resuming a {st.get('world_size')}-process run on {self.info.world_size} processes: "
                      "the same global batches, but reduction order differs, so results match only to rounding")
        self.start_step = self.step
        self._t_window, self._step_window = time.perf_counter(), self.step

    def _setup_records(self, stack: contextlib.ExitStack) -> None:
        from ..config import save

        self.run.resume_step = self.step if self.resume_from is not None else None
        self.bar = None
        if self.info.is_main:
            save(self.cfg, self.out_dir / "config.yaml")
            self.run.write_json("classes.json", self.classes)
            self.run.write_json("data_report.json", _data_report(self.dataset, self.classes))
            if self.cfg.runtime.progress:
                from tqdm.auto import tqdm

                self.bar = stack.enter_context(tqdm(
                    total=self.max_steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=2.0,
                    desc=f"train {self.cfg.model.name}/{self.cfg.head.name}+{self.cfg.aux.name}"))
            if self.step >= self.max_steps:
                print(f"nothing to do: the checkpoint is at step {self.step} >= max_steps {self.max_steps}")
        barrier(self.info)

    def _finish(self, elapsed: float) -> dict[str, Any]:
        cfg, n_done = self.cfg, self.step - self.start_step
        total = self.elapsed_before + elapsed
        summary = {"steps": self.step, "epochs": self.step / self.steps_per_epoch, "steps_this_session": n_done,
                   "seconds_this_session": elapsed, "images_per_s": n_done * cfg.data.batch_size / max(elapsed, 1e-9),
                   "seconds_total": total, "images_per_s_total": self.step * cfg.data.batch_size / max(total, 1e-9),
                   "num_classes": len(self.classes), "num_images": len(self.dataset),  # type: ignore[arg-type]
                   "world_size": self.info.world_size, "device": str(self.device), "final": self.last_row}
        if self.info.is_main:
            from ..models.io import save_model

            save_model(self.out_dir / "model.safetensors", self.net, cfg.model.name, dict(cfg.model.kwargs),
                       {"classes": self.classes, "step": self.step})
            self.run.write_json("summary.json", summary)
        barrier(self.info)
        return summary


# ---------------------------------------------------------------- helpers


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """The log row without non-finite numbers (the checkpoint's JSON refuses NaN)."""
    return {k: v for k, v in row.items() if not isinstance(v, float) or math.isfinite(v)}


@contextlib.contextmanager
def _torch_flags(deterministic: bool, threads: int, device: torch.device) -> Iterator[None]:
    """Set torch's global flags for the run and restore them afterwards, also when setup fails."""
    import os

    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        if deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
            torch.use_deterministic_algorithms(True)
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.set_num_threads(before[1])


def _check_same_data(ckpt: ck.Checkpoint, classes: list[str], n: int, steps_per_epoch: int) -> None:
    """An exact resume needs the same label map, the same files and the same batches per epoch."""
    st = ckpt.state
    if st.get("classes") != classes:
        raise DataError(f"the label map of {ckpt.path} differs from the dataset's "
                        f"({len(st.get('classes', []))} vs {len(classes)} identities)")
    saved_n = st.get("sampler", {}).get("num_samples")
    if saved_n is not None and saved_n != n:
        raise DataError(f"cannot resume {ckpt.path}: it was trained on {saved_n} images, the dataset now has {n}; "
                        "an exact resume needs the same files")
    if st.get("steps_per_epoch") not in (None, steps_per_epoch):
        raise DataError(f"cannot resume {ckpt.path}: {st['steps_per_epoch']} steps per epoch then, {steps_per_epoch} "
                        "now (batch size or world size changed)")


def _data_report(dataset: Dataset, classes: list[str]) -> dict[str, Any]:
    """What the run trains on, including the identities left out for having too few images."""
    index = getattr(dataset, "index", None)
    dropped = dict(getattr(index, "dropped", {}) or {})
    labels = getattr(dataset, "labels", None)
    counts = np.bincount(np.asarray(labels), minlength=len(classes)) if labels is not None else None
    return {"identities": len(classes), "images": len(dataset),  # type: ignore[arg-type]
            "images_per_identity": {"min": int(counts.min()), "median": float(np.median(counts)),
                                    "max": int(counts.max())} if counts is not None else None,
            "dropped_identities": {"count": len(dropped), "images": int(sum(dropped.values())),
                                   "reason": "fewer than data.min_images images", "names": dropped}}


def train(cfg: TrainConfig, **kw: Any) -> dict[str, Any]:
    """``Trainer(cfg, **kw).fit()``."""
    return Trainer(cfg, **kw).fit()
