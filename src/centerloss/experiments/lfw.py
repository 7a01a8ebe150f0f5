"""The paper's face experiment at laptop scale: runs (models A, B, C, margin heads, hyper-parameter sweeps)
trained on LFW identities that never appear in the held-out pairs, then verified on those pairs with the
evaluation protocol of :mod:`centerloss.eval` (flip-concatenated features, training-fold mean (and optional
PCA), cosine, threshold chosen on the other folds).

Why this split is honest: LFW's 10 folds are person-disjoint, so removing every identity named in the held-out
folds' pairs from training makes those pairs an open-set test, as in the paper (whose training data had the
test identities removed). Training identities need ``min_images`` (default 2) crops whose face was detected
(the paper discards training images whose detection fails; test images always keep a crop).

With several held-out folds (the ``cpu`` presets hold out folds 1-5) the held-out pairs are scored by k-fold
cross-validation over those person-disjoint folds; with one fold, by stratified sub-folds of it. Every run is
scored on the same (sub-)folds, so the per-fold differences between runs are paired.

A config names ``runs`` (a train preset plus overrides each), optional ``grids`` (one run per value of one
key: the Fig. 5 sweeps), ``seeds``, and optional ``select`` groups: the members of a group are trained on the
first seed only and the best of them (by held-out accuracy) is trained on the other seeds, so the later seeds
measure the chosen setting without the selection's optimism. Everything resumes: rerunning the command
continues unfinished trainings from their checkpoints and reuses finished evaluations. ``reuse`` names earlier
experiments (e.g. the Fig. 5 sweep): a (run, seed) whose complete train config and training files equal one of
their finished trainings is copied from there instead of retrained (training is deterministic on CPU), and
only its held-out evaluation is recomputed; ``reused_from.json`` in the run folder and the report say so.

Run folder: ``config.yaml``, ``train_files.txt``, ``heldout_identities.txt``, ``runs/<run>/seed<k>/`` (an
engine run folder each, plus ``eval.json`` and ``features.npz``), ``report.json``, ``report.md`` and plots.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import config as cfgmod
from ..errors import ConfigError, DataError, NonFiniteLossError


@dataclass
class RunSpec:
    preset: str  # a train preset (configs/train/) or .yaml path
    set: dict[str, Any] = field(default_factory=dict)  # dotted overrides, e.g. {aux.lam: 0.01}
    label: str = ""  # what tables call it (default: the run's name)


@dataclass
class GridSpec:
    preset: str  # the train preset every value starts from
    key: str  # the dotted key that varies, e.g. aux.lam
    values: list[float]
    set: dict[str, Any] = field(default_factory=dict)  # fixed overrides of every value


@dataclass
class LfwExperimentConfig:
    aligned: str = "runs/lfw_aligned"  # `centerloss align` output for all of LFW (crops + manifest.csv)
    pairs: str | None = None  # LFW View 2 pairs.txt (None: $CENTERLOSS_DATA/lfw/pairs.txt)
    holdout_folds: list[int] = field(default_factory=lambda: [1])  # 1-based LFW folds used only for testing
    runs: dict[str, RunSpec] = field(default_factory=dict)
    grids: dict[str, GridSpec] = field(default_factory=dict)  # name -> runs "<name>=<value>"
    select: dict[str, list[str]] = field(default_factory=dict)  # group -> runs tuned on seeds[0]
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline: str = "A"  # paired differences of every run against this one (a select group: its choice)
    roc: list[str] = field(default_factory=list)  # runs drawn in roc.png (default: `runs`, or the choices)
    train: dict[str, Any] = field(default_factory=dict)  # overrides applied to every run's train config
    min_images: int = 2  # training identities need at least this many usable crops
    detected_only: bool = True  # train only on crops whose face was detected (needs manifest.csv)
    device: str = "cpu"
    parallel: int = 1  # trainings at once, in separate processes (each with runtime.threads = cores / parallel)
    subfolds: int = 10  # with a single held-out fold: stratified sub-folds of it
    pca_dim: int | None = None  # PCA fitted on the training folds (None: mean-subtracted cosine only)
    fars: list[float] = field(default_factory=lambda: [0.01, 0.1])
    eval_batch: int = 128
    out_dir: str = "runs/lfw_cpu"
    reuse: list[str] = field(default_factory=list)  # finished experiments whose identical trainings are copied

    def __post_init__(self) -> None:
        names = self.run_names()
        if not names:
            raise ConfigError("the experiment has no runs: give `runs` (and/or `grids`)")
        for group, members in self.select.items():
            missing = sorted(set(members) - set(names))
            if missing or not members:
                raise ConfigError(f"select.{group}: unknown runs {missing}; runs are {names}")
        if not self.seeds or self.parallel < 1 or self.min_images < 1:
            raise ConfigError("seeds must be non-empty, parallel and min_images >= 1")
        for name in names:
            self.train_overrides(name)  # the train configs load (presets exist, keys are valid) now

    def run_specs(self) -> dict[str, RunSpec]:
        """``runs`` plus one run per grid value (``<grid>=<value>``)."""
        out = dict(self.runs)
        for g, spec in self.grids.items():
            for v in spec.values:
                out[f"{g}={v:g}"] = RunSpec(spec.preset, {**spec.set, spec.key: v}, f"{g} = {v:g}")
        return out

    def run_names(self) -> list[str]:
        return list(self.run_specs())

    def train_overrides(self, name: str) -> Any:
        """The run's train config (without the experiment-filled data and run-folder keys)."""
        from ..engine.config import TrainConfig

        spec = self.run_specs()[name]
        data = cfgmod.merge(cfgmod.load_preset("train", spec.preset), self.train)
        return cfgmod.from_dict(TrainConfig, cfgmod.apply_overrides(data, spec.set), f"lfw run {name}")


def default_pairs() -> str:
    base = os.environ.get("CENTERLOSS_DATA")
    if not base:
        raise ConfigError("no pairs file: pass --pairs PATH (LFW's pairs.txt) or set CENTERLOSS_DATA (holding lfw/)")
    return str(Path(base) / "lfw" / "pairs.txt")


# ---------------------------------------------------------------- data split


def read_manifest(aligned: Path) -> dict[str, bool] | None:
    """``{source path: detected}`` from the aligner's manifest, or None if there is none."""
    mf = aligned / "manifest.csv"
    if not mf.is_file():
        return None
    out: dict[str, bool] = {}
    with open(mf, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "detected"} <= set(reader.fieldnames):
            raise DataError(f"{mf}: expected columns 'path' and 'detected', got {reader.fieldnames}")
        for row in reader:
            out[row["path"]] = str(row["detected"]).strip().lower() in ("1", "true", "yes")
    return out


def training_split(aligned: Path, heldout_people: set[str], min_images: int, detected_only: bool
                   ) -> tuple[list[str], dict[str, Any]]:
    """Crops (relative paths) of people not in ``heldout_people`` with >= ``min_images`` usable crops."""
    from ..utils.images import IMAGE_EXTENSIONS

    manifest = read_manifest(aligned) if detected_only else None
    detected = {os.path.splitext(p)[0]: d for p, d in (manifest or {}).items()}  # crops share the stem
    by_person: dict[str, list[str]] = {}
    n_undetected = 0
    with os.scandir(aligned) as it:
        people = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for person in (p for p in people if p not in heldout_people):
        with os.scandir(aligned / person) as it:
            files = sorted(e.name for e in it if e.name.lower().endswith(IMAGE_EXTENSIONS))
        keep = [f"{person}/{f}" for f in files
                if manifest is None or detected.get(os.path.splitext(f"{person}/{f}")[0], False)]
        n_undetected += len(files) - len(keep)
        if len(keep) >= min_images:
            by_person[person] = keep
    files = [f for p in sorted(by_person) for f in by_person[p]]
    if not files:
        raise DataError(f"no training identity in {aligned} has >= {min_images} usable crops outside the held-out "
                        "pairs; is this the aligned LFW folder?")
    counts = [len(v) for v in by_person.values()]
    stats = {"identities": len(by_person), "images": len(files), "max_per_identity": max(counts),
             "median_per_identity": float(np.median(counts)), "dropped_undetected": n_undetected,
             "manifest": manifest is not None}
    return files, stats


def _crop_paths(aligned: Path, items: list[str]) -> dict[str, str]:
    """Map pairs items (``Name/Name_0001.jpg``) to crops under ``aligned`` (same stem, any image suffix)."""
    from ..utils.images import IMAGE_EXTENSIONS

    out, missing = {}, []
    for p in items:
        stem = os.path.splitext(p)[0]
        found = next((c for c in (p, *(stem + e for e in IMAGE_EXTENSIONS)) if (aligned / c).is_file()), None)
        if found is None:
            missing.append(p)
        else:
            out[p] = found
    if missing:
        raise DataError(f"{len(missing)} of the {len(items)} held-out images have no crop in {aligned}, e.g. "
                        f"{missing[:3]}; align LFW with --mode test so that every test image gets a crop")
    return out


# ---------------------------------------------------------------- one (run, seed): train, then verify


@dataclass
class Job:
    """Everything a worker process needs to train and score one (run, seed)."""

    cfg: LfwExperimentConfig
    name: str
    seed: int
    folder: str
    train_list: str
    threads: int


def job_train_config(job: Job):
    """The complete train config of one (run, seed): the run's, plus the experiment's data and run folder."""
    from ..engine.config import apply

    return apply(job.cfg.train_overrides(job.name), {
        "data.root": str(Path(job.cfg.aligned).resolve()), "data.file_list": job.train_list,
        "data.min_images": job.cfg.min_images, "runtime.out_dir": job.folder, "runtime.resume": "auto",
        "runtime.seed": job.seed, "runtime.device": job.cfg.device, "runtime.threads": job.threads})


def run_job(job: Job) -> dict[str, Any]:
    """Train (or resume, or reuse) the run and verify it on the held-out pairs; both results stay in its folder."""
    import json

    from ..engine.trainer import Trainer
    from ..utils.atomic import write_json
    from ..utils.machine import LoadSampler

    folder = Path(job.folder)
    tcfg = job_train_config(job)
    reused = reuse_finished(job, tcfg)
    if reused is not None:
        return {"name": job.name, "seed": job.seed, "train": reused,
                "verification": _verify(job, folder, reused["steps"])}
    record = folder / "lfw_train.json"
    with LoadSampler() as load:
        t0 = time.perf_counter()
        try:
            summary = Trainer(tcfg).fit()
        except NonFiniteLossError as e:  # a setting of a sweep that diverges is a result, not a crash
            print(f"   {job.name} seed {job.seed}: diverged ({e})", flush=True)
            return {"name": job.name, "seed": job.seed, "failed": str(e).split(";")[0],
                    "train": {"failed": str(e), "config": dataclasses.asdict(tcfg)}, "verification": None}
        wall = time.perf_counter() - t0
    if summary["steps_this_session"] == 0 and record.is_file():  # finished earlier: keep that session's record
        train = json.loads(record.read_text(encoding="utf-8"))
    else:
        train = {**summary, "wall_s": round(wall, 1), "load_avg": load.summary(), "threads": job.threads,
                 "config": dataclasses.asdict(tcfg)}
        write_json(record, train)
    return {"name": job.name, "seed": job.seed, "train": train, "verification": _verify(job, folder, summary["steps"])}


def find_reusable(job: Job, tcfg) -> Path | None:
    """A finished training in one of ``cfg.reuse``'s experiments with the same seed, the same train config (up to
    the keys :func:`~centerloss.engine.config.finished_conflicts` leaves free) and a training file list of the same
    content; None if there is none."""
    import json

    from ..engine.config import finished_conflicts

    want, files = dataclasses.asdict(tcfg), Path(job.train_list).read_bytes()
    for src in job.cfg.reuse:
        for rec in sorted(Path(src).glob(f"runs/*/seed{job.seed}/lfw_train.json")):
            saved = json.loads(rec.read_text(encoding="utf-8")).get("config")
            if (not saved or finished_conflicts(saved, want, frozenset({"data.file_list"}))
                    or not (rec.parent / "model.safetensors").is_file()):
                continue
            listed = Path(saved["data"]["file_list"])
            if listed.is_file() and listed.read_bytes() == files:
                return rec.parent
    return None


def reuse_finished(job: Job, tcfg) -> dict[str, Any] | None:
    """Copy a finished identical training (:func:`find_reusable`) into the job's folder, atomically, and return its
    training record; None (train here) if the folder already has checkpoints of its own or nothing matches.
    Its evaluation is not copied: the held-out pairs are scored again by this experiment."""
    import json
    import shutil

    from ..utils.atomic import atomic_dir, write_json

    folder = Path(job.folder)
    marker = folder / "reused_from.json"
    if not marker.is_file():
        src = find_reusable(job, tcfg) if job.cfg.reuse and not (folder / "checkpoints").exists() else None
        if src is None:
            return None
        with atomic_dir(folder) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("eval.json", "features.npz"))
            write_json(tmp / "reused_from.json", {"source": str(src), "seed": job.seed,
                                                  "why": "same seed, train config and training files"})
        print(f"   {job.name} seed {job.seed}: reused the identical finished training {src}", flush=True)
    record = json.loads((folder / "lfw_train.json").read_text(encoding="utf-8"))
    return {**record, "reused_from": json.loads(marker.read_text(encoding="utf-8"))["source"]}


def _verify(job: Job, folder: Path, step: int) -> dict[str, Any]:
    """The run's held-out verification, cached in ``eval.json`` for the model's step."""
    import json

    from ..eval import features as feats_mod
    from ..eval.verification import evaluate_pairs
    from ..models.io import load_model
    from ..utils.atomic import write_json

    cached = folder / "eval.json"
    if cached.is_file():
        rec = json.loads(cached.read_text(encoding="utf-8"))
        if rec.get("step") == step:
            return rec["verification"]
    test, test_items = _heldout(job.cfg)
    net, meta = load_model(folder / "model.safetensors")
    t0 = time.perf_counter()
    f = feats_mod.extract_features(net, test_items, job.cfg.aligned, batch_size=job.cfg.eval_batch,
                                   combine="concat", device=job.cfg.device, progress=False)
    feats_mod.save_features(folder / "features.npz", test.items(), f, {"run": job.name, "seed": job.seed,
                                                                     "step": meta.get("step")})
    fa, fb = test.gather(test.items(), f)
    res = evaluate_pairs(fa, fb, test.issame, test.fold_ids, job.cfg.pca_dim, seed=job.seed,
                         subfolds=job.cfg.subfolds if len(job.cfg.holdout_folds) == 1 else None,
                         fars=job.cfg.fars)
    ver = {**res.to_dict(), "eval_s": round(time.perf_counter() - t0, 1),
           "params": int(sum(p.numel() for p in net.parameters())), "network": meta["model"]}
    write_json(cached, {"step": step, "verification": ver})
    return ver


def _heldout(cfg: LfwExperimentConfig):
    """The held-out pairs and the crop of every image they name."""
    from ..eval.protocols import read_lfw_pairs

    all_pairs = read_lfw_pairs(cfg.pairs or default_pairs())
    n_folds = int(all_pairs.fold_ids.max()) + 1
    if not cfg.holdout_folds or not all(1 <= f <= n_folds for f in cfg.holdout_folds):
        raise ConfigError(f"holdout_folds must be 1-based fold numbers in 1..{n_folds}, got {cfg.holdout_folds}")
    test = all_pairs.folds(*[f - 1 for f in cfg.holdout_folds])
    crop_of = _crop_paths(Path(cfg.aligned), test.items())
    return test, [crop_of[p] for p in test.items()]


# ---------------------------------------------------------------- the experiment


def _run_jobs(jobs: list[Job], parallel: int) -> list[dict[str, Any]]:
    if parallel <= 1 or len(jobs) <= 1:
        return [run_job(j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # not a multiprocessing.Pool: its daemonic workers could not start DataLoader workers of their own
    with ProcessPoolExecutor(min(parallel, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(run_job, jobs))


def _folders(cfg: LfwExperimentConfig, out: Path) -> dict[str, str]:
    """Run name -> folder name; runs whose train configs are identical share one folder (trained once)."""
    seen: dict[str, str] = {}
    folders = {}
    for name in cfg.run_names():
        key = cfgmod.to_yaml(cfg.train_overrides(name))
        folders[name] = seen.setdefault(key, name.replace("/", "_"))
    return folders


def plan(cfg: LfwExperimentConfig, out: Path, train_list: Path, best: set[str] | None = None) -> list[Job]:
    """The (run, seed) jobs. First pass (``best`` None): every run on every seed, except the members of a
    ``select`` group, which run on the first seed only. Second pass: the chosen members on the other seeds.
    Runs with identical train configs share a folder and are trained once."""
    folders = _folders(cfg, out)
    threads = max(1, (os.cpu_count() or 1) // cfg.parallel)
    grouped = {m for members in cfg.select.values() for m in members}
    names = cfg.run_names()
    if best is None:
        wanted = [(n, s) for i, s in enumerate(cfg.seeds) for n in names if n not in grouped or i == 0]
    else:
        wanted = [(n, s) for s in cfg.seeds[1:] for n in names if n in best]
    jobs, seen = [], set()
    for name, seed in wanted:
        folder = out / "runs" / folders[name] / f"seed{seed}"
        if folder not in seen:
            seen.add(folder)
            jobs.append(Job(cfg, name, seed, str(folder), str(train_list), threads))
    return jobs


def choose(cfg: LfwExperimentConfig, results: list[dict[str, Any]]) -> dict[str, str]:
    """Each ``select`` group's member with the best held-out accuracy on the first seed."""
    acc = {r["name"]: r["verification"]["accuracy_mean"] for r in results
           if r["seed"] == cfg.seeds[0] and r.get("verification")}  # a diverged setting is never chosen
    return {g: max((m for m in members if m in acc), key=lambda m: acc[m]) for g, members in cfg.select.items()
            if any(m in acc for m in members)}


def run_experiment(cfg: LfwExperimentConfig, preset: str = "custom") -> dict[str, Any]:
    """Train and verify every run (resuming), then write the report; returns the report dict."""
    from ..utils.atomic import check_output_dir, write_text
    from .lfw_report import write_report

    out = check_output_dir(cfg.out_dir)
    aligned = Path(cfg.aligned)
    if not aligned.is_dir():
        raise DataError(f"aligned LFW folder {aligned} not found; create it with "
                        f"`centerloss align <lfw>/images {aligned} --mode test`")
    cfgmod.save(cfg, out / "config.yaml")
    for src in cfg.reuse:
        if not Path(src).is_dir():
            print(f"   reuse: {src} does not exist; its trainings will be run here", flush=True)
    test, _ = _heldout(cfg)
    heldout = {p.split("/")[0] for p in test.items()}
    train_files, split = training_split(aligned, heldout, cfg.min_images, cfg.detected_only)
    assert not {f.split("/")[0] for f in train_files} & heldout  # open-set by construction
    write_text(out / "train_files.txt", "\n".join(train_files) + "\n")
    write_text(out / "heldout_identities.txt", "\n".join(sorted(heldout)) + "\n")
    print(f"== {len(cfg.run_names())} runs x seeds {cfg.seeds} on {split['identities']} identities, "
          f"{split['images']} crops; held out: folds {cfg.holdout_folds} ({len(test)} pairs)", flush=True)
    t0 = time.perf_counter()
    results = _run_jobs(plan(cfg, out, out / "train_files.txt"), cfg.parallel)
    _alias(cfg, results, out)
    chosen = choose(cfg, results)
    if chosen and len(cfg.seeds) > 1:
        results += _run_jobs(plan(cfg, out, out / "train_files.txt", set(chosen.values())), cfg.parallel)
        _alias(cfg, results, out)
    info = {"heldout": {"folds": cfg.holdout_folds, "pairs": len(test), "identities": len(heldout)}, "chosen": chosen,
            "train_split": split, "pairs_file": str(cfg.pairs or default_pairs()),
            "total_s": round(time.perf_counter() - t0, 1)}
    return write_report(cfg, results, info, out, preset)


def _alias(cfg: LfwExperimentConfig, results: list[dict[str, Any]], out: Path) -> None:
    """Runs that share a folder with another (identical configs) get that one's results under their name."""
    folders = _folders(cfg, out)
    by_folder = {(folders[r["name"]], r["seed"]): r for r in results}
    have = {(r["name"], r["seed"]) for r in results}
    for name in cfg.run_names():
        for seed in cfg.seeds:
            r = by_folder.get((folders[name], seed))
            if r is not None and (name, seed) not in have:
                results.append({**r, "name": name, "shared_with": r["name"]})


def load_config(preset: str, overrides: list[str] | None = None, extra: dict[str, Any] | None = None
                ) -> LfwExperimentConfig:
    return cfgmod.load(LfwExperimentConfig, "lfw", preset, overrides, extra)
