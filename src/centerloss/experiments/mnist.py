"""The paper's toy experiment (docs/METHOD.md, "Toy experiment"; Figs. 2-3): LeNets++ with 2-D features on MNIST.

For each lambda (and center update) it trains LeNets++ through the engine's :class:`~centerloss.engine.trainer.Trainer`
under ``L = L_S + lambda * L_C`` (lambda = 0 is softmax alone), then measures test accuracy and how compact the
classes are, and draws the feature distributions. Every run is seeded (bit-for-bit repeatable on CPU) and
resumable: rerunning the same command continues unfinished runs from their checkpoints.

Run folder: ``config.yaml`` (resolved), ``report.json``, ``report.md``, ``fig2_softmax.png``,
``fig3_lambdas.png``, ``compactness.png`` (and ``center_trajectories.png`` when recorded), and one engine run
folder per (lambda, update) with its checkpoints, log, ``model.safetensors`` and, once measured,
``mnist_result.json`` + ``measured.npz`` (its result and test/train features; a rerun reads them back).

``reuse`` names other experiment folders: a finished run there with the same train config (up to the keys
:func:`~centerloss.engine.config.finished_conflicts` leaves free) and the same measurement settings is copied
(its record, features and log; no checkpoints) instead of trained again, and ``reused_from.json`` says from
where. A sweep split across machines or sessions is put back together this way.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import config as cfgmod
from ..errors import ConfigError, DataError

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
    reuse: list[str] = field(default_factory=list)  # experiment folders whose identical finished runs are copied

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


RECORD, MEASURED = "mnist_result.json", "measured.npz"
_ARRAYS = ("f_test", "f_train", "centers", "trajectory_steps", "trajectory_centers")
_MEASURE_KEYS = ("train_subset", "test_subset", "train_eval_images", "trajectory_every")
_LENGTH = ("max_steps", "epochs")  # schedule keys: a finished run's record stands only for its own length


def _save_measured(run_dir: Path, cfg: MnistConfig, tcfg, run: dict[str, Any]) -> None:
    """The run's features (``measured.npz``), then its record (``mnist_result.json``, last: it marks them complete)."""
    from ..utils.atomic import atomic_path, write_json
    from ..utils.device import resolve_device
    from ..utils.machine import machine_info

    t = run["trajectory"]
    arrays = {"f_test": run["f_test"], "f_train": run["f_train"], "centers": run["centers"],
              "trajectory_steps": np.asarray(t["steps"], dtype=np.int64),
              "trajectory_centers": t["centers"] if t["centers"] is not None else np.zeros((0, 0, 0), np.float32)}
    with atomic_path(run_dir / MEASURED) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    write_json(run_dir / RECORD, {"result": asdict(run["result"]), "train_config": dataclasses.asdict(tcfg),
                                  "measure": _measure_settings(cfg),
                                  "machine": machine_info(resolve_device(tcfg.runtime.device))})


def _measure_settings(cfg: MnistConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in _MEASURE_KEYS}


def _copy_conflicts(rec: dict[str, Any], cfg: MnistConfig, tcfg) -> list[str]:
    """Why a record from another folder cannot stand for this run ([] if it can): a finished training of another
    setup (:func:`~centerloss.engine.config.finished_conflicts`), or other measurement settings."""
    from ..engine.config import config_conflicts, finished_conflicts

    return (finished_conflicts(rec.get("train_config", {}), dataclasses.asdict(tcfg))
            + config_conflicts(rec.get("measure", {}), _measure_settings(cfg), set()))


def _read_record(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable run record ({e}); remove it to measure the run again") from None


def _load_measured(run_dir: Path, cfg: MnistConfig, tcfg) -> dict[str, Any] | None:
    """The finished run's result and features from its record; None (train on, measure again) if it has none, or
    one of another length or other measurement settings. A record of another setup is refused, as the engine
    refuses to resume a checkpoint of one."""
    from ..engine.config import RESUME_FREE_KEYS, config_conflicts

    if not (run_dir / RECORD).is_file():
        return None
    rec = _read_record(run_dir / RECORD)
    saved, now = rec.get("train_config", {}), dataclasses.asdict(tcfg)
    bad = config_conflicts(saved, now, RESUME_FREE_KEYS)
    if bad:
        raise ConfigError(f"{run_dir} holds a finished run of a different setup: " + "; ".join(bad[:3]))
    other_length = any(saved.get("schedule", {}).get(k) != now["schedule"][k] for k in _LENGTH)
    if other_length or rec.get("measure") != _measure_settings(cfg):
        return None
    return _read_measured(run_dir, rec)


def _read_measured(run_dir: Path, rec: dict[str, Any]) -> dict[str, Any]:
    try:
        with np.load(run_dir / MEASURED, allow_pickle=False) as z:
            a = {k: z[k] for k in _ARRAYS}
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{run_dir / MEASURED}: unreadable features ({e}); remove {RECORD} to measure again") from None
    traj = {"steps": a["trajectory_steps"].tolist(), "centers": a["trajectory_centers"] if a["trajectory_steps"].size else None}
    return {"result": RunResult(**rec["result"]), "f_test": a["f_test"], "f_train": a["f_train"],
            "centers": a["centers"], "trajectory": traj}


def _reuse_into(run_dir: Path, cfg: MnistConfig, tcfg) -> None:
    """Copy an identical finished run from one of ``cfg.reuse``'s folders into ``run_dir`` (atomically), unless
    ``run_dir`` has a record or checkpoints of its own."""
    import shutil

    from ..utils.atomic import atomic_dir, write_json

    if not cfg.reuse or (run_dir / RECORD).exists() or (run_dir / "checkpoints").exists():
        return
    for src in (Path(r) / run_dir.name for r in cfg.reuse):
        if not (src / RECORD).is_file() or _copy_conflicts(_read_record(src / RECORD), cfg, tcfg):
            continue
        with atomic_dir(run_dir) as tmp:
            for name in (MEASURED, "train_log.csv", "config.yaml", "summary.json", RECORD):
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            write_json(tmp / "reused_from.json", {"source": str(src), "why": "same train config and measurements"})
        print(f"[{run_dir.name}] reused the identical finished run {src}", flush=True)
        return


def run_one(cfg: MnistConfig, lam: float, update: str, out_dir: Path) -> dict[str, Any]:
    """Train and measure one (lambda, update), or read back a finished one. Safe to call in a subprocess."""
    run_dir = out_dir / run_name(lam, update)
    tcfg = cfg.train_config(lam, update, run_dir)
    _reuse_into(run_dir, cfg, tcfg)
    done = _load_measured(run_dir, cfg, tcfg)
    if done is None:
        (run_dir / "reused_from.json").unlink(missing_ok=True)  # trained here from now on, if it was copied
        done = _train_and_measure(cfg, tcfg, lam, update, run_dir)
        _save_measured(run_dir, cfg, tcfg, done)
    res = done["result"]
    print(f"[{run_dir.name}] test acc {res.test_accuracy * 100:.2f}%  compactness {res.compactness:.4f}  "
          f"({res.seconds:.0f} s)", flush=True)
    return done


def _train_and_measure(cfg: MnistConfig, tcfg, lam: float, update: str, run_dir: Path) -> dict[str, Any]:
    from ..data.mnist import MnistDataset
    from ..engine.trainer import Trainer
    from ..eval.compactness import class_compactness

    train, test = _load_data(cfg)
    traj = CenterTrajectory(cfg.trajectory_every)
    trainer = Trainer(tcfg, dataset=MnistDataset(train), callbacks=[traj])
    summary = trainer.fit()
    secs = summary["seconds_total"]  # training time over every session of a resumed run
    f_test = extract(trainer.net, test.images)
    f_train = extract(trainer.net, train.images[: cfg.train_eval_images])
    w = trainer.objective.head.weight.detach().float().cpu().numpy()  # (10, d), no bias
    y_tr = train.labels[: cfg.train_eval_images].numpy()
    final = summary["final"] or _last_logged(run_dir)  # a finished run resumed: its last log row
    res = RunResult(lam=lam, update=update, test_accuracy=float(((f_test @ w.T).argmax(1) == test.labels.numpy()).mean()),
                    train_accuracy=float(((f_train @ w.T).argmax(1) == y_tr).mean()), seconds=round(secs, 2),
                    final_softmax_loss=final.get("softmax", float("nan")), final_center_loss=final.get("aux", float("nan")),
                    **class_compactness(f_test, test.labels.numpy()))
    return {"result": res, "f_test": f_test, "f_train": f_train,
            "centers": trainer.objective.aux.centers.detach().float().cpu().numpy(),
            "trajectory": {"steps": traj.steps, "centers": np.stack(traj.centers) if traj.centers else None}}


def run_experiment(cfg: MnistConfig, out_dir: Path, preset: str = "custom") -> dict[str, Any]:
    """Every (lambda, update) run, then the report and figures; returns the report dict."""
    from ..utils.atomic import check_output_dir

    missing = [r for r in cfg.reuse if not Path(r).is_dir()]
    if missing:  # a typo would otherwise mean hours of training what was meant to be copied
        raise DataError(f"reuse: {missing[0]} is not a folder (an earlier `centerloss mnist` --out)")
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
