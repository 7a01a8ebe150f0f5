"""The paper's toy experiment (docs/METHOD.md, "Toy experiment"; Figs. 2-3): LeNets++ with 2-D features on MNIST.

For each lambda (and center update) it trains LeNets++ through the engine's :class:`~centerloss.engine.trainer.Trainer`
under ``L = L_S + lambda * L_C`` (lambda = 0 is softmax alone), then measures test accuracy and how compact the
classes are, and draws the feature distributions. Every run is seeded (bit-for-bit repeatable on CPU) and
resumable: rerunning the same command continues unfinished runs from their checkpoints.

Run folder: ``config.yaml`` (resolved), ``report.json``, ``report.md``, ``fig2_softmax.png``,
``fig3_lambdas.png``, ``compactness.png`` (and ``center_trajectories.png`` when recorded), and one engine run
folder per (lambda, update) with its checkpoints, log and ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import config as cfgmod
from ..errors import ConfigError

Update = Literal["paper", "learnable", "caffe"]


@dataclass
class MnistConfig:
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.01])  # 0 = softmax only
    updates: list[Update] = field(default_factory=lambda: ["paper"])  # center update rules to compare
    train_preset: str = "mnist_lenetpp"  # the engine preset every run starts from
    train: dict[str, Any] = field(default_factory=dict)  # overrides of that preset (a nested mapping)
    data_dir: str | None = None  # None: $CENTERLOSS_MNIST_DIR, else $CENTERLOSS_DATA/mnist
    train_subset: int = 0  # use only the first N training images (0 = all 60k)
    test_subset: int = 0  # evaluate on the first N test images (0 = all 10k)
    plot_points: int = 10000  # points drawn per panel
    train_eval_images: int = 10000  # training images whose features are extracted (train accuracy, Fig. 2a)
    trajectory_every: int = 0  # record the centers every N steps (0: off)
    workers: int = 1  # run this many (lambda, update) runs at once, in separate processes

    def __post_init__(self) -> None:
        if not self.lambdas or any(not lam >= 0 or lam == float("inf") for lam in self.lambdas):
            raise ConfigError(f"lambdas must be a non-empty list of finite numbers >= 0, got {self.lambdas}")
        if not self.updates:
            raise ConfigError("updates must name at least one center update")
        if min(self.train_subset, self.test_subset, self.trajectory_every) < 0 or self.workers < 1:
            raise ConfigError("train_subset, test_subset and trajectory_every must be >= 0, workers >= 1")
        self.train_config(self.lambdas[0], self.updates[0], Path("runs/check"))  # the train section is valid

    def train_config(self, lam: float, update: str, out: Path):
        """The engine config of one run: the preset, this experiment's ``train`` overrides, then the run's
        own lambda, update and folder (resumed if it exists)."""
        from ..engine.config import TrainConfig

        if "update" in self.train.get("aux", {}).get("kwargs", {}):
            raise ConfigError("set the center update through `updates`, not train.aux.kwargs.update")
        own = {"aux.lam": lam, "aux.kwargs.update": update, "runtime.out_dir": str(out), "runtime.resume": "auto"}
        if self.workers > 1:  # parallel runs share the cores
            own["runtime.threads"] = max(1, (os.cpu_count() or 1) // self.workers)
        data = cfgmod.merge(cfgmod.load_preset("train", self.train_preset), self.train)
        return cfgmod.from_dict(TrainConfig, cfgmod.apply_overrides(data, own), f"mnist train ({self.train_preset})")


@dataclass
class RunResult:
    lam: float
    update: str
    test_accuracy: float
    train_accuracy: float
    intra_mean: float
    inter_mean: float
    inter_min: float
    compactness: float
    compactness_min: float
    seconds: float
    final_softmax_loss: float
    final_center_loss: float


def run_name(lam: float, update: str) -> str:
    return f"lambda_{lam:g}" + ("" if update == "paper" else f"_{update}")


def _load_data(cfg: MnistConfig):
    from ..data.mnist import load_mnist

    train, test = load_mnist(cfg.data_dir)
    if cfg.train_subset:
        train.images, train.labels = train.images[: cfg.train_subset], train.labels[: cfg.train_subset]
    if cfg.test_subset:
        test.images, test.labels = test.images[: cfg.test_subset], test.labels[: cfg.test_subset]
    return train, test


def extract(model, images, batch: int = 1000) -> np.ndarray:
    """2-D features (N, d) of uint8 images (N, 28, 28), in eval mode."""
    import torch

    from ..data.mnist import normalize

    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        out = [model(normalize(images[i: i + batch]).to(dev)).float().cpu() for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


class CenterTrajectory:
    """Engine callback: the centers every ``every`` steps (the "center trajectory" of the update rules)."""

    def __init__(self, every: int) -> None:
        self.every, self.steps, self.centers = every, [], []

    def on_step_end(self, trainer, row) -> None:
        if self.every and (trainer.step % self.every == 0 or trainer.step == trainer.max_steps):
            self.steps.append(trainer.step)
            self.centers.append(trainer.objective.aux.centers.detach().float().cpu().numpy().copy())


def _last_logged(run_dir: Path) -> dict[str, float]:
    from ..engine.logs import read_csv

    rows = read_csv(run_dir / "train_log.csv")
    return {k: float(v) for k, v in rows[-1].items()} if rows else {}


def run_one(cfg: MnistConfig, lam: float, update: str, out_dir: Path) -> dict[str, Any]:
    """Train and measure one (lambda, update). Safe to call in a subprocess."""
    from ..data.mnist import MnistDataset
    from ..engine.trainer import Trainer
    from ..eval.compactness import class_compactness

    train, test = _load_data(cfg)
    run_dir = out_dir / run_name(lam, update)
    traj = CenterTrajectory(cfg.trajectory_every)
    t0 = time.perf_counter()
    trainer = Trainer(cfg.train_config(lam, update, run_dir), dataset=MnistDataset(train), callbacks=[traj])
    summary = trainer.fit()
    secs = summary["seconds_total"] if summary["steps_this_session"] == 0 else time.perf_counter() - t0
    f_test = extract(trainer.net, test.images)
    f_train = extract(trainer.net, train.images[: cfg.train_eval_images])
    w = trainer.objective.head.weight.detach().float().cpu().numpy()  # (10, d), no bias
    y_tr = train.labels[: cfg.train_eval_images].numpy()
    final = summary["final"] or _last_logged(run_dir)  # a finished run resumed: its last log row
    res = RunResult(lam=lam, update=update, test_accuracy=float(((f_test @ w.T).argmax(1) == test.labels.numpy()).mean()),
                    train_accuracy=float(((f_train @ w.T).argmax(1) == y_tr).mean()), seconds=round(secs, 2),
                    final_softmax_loss=final.get("softmax", float("nan")), final_center_loss=final.get("aux", float("nan")),
                    **class_compactness(f_test, test.labels.numpy()))
    print(f"[{run_name(lam, update)}] test acc {res.test_accuracy * 100:.2f}%  compactness {res.compactness:.4f}  "
          f"({secs:.0f} s)", flush=True)
    return {"result": res, "f_test": f_test, "f_train": f_train,
            "centers": trainer.objective.aux.centers.detach().float().cpu().numpy(),
            "trajectory": {"steps": traj.steps, "centers": np.stack(traj.centers) if traj.centers else None}}


def run_experiment(cfg: MnistConfig, out_dir: Path, preset: str = "custom") -> dict[str, Any]:
    """Every (lambda, update) run, then the report and figures; returns the report dict."""
    from ..utils.atomic import check_output_dir

    check_output_dir(out_dir)
    cfgmod.save(cfg, out_dir / "config.yaml")
    jobs = [(cfg, lam, upd, out_dir) for upd in cfg.updates for lam in cfg.lambdas]
    if cfg.workers > 1:  # independent runs in parallel processes (useful on a GPU with room to spare)
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            runs = list(pool.map(run_one, *zip(*jobs)))
    else:
        runs = [run_one(*j) for j in jobs]
    from .mnist_report import write_report

    return write_report(cfg, runs, out_dir, preset, _load_data(cfg))


def load_config(preset: str, overrides: list[str] | None = None, extra: dict[str, Any] | None = None) -> MnistConfig:
    return cfgmod.load(MnistConfig, "mnist", preset, overrides, extra)


def describe(cfg: MnistConfig) -> dict[str, Any]:
    """The resolved engine config of the first run, for the report (what every run shares)."""
    return dataclasses.asdict(cfg.train_config(cfg.lambdas[0], cfg.updates[0], Path("<run>")))


__all__ = ["MnistConfig", "RunResult", "asdict", "describe", "load_config", "run_experiment", "run_one"]
