"""A model-agnostic training engine for ``network -> features -> JointLoss`` (Eq. 5), from a laptop to many GPUs.

What it guarantees, and how:

* **Data order is a pure function of (seed, epoch).** Every run, whatever its world size, uses
  ``DistributedSampler(shuffle=True, seed, drop_last=True)``; global batch ``k`` of an epoch is positions
  ``[k*B, (k+1)*B)`` of that epoch's permutation, and rank ``r`` holds every W-th of them. Flips come from
  :func:`centerloss.data.identity_folder.flip_bit` (seed, epoch, index). So the global batches do not depend
  on the number of ranks or DataLoader workers.
* **Exact resume.** A checkpoint records the step; resuming rebuilds the epoch's sampler, skips the batches
  already consumed, and restores weights, centers, optimizer, AMP scaler, RNG states and the open log window.
  On CPU (and on GPU with ``runtime.deterministic``) the resumed run ends bit-identical to an uninterrupted one.
* **DDP.** Under ``torchrun`` the network *and* the objective (its classifier) are wrapped together in
  ``DistributedDataParallel(broadcast_buffers=False)``: gradients are averaged by DDP, while the paper-mode
  centers are kept in sync by :class:`~centerloss.losses.CenterLoss` itself (it all-gathers the features and
  applies one identical Eq. 4 step on every rank), so DDP must not broadcast them. Contrastive pairs (model B)
  are formed within each rank's share of the batch.
* **NaN/Inf guard.** Non-finite features (checked before the centers can move) or a non-finite loss stop every
  rank with :class:`~centerloss.errors.NonFiniteLossError`, before the optimizer step; the last checkpoint on
  disk is the last good state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..errors import DataError, NonFiniteLossError
from . import checkpoint as ck
from .config import TrainConfig, resume_conflicts, save_resolved
from .distributed import DistInfo, all_true, barrier, cleanup, gather_objects, init_distributed
from .logs import CsvLog, TensorBoard

TRAIN_FIELDS = ["step", "epoch", "lr", "loss", "softmax", "aux", "accuracy", "images_per_s", "elapsed_s"]
VERIFY_FIELDS = ["step", "epoch", "accuracy", "accuracy_std", "auc", "eer", "protocol"]
# window accumulators: sum of loss, softmax, aux (per step), correct, seen, steps
_WINDOW = 6


# ---------------------------------------------------------------- building blocks from the config


def build_dataset(cfg: TrainConfig) -> Dataset:
    """The training set described by ``cfg.data`` (identity folder or RecordIO)."""
    from ..data.identity_folder import IdentityFolderDataset, index_from_file_list, index_identity_folder

    d = cfg.data
    hw = tuple(d.input_size) if d.input_size else None
    if not d.root:
        raise DataError("data.root is not set: pass --data DIR (an identity folder of aligned crops) or a .rec file")
    if d.kind == "recordio":
        from ..data.recordio import RecordIODataset

        return RecordIODataset(d.root, flip=d.flip, seed=cfg.runtime.seed, expected_hw=hw)
    if d.kind != "folder":
        raise ValueError(f"data.kind must be 'folder' or 'recordio', got {d.kind!r}")

    def names(path: str | None) -> list[str] | None:
        if path is None:
            return None
        try:
            return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as e:
            raise DataError(f"cannot read identity list {path}: {e}") from e

    if d.file_list:
        files = names(d.file_list) or []
        keep, drop = names(d.identities), names(d.exclude_identities)
        files = [f for f in files if (keep is None or f.split("/")[0] in set(keep))
                 and (drop is None or f.split("/")[0] not in set(drop))]
        index = index_from_file_list(d.root, files, min_images=d.min_images)
    else:
        index = index_identity_folder(d.root, min_images=d.min_images, identities=names(d.identities),
                                      exclude=names(d.exclude_identities), on_empty=d.on_empty,
                                      cache=d.index_cache)
    return IdentityFolderDataset(index, flip=d.flip, seed=cfg.runtime.seed, expected_hw=hw)


def build_objective(cfg: TrainConfig, embed_dim: int, num_classes: int) -> nn.Module:
    """Model A (softmax), B (+ contrastive) or C (+ center), as :class:`~centerloss.losses.JointLoss`."""
    from ..losses import CenterLoss, ContrastiveLoss, JointLoss

    lc = cfg.loss
    if lc.type == "softmax":
        aux, lam = None, 0.0
    elif lc.type == "center":
        aux = CenterLoss(num_classes, embed_dim, alpha=lc.alpha, update=lc.center_update,  # type: ignore[arg-type]
                         reduction=lc.center_reduction)  # type: ignore[arg-type]
        lam = lc.lam
    elif lc.type == "contrastive":
        aux, lam = ContrastiveLoss(margin=lc.margin, reduction=lc.contrastive_reduction), lc.lam
    else:
        raise ValueError(f"loss.type must be 'softmax' (A), 'contrastive' (B) or 'center' (C), got {lc.type!r}")
    return JointLoss(embed_dim, num_classes, aux=aux, lam=lam, bias=lc.classifier_bias)


def build_optimizer(cfg: TrainConfig, net: nn.Module, objective: nn.Module) -> torch.optim.SGD:
    """SGD with momentum; caffe-face's parameter groups: biases at ``bias_lr_mult`` x lr and their own decay.

    Every group carries ``lr_mult``; the engine sets ``lr = schedule(step) * lr_mult`` before each step.
    Paper-mode centers are a buffer and never reach the optimizer.
    """
    o = cfg.optim
    weights, biases, centers = [], [], []
    for module in (net, objective):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith("centers"):
                centers.append(p)
            elif name.endswith("bias"):
                biases.append(p)
            else:
                weights.append(p)
    groups: list[dict[str, Any]] = [{"params": weights, "weight_decay": o.weight_decay, "lr_mult": 1.0}]
    if biases:
        groups.append({"params": biases, "weight_decay": o.bias_weight_decay, "lr_mult": o.bias_lr_mult})
    if centers:  # learnable centers: trained by the loss gradient, no weight decay
        groups.append({"params": centers, "weight_decay": 0.0, "lr_mult": 1.0})
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)


def lr_at(step: int, base: float, milestones: Sequence[int], gamma: float, warmup: int = 0) -> float:
    """Multistep schedule ``base * gamma ** (number of milestones <= step)``, times a linear warm-up
    ``(step + 1) / warmup`` during the first ``warmup`` steps. A pure function of the step (exact resume)."""
    lr = base * gamma ** sum(step >= m for m in milestones)
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


# ---------------------------------------------------------------- pieces of the loop


class SkipSampler(Sampler[int]):
    """Yield a sampler's indices after dropping the first ``skip`` (the batches a resumed run already saw)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it)
        yield from it

    def __len__(self) -> int:
        return len(self.sampler) - self.skip  # type: ignore[arg-type]


class TrainStep(nn.Module):
    """``(images, labels) -> (features, JointOutput)``: the unit DDP wraps (network and classifier together).

    The feature check runs before the objective so that non-finite features never reach the center update.
    """

    def __init__(self, net: nn.Module, objective: nn.Module, info: DistInfo) -> None:
        super().__init__()
        self.net = net
        self.objective = objective
        self._info = info

    def forward(self, x: Tensor, y: Tensor):
        feats = self.net(x)  # (B, d)
        if not all_true(bool(torch.isfinite(feats).all()), self._info):
            raise NonFiniteLossError("the network produced NaN/Inf features")
        return feats, self.objective(feats, y)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def _no_buffer_sync() -> dict[str, bool]:
    """DDP kwargs that stop the per-forward buffer broadcast (the centers sync themselves). Newer PyTorch
    renamed ``broadcast_buffers`` to ``forward_sync_buffers``; both still sync once at construction, which is
    harmless (every rank builds identical centers)."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


# ---------------------------------------------------------------- the trainer


class Trainer:
    """Train ``cfg.model`` under ``cfg.loss`` on ``cfg.data``; ``Trainer(cfg).fit()`` returns a summary dict.

    Args:
        cfg: the resolved config (see :mod:`centerloss.engine.config`).
        dataset: use this dataset instead of building one from ``cfg.data`` (it must return ``(x, y)``; a
            ``classes`` list and a ``set_epoch(epoch)`` method are used when present).
        callbacks: called as ``cb(trainer, row)`` after every optimizer step (row: step, epoch, lr, losses);
            an exception raised by a callback stops training like a crash would (tests use this).
    """

    def __init__(self, cfg: TrainConfig, dataset: Dataset | None = None,
                 callbacks: Sequence[Callable[[Trainer, dict[str, Any]], None]] = ()) -> None:
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.out_dir = Path(cfg.runtime.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self._dataset = dataset

    # -- setup ----------------------------------------------------------------------------------------

    def _find_resume(self) -> ck.Checkpoint | None:
        r = self.cfg.runtime.resume
        if r is None or r == "" or r == "none":
            if ck.list_checkpoints(self.ckpt_dir):
                raise DataError(f"{self.out_dir} already holds checkpoints; pass --resume auto to continue that run, "
                                "or choose another --out folder")
            return None
        if r == "auto":
            p = ck.latest_checkpoint(self.ckpt_dir)
            return ck.read_checkpoint(p) if p is not None else None
        return ck.read_checkpoint(r)

    def _setup(self) -> None:
        cfg = self.cfg
        rt = cfg.runtime
        self.info = info = init_distributed(rt.device)
        self.device = info.device
        if rt.threads > 0:
            torch.set_num_threads(rt.threads)
        self._det_before = torch.are_deterministic_algorithms_enabled()
        if rt.deterministic:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True)
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if rt.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"runtime.amp must be 'none', 'bf16' or 'fp16', got {rt.amp!r}")
        if rt.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("runtime.amp=fp16 needs a CUDA device; use bf16 or none on CPU")
        self.resume_from = self._find_resume()
        if self.resume_from is not None:
            bad = resume_conflicts(self.resume_from.state["config"], cfg)
            if bad:
                raise DataError(f"cannot resume {self.resume_from.path} with a different setup:\n  " + "\n  ".join(bad))

        # data
        self.dataset = self._dataset if self._dataset is not None else build_dataset(cfg)
        n = len(self.dataset)  # type: ignore[arg-type]
        labels = getattr(self.dataset, "labels", None)
        classes = getattr(self.dataset, "classes", None)
        if classes is None:
            if labels is None:
                raise DataError("the dataset needs a 'classes' list or a 'labels' array to size the classifier")
            classes = [str(i) for i in range(int(np.max(labels)) + 1)]
        self.classes = list(classes)
        if self.resume_from is not None and self.resume_from.state.get("classes") != self.classes:
            raise DataError(f"the label map of {self.resume_from.path} differs from the dataset's "
                            f"({len(self.resume_from.state.get('classes', []))} vs {len(self.classes)} identities)")
        w = info.world_size
        for key, val in (("data.batch_size", cfg.data.batch_size), ("runtime.log_every", cfg.runtime.log_every),
                         ("runtime.ckpt_every", cfg.runtime.ckpt_every)):
            if val < 1:
                raise ValueError(f"{key} must be >= 1, got {val}")
        if cfg.data.batch_size % w:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} must be divisible by the world size {w}")
        self.local_batch = cfg.data.batch_size // w
        self.steps_per_epoch = (n // w) // self.local_batch
        if self.steps_per_epoch < 1:
            raise DataError(f"the training set has {n} images, fewer than one global batch of {cfg.data.batch_size}")
        if self.resume_from is not None:  # same identities is not enough: the batches must be the same too
            st = self.resume_from.state
            saved_n = st.get("sampler", {}).get("num_samples")
            if saved_n is not None and saved_n != n:
                raise DataError(f"cannot resume {self.resume_from.path}: it was trained on {saved_n} images, the "
                                f"dataset now has {n}; an exact resume needs the same files")
            if st.get("steps_per_epoch") not in (None, self.steps_per_epoch):
                raise DataError(f"cannot resume {self.resume_from.path}: {st['steps_per_epoch']} steps per epoch "
                                f"then, {self.steps_per_epoch} now (batch size or world size changed)")
        o = cfg.optim
        self.max_steps = o.epochs * self.steps_per_epoch if o.epochs > 0 else o.max_steps
        mult = self.steps_per_epoch if o.milestone_unit == "epoch" else 1
        if o.milestone_unit not in ("step", "epoch"):
            raise ValueError(f"optim.milestone_unit must be 'step' or 'epoch', got {o.milestone_unit!r}")
        self.milestones = [int(m) * mult for m in o.milestones]

        # model, objective, optimizer (same seed on every rank; DDP also broadcasts rank 0's weights)
        torch.manual_seed(rt.seed)
        from ..models import create_model

        self.net = create_model(cfg.model.name, **cfg.model.kwargs)
        embed = getattr(self.net, "embed_dim", None)
        if embed is None:
            raise ValueError(f"model {cfg.model.name!r} does not expose embed_dim")
        self.objective = build_objective(cfg, int(embed), len(self.classes))
        self.net.to(self.device)
        self.objective.to(self.device)
        if rt.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg, self.net, self.objective)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=rt.amp == "fp16")
        self.step = 0
        self.window = torch.zeros(_WINDOW, dtype=torch.float64, device=self.device)
        self.elapsed_before = 0.0
        if self.resume_from is not None:
            st = self.resume_from.state
            ck.restore(self.resume_from, net=self.net, objective=self.objective, optimizer=self.optimizer,
                       device=self.device)
            self.step = int(st["step"])
            self.window = torch.tensor(st["window"], dtype=torch.float64, device=self.device)
            self.elapsed_before = float(st.get("elapsed_s", 0.0))
            if st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
            rngs = st["rng"]
            ck.set_rng_state(rngs[info.rank] if len(rngs) == w else rngs[0])
            if st.get("world_size") != w:
                print(f"note: resuming a {st.get('world_size')}-process run on {w} processes: the same global "
                      "batches, but reduction order differs, so results match only to rounding")
        self.train_step: nn.Module = TrainStep(self.net, self.objective, info)
        if info.enabled:
            self.train_step = nn.parallel.DistributedDataParallel(
                self.train_step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **_no_buffer_sync())

        # run folder and logs (rank 0 writes)
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_resolved(cfg, self.out_dir / "config.yaml")
            (self.out_dir / "classes.json").write_text(json.dumps(self.classes), encoding="utf-8")
            resume_step = self.step if self.resume_from is not None else None
            self.log = CsvLog(self.out_dir / "train_log.csv", TRAIN_FIELDS, resume_step)
            self.vlog = CsvLog(self.out_dir / "verify_log.csv", VERIFY_FIELDS, resume_step)
            self.tb = TensorBoard(self.out_dir / "tb", rt.tensorboard, purge_step=resume_step)
        barrier(info)

    # -- data -----------------------------------------------------------------------------------------

    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        info, cfg = self.info, self.cfg
        sampler = DistributedSampler(self.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.runtime.seed, drop_last=True)
        sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # type: ignore[union-attr]
        workers = cfg.data.workers
        return DataLoader(self.dataset, batch_size=self.local_batch,
                          sampler=SkipSampler(sampler, skip_batches * self.local_batch),
                          num_workers=workers, drop_last=True, pin_memory=self.device.type == "cuda",
                          worker_init_fn=_worker_init if workers > 0 else None,
                          generator=torch.Generator().manual_seed(cfg.runtime.seed + epoch),
                          persistent_workers=False, prefetch_factor=4 if workers > 0 else None)

    # -- checkpoints and verification ------------------------------------------------------------------

    def _state(self, epoch: int, elapsed: float) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.cfg),
            "classes": self.classes,
            "epoch": epoch,
            "batch_in_epoch": self.step - epoch * self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.cfg.data.batch_size,
            "world_size": self.info.world_size,
            "sampler": {"seed": self.cfg.runtime.seed, "epoch": epoch,
                        "consumed_batches": self.step - epoch * self.steps_per_epoch,
                        "num_samples": len(self.dataset)},  # type: ignore[arg-type]
            "window": self.window.cpu().tolist(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "elapsed_s": elapsed,
        }

    def save(self, elapsed: float) -> Path | None:
        """Write a checkpoint of the current step (collective: every rank must call it)."""
        rngs = gather_objects(ck.rng_state(), self.info)
        path = None
        if self.info.is_main:
            epoch = self.step // self.steps_per_epoch
            state = {**self._state(epoch, elapsed), "rng": rngs}
            path = ck.save_checkpoint(self.ckpt_dir, self.step, net=self.net, model_name=self.cfg.model.name,
                                      model_kwargs=dict(self.cfg.model.kwargs), objective=self.objective,
                                      optimizer=self.optimizer, state=state, keep_last=self.cfg.runtime.keep_last)
        barrier(self.info)
        return path

    def verify(self) -> dict[str, Any] | None:
        """Pair verification with the current network (rank 0; every rank must call it)."""
        v = self.cfg.verify
        out = None
        if v.pairs and self.info.is_main:
            from ..eval.features import extract_features
            from ..eval.protocols import read_lfw_pairs
            from ..eval.verification import evaluate_pairs

            pairs = read_lfw_pairs(v.pairs)
            if v.folds is not None:
                pairs = pairs.folds(*v.folds)
            root = v.root or self.cfg.data.root
            items = pairs.items()
            feats = extract_features(self.net, items, root, batch_size=v.batch_size, device=str(self.device),
                                     progress=False)
            self.net.train()
            fa, fb = pairs.gather(items, feats)
            single = np.unique(pairs.fold_ids).size < 2
            res = evaluate_pairs(fa, fb, pairs.issame, pairs.fold_ids, v.pca_dim,
                                 subfolds=v.subfolds if single else None, seed=self.cfg.runtime.seed)
            out = {"step": self.step, "epoch": self.step // self.steps_per_epoch, "accuracy": res.accuracy_mean,
                   "accuracy_std": res.accuracy_std, "auc": res.auc, "eer": res.eer, "protocol": res.protocol}
            self.vlog.write(out)
            self.tb.scalars(out, self.step, "verify")
        barrier(self.info)
        return out

    # -- the loop -------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        det_before = torch.are_deterministic_algorithms_enabled()
        try:
            self._setup()
            return self._fit()
        finally:  # also when _setup fails half-way: restore global torch state, close what was opened
            for name in ("log", "vlog", "tb"):
                if getattr(self, name, None) is not None:
                    getattr(self, name).close()
            torch.use_deterministic_algorithms(det_before)
            if getattr(self, "info", None) is not None:
                cleanup(self.info)

    def _fit(self) -> dict[str, Any]:
        cfg, info, dev = self.cfg, self.info, self.device
        rt, o = cfg.runtime, cfg.optim
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(rt.amp)
        autocast = (lambda: torch.autocast(dev.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        self.net.train()
        self.objective.train()
        bar = None
        if info.is_main and rt.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=2.0,
                       desc=f"train {cfg.model.name}/{cfg.loss.type}")
        t0 = time.perf_counter()
        t_win, img_win = t0, 0
        last_row: dict[str, Any] = {}
        it: Iterator | None = None
        start_step = self.step
        if self.step >= self.max_steps and info.is_main:
            print(f"nothing to do: the checkpoint is at step {self.step} >= max_steps {self.max_steps}")
        while self.step < self.max_steps:
            epoch, k = divmod(self.step, self.steps_per_epoch)
            if it is None or k == 0:
                it = iter(self._loader(epoch, k))
            x, y = next(it)
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = lr_at(self.step, o.lr, self.milestones, o.gamma, o.warmup_steps)
            for g in self.optimizer.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            where = f"step {self.step} (epoch {epoch}, batch {k})"
            try:
                with autocast():
                    _, out = self.train_step(x, y)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e} at {where}; training stopped. {self._last_good()}") from None
            if not all_true(bool(torch.isfinite(out.loss)), info):
                raise NonFiniteLossError(
                    f"non-finite loss at {where}: softmax={out.softmax.item():.4g}, aux={out.aux.item():.4g}; "
                    f"training stopped before the optimizer step. {self._last_good()} Lower optim.lr or "
                    "loss.lam, or use runtime.amp=bf16 instead of fp16.")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            if o.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(list(_unwrap(self.train_step).parameters()), o.grad_clip)
            if not self.scaler.is_enabled():  # (fp16's GradScaler already skips steps with inf/NaN gradients)
                grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
                finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))) if grads else True
                if not all_true(finite, info):
                    raise NonFiniteLossError(
                        f"non-finite gradients at {where} (loss {out.loss.item():.4g}); training stopped before "
                        f"the optimizer step. {self._last_good()} Lower optim.lr or loss.lam, or set optim.grad_clip.")
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            with torch.no_grad():
                correct = (out.logits.argmax(1) == y).sum()
                self.window += torch.stack([out.loss.detach().double(), out.softmax.detach().double(),
                                            out.aux.detach().double(), correct.double(),
                                            torch.tensor(float(y.numel()), dtype=torch.float64, device=dev),
                                            torch.ones((), dtype=torch.float64, device=dev)])
            img_win += y.numel() * info.world_size
            row = {"step": self.step, "epoch": epoch, "lr": lr}
            if self.step % rt.log_every == 0 or self.step == self.max_steps:
                row.update(self._flush_window(time.perf_counter() - t_win, img_win,
                                              self.elapsed_before + time.perf_counter() - t0))
                t_win, img_win = time.perf_counter(), 0
                if info.is_main:
                    self.log.write(row)
                    self.tb.scalars(row, self.step, "train")
                last_row = row
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}", lr=f"{lr:.3g}")
            if bar is not None:
                bar.update(1)
            if self.step % rt.ckpt_every == 0 or self.step == self.max_steps:
                self.save(self.elapsed_before + time.perf_counter() - t0)
            if (self.cfg.verify.every and self.step % self.cfg.verify.every == 0) or (
                    self.step == self.max_steps and self.cfg.verify.pairs):
                self.verify()
            for cb in self.callbacks:
                cb(self, row)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        total = self.elapsed_before + elapsed
        summary = {"steps": self.step, "epochs": self.step / self.steps_per_epoch,
                   "steps_this_session": self.step - start_step, "seconds_this_session": elapsed,
                   "images_per_s": (self.step - start_step) * cfg.data.batch_size / max(elapsed, 1e-9),
                   "seconds_total": total, "images_per_s_total": self.step * cfg.data.batch_size / max(total, 1e-9),
                   "num_classes": len(self.classes), "num_images": len(self.dataset),  # type: ignore[arg-type]
                   "world_size": info.world_size, "device": str(dev), "final": last_row}
        if info.is_main:
            from ..models.io import save_model

            save_model(self.out_dir / "model.safetensors", self.net, cfg.model.name, dict(cfg.model.kwargs),
                       {"classes": self.classes, "step": self.step})
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return summary

    def _flush_window(self, dt: float, images: int, elapsed: float) -> dict[str, Any]:
        w = self.window.clone()
        if self.info.enabled:
            import torch.distributed as dist

            dist.all_reduce(w)
            w[5] /= self.info.world_size  # steps are counted once per rank
            w[:3] /= self.info.world_size  # per-rank batch means -> global batch mean
        s = w.tolist()
        self.window.zero_()
        n = max(s[5], 1.0)
        return {"loss": s[0] / n, "softmax": s[1] / n, "aux": s[2] / n, "accuracy": s[3] / max(s[4], 1.0),
                "images_per_s": images / max(dt, 1e-9), "elapsed_s": elapsed}

    def _last_good(self) -> str:
        p = ck.latest_checkpoint(self.ckpt_dir)
        return f"The last good checkpoint is {p} (resume with --resume {p})." if p else "No checkpoint was written yet."


def train(cfg: TrainConfig, **kw: Any) -> dict[str, Any]:
    """``Trainer(cfg, **kw).fit()``."""
    return Trainer(cfg, **kw).fit()

