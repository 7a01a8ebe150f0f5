"""The paper's face experiment at laptop scale: models A (softmax), C (softmax + center) and optionally B
(softmax + contrastive) trained on LFW identities that never appear in the held-out pairs, then verified on
those pairs with the evaluation protocol of :mod:`centerloss.eval` (flip-concatenated features, training-fold
mean (and optional PCA), cosine, threshold chosen on the other (sub-)folds).

Why this split is honest: LFW's 10 folds are person-disjoint, so removing every identity named in the held-out
fold(s)' pairs from training makes those pairs an open-set test, as in the paper (whose training data had the
test identities removed). Which training identities are used:

* only people with at least ``min_images`` (default 2) aligned crops: a class with one image teaches softmax
  to memorise that image and center loss nothing, yet would add ~46% more images per epoch here;
* with the aligner's manifest, only crops whose face was detected (the paper discards training images whose
  detection fails; test images always keep a crop).

With several held-out folds (the ``cpu`` preset holds out folds 1-5) the held-out pairs are scored by k-fold
cross-validation over those person-disjoint folds: mean (and PCA) and threshold come from the other held-out
folds, and the std is across folds of 600 pairs. With a single held-out fold the threshold/mean/PCA are fitted
on stratified sub-folds of it (``subfolds``; see :mod:`centerloss.eval.verification`), whose 60-pair size alone
gives a std of ~5 points. Either way all models are scored on the same (sub-)folds, so the per-fold
differences C - A are paired.

Run folder: ``config.yaml``, ``train_files.txt``, ``heldout_identities.txt``, one training run per model
(``A/``, ``C/``, ... with checkpoints and logs), ``features_<M>.npz``, ``report.json``, ``report.md``,
``roc.png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import config as cfgmod
from ..errors import DataError

MODEL_NAMES = {"A": "softmax", "B": "softmax + contrastive", "C": "softmax + center"}


def default_pairs() -> str:
    """``$CENTERLOSS_DATA/lfw/pairs.txt``, else the shared data folder beside the checkout."""
    base = os.environ.get("CENTERLOSS_DATA") or str(Path(__file__).resolve().parents[4] / "shared" / "data")
    return str(Path(base) / "lfw" / "pairs.txt")


@dataclass
class LfwExperimentConfig:
    aligned: str = "runs/lfw_aligned"  # `centerloss align` output for all of LFW (crops + manifest.csv)
    pairs: str | None = None  # LFW View 2 pairs.txt (None: $CENTERLOSS_DATA or ../shared/data)
    holdout_folds: list[int] = field(default_factory=lambda: [1])  # 1-based LFW folds used only for testing
    models: list[str] = field(default_factory=lambda: ["A", "C"])  # any of A, B, C
    presets: dict[str, str] = field(default_factory=lambda: {"A": "lfw_cpu_A", "B": "lfw_cpu_B",
                                                             "C": "lfw_cpu_C"})
    train_overrides: list[str] = field(default_factory=list)  # key=value applied to every model's config
    min_images: int = 2  # training identities need at least this many usable crops
    detected_only: bool = True  # train only on crops whose face was detected (needs manifest.csv)
    seed: int = 0
    device: str = "cpu"
    subfolds: int = 10  # the held-out pairs are split into this many stratified sub-folds
    pca_dim: int | None = None  # PCA fitted on the training sub-folds (None: mean-subtracted cosine only)
    fars: list[float] = field(default_factory=lambda: [0.01, 0.1])
    eval_batch: int = 128
    out_dir: str = "runs/lfw_cpu"


# ---------------------------------------------------------------- data split


def read_manifest(aligned: Path) -> dict[str, bool] | None:
    """``{crop path relative to aligned: detected}`` from the aligner's manifest, or None if there is none."""
    mf = aligned / "manifest.csv"
    if not mf.is_file():
        return None
    out: dict[str, bool] = {}
    with open(mf, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "detected"} <= set(reader.fieldnames):
            raise DataError(f"{mf}: expected columns 'path' and 'detected', got {reader.fieldnames}")
        for row in reader:
            det = str(row["detected"]).strip().lower() in ("1", "true", "yes")
            out[row["path"]] = det
    return out


def training_split(aligned: Path, heldout_people: set[str], min_images: int, detected_only: bool
                   ) -> tuple[list[str], dict[str, Any]]:
    """Crops (relative paths) of people not in ``heldout_people`` with >= ``min_images`` usable crops."""
    from ..data.identity_folder import IMAGE_EXTENSIONS

    manifest = read_manifest(aligned) if detected_only else None
    detected: dict[str, bool] = {}
    if manifest is not None:  # manifest paths are source-relative; crops share the stem
        for p, det in manifest.items():
            detected[os.path.splitext(p)[0]] = det
    by_person: dict[str, list[str]] = {}
    n_dropped_undetected = 0
    with os.scandir(aligned) as it:
        people = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for person in people:
        if person in heldout_people:
            continue
        with os.scandir(aligned / person) as it:
            files = sorted(e.name for e in it if e.name.lower().endswith(IMAGE_EXTENSIONS))
        keep = []
        for f in files:
            rel = f"{person}/{f}"
            if manifest is not None and not detected.get(os.path.splitext(rel)[0], False):
                n_dropped_undetected += 1
                continue
            keep.append(rel)
        if len(keep) >= min_images:
            by_person[person] = keep
    files = [f for p in sorted(by_person) for f in by_person[p]]
    if not files:
        raise DataError(f"no training identity in {aligned} has >= {min_images} usable crops outside the held-out "
                        "pairs; is this the aligned LFW folder?")
    counts = [len(v) for v in by_person.values()]
    stats = {"identities": len(by_person), "images": len(files), "max_per_identity": max(counts),
             "median_per_identity": float(np.median(counts)), "dropped_undetected": n_dropped_undetected,
             "manifest": manifest is not None}
    return files, stats


# ---------------------------------------------------------------- load sampling


class LoadSampler:
    """Samples the 1-minute load average every ``period`` seconds in a daemon thread (the machine is shared)."""

    def __init__(self, period: float = 15.0) -> None:
        self.period, self.samples = period, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(os.getloadavg()[0])
            except OSError:  # pragma: no cover
                return
            self._stop.wait(self.period)

    def __enter__(self) -> LoadSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=1.0)

    def summary(self) -> dict[str, float]:
        s = self.samples or [float("nan")]
        return {"mean": round(float(np.mean(s)), 2), "max": round(float(np.max(s)), 2), "samples": len(self.samples)}


# ---------------------------------------------------------------- the experiment


def _train_one(cfg: LfwExperimentConfig, model: str, out: Path, train_list: Path) -> dict[str, Any]:
    from ..engine.config import apply, load_train_config
    from ..engine.trainer import Trainer

    tcfg = load_train_config(cfg.presets[model], list(cfg.train_overrides))
    tcfg = apply(tcfg, {"data.root": str(Path(cfg.aligned).resolve()), "data.file_list": str(train_list),
                        "data.min_images": cfg.min_images, "runtime.out_dir": str(out / model),
                        "runtime.resume": "auto", "runtime.seed": cfg.seed, "runtime.device": cfg.device})
    record = out / model / "lfw_train.json"
    with LoadSampler() as load:
        t0 = time.perf_counter()
        summary = Trainer(tcfg).fit()
        wall = time.perf_counter() - t0
    if summary["steps_this_session"] == 0 and record.is_file():  # finished earlier: keep that session's record
        return json.loads(record.read_text(encoding="utf-8"))
    summary.update({"wall_s": round(wall, 1), "load_avg": load.summary(), "preset": cfg.presets[model],
                    "loss": dataclasses.asdict(tcfg.loss), "model": dataclasses.asdict(tcfg.model),
                    "optim": dataclasses.asdict(tcfg.optim), "batch_size": tcfg.data.batch_size})
    record.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def run_experiment(cfg: LfwExperimentConfig, preset: str = "custom") -> dict[str, Any]:
    """Train every model in ``cfg.models`` and verify it on the held-out pairs; returns the report dict."""
    from ..eval import features as feats_mod
    from ..eval.plots import plot_roc
    from ..eval.protocols import read_lfw_pairs
    from ..eval.verification import evaluate_pairs
    from ..models.io import load_model

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfgmod.save(cfg, out / "config.yaml")
    aligned = Path(cfg.aligned)
    if not aligned.is_dir():
        raise DataError(f"aligned LFW folder {aligned} not found; create it with "
                        f"`centerloss align <lfw>/images {aligned} --mode test`")
    unknown = sorted(set(cfg.models) - set(MODEL_NAMES))
    if unknown or not cfg.models:
        raise DataError(f"models must be a non-empty subset of {sorted(MODEL_NAMES)}, got {cfg.models}")
    pairs_path = cfg.pairs or default_pairs()
    all_pairs = read_lfw_pairs(pairs_path)
    n_folds = int(all_pairs.fold_ids.max()) + 1
    if not cfg.holdout_folds or not all(1 <= f <= n_folds for f in cfg.holdout_folds):
        raise DataError(f"holdout_folds must be 1-based fold numbers in 1..{n_folds}, got {cfg.holdout_folds}")
    test = all_pairs.folds(*[f - 1 for f in cfg.holdout_folds])
    heldout = {p.split("/")[0] for p in test.items()}
    # test crops: every image the held-out pairs name must have a crop (align in --mode test guarantees it)
    crop_of = _crop_paths(aligned, test.items())
    test_items = [crop_of[p] for p in test.items()]
    train_files, split_stats = training_split(aligned, heldout, cfg.min_images, cfg.detected_only)
    assert not {f.split("/")[0] for f in train_files} & heldout  # open-set by construction
    train_list = out / "train_files.txt"
    train_list.write_text("\n".join(train_files) + "\n", encoding="utf-8")
    (out / "heldout_identities.txt").write_text("\n".join(sorted(heldout)) + "\n", encoding="utf-8")

    results, report_models = {}, {}
    t_all = time.perf_counter()
    for m in cfg.models:
        print(f"== model {m} ({MODEL_NAMES[m]}): training on {split_stats['identities']} identities, "
              f"{split_stats['images']} crops", flush=True)
        summary = _train_one(cfg, m, out, train_list)
        net, meta = load_model(out / m / "model.safetensors")
        t0 = time.perf_counter()
        f = feats_mod.extract_features(net, test_items, aligned, batch_size=cfg.eval_batch, combine="concat",
                                       device=cfg.device, progress=True)
        feats_mod.save_features(out / f"features_{m}.npz", test.items(), f, {"model": m, "step": meta.get("step")})
        fa, fb = test.gather(test.items(), f)
        single = len(cfg.holdout_folds) == 1
        res = evaluate_pairs(fa, fb, test.issame, test.fold_ids, cfg.pca_dim,
                             subfolds=cfg.subfolds if single else None, seed=cfg.seed, fars=cfg.fars)
        results[m] = res
        report_models[m] = {"name": MODEL_NAMES[m], "verification": res.to_dict(), "train": summary,
                            "network": meta["model"], "params": int(sum(p.numel() for p in net.parameters())),
                            "eval_s": round(time.perf_counter() - t0, 1)}
        print(f"   {m}: accuracy {100 * res.accuracy_mean:.2f} +- {100 * res.accuracy_std:.2f}%  AUC {res.auc:.4f}",
              flush=True)
    total = time.perf_counter() - t_all
    paired = {}
    if "A" in results:
        for m in results:
            if m != "A" and np.array_equal(results[m].fold_ids, results["A"].fold_ids):
                d = results[m].fold_accuracies - results["A"].fold_accuracies
                paired[f"{m}-A"] = {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                                    "wins": int((d > 0).sum()), "ties": int((d == 0).sum()),
                                    "losses": int((d < 0).sum()), "per_fold": [float(x) for x in d]}
    plot_roc([results[m] for m in cfg.models], out / "roc.png",
             labels=[f"{m} {MODEL_NAMES[m]}" for m in cfg.models],
             title=f"LFW fold(s) {cfg.holdout_folds}, identities unseen in training")
    report = {
        "preset": preset,
        "config": dataclasses.asdict(cfg),
        "pairs_file": str(pairs_path),
        "heldout": {"folds": cfg.holdout_folds, "pairs": len(test), "identities": len(heldout)},
        "train_split": split_stats,
        "models": report_models,
        "paired_differences": paired,
        "total_s": round(total, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _crop_paths(aligned: Path, items: list[str]) -> dict[str, str]:
    """Map pairs items (``Name/Name_0001.jpg``) to crops under ``aligned`` (same stem, any image suffix)."""
    from ..data.identity_folder import IMAGE_EXTENSIONS

    out, missing = {}, []
    for p in items:
        if (aligned / p).is_file():
            out[p] = p
            continue
        stem = os.path.splitext(p)[0]
        for ext in IMAGE_EXTENSIONS:
            if (aligned / (stem + ext)).is_file():
                out[p] = stem + ext
                break
        else:
            missing.append(p)
    if missing:
        raise DataError(f"{len(missing)} of the {len(items)} held-out images have no crop in {aligned}, e.g. "
                        f"{missing[:3]}; align LFW with --mode test so that every test image gets a crop")
    return out


def render_markdown(rep: dict[str, Any]) -> str:
    """The human summary: table, paired differences, ROC and what the numbers mean."""
    cfg, split, ho = rep["config"], rep["train_split"], rep["heldout"]
    unit = "sub-fold" if len(ho["folds"]) == 1 else "fold"
    fars = [f"{f:g}" for f in cfg["fars"]]
    lines = [
        f"# LFW experiment: models {', '.join(rep['models'])} (preset `{rep['preset']}`)", "",
        f"Held-out: LFW fold(s) {ho['folds']} - {ho['pairs']} pairs of {ho['identities']} identities, none of "
        "whom appear in training.",
        f"Training: {split['identities']} other LFW identities with >= {cfg['min_images']} crops, "
        f"{split['images']} aligned crops (largest identity {split['max_per_identity']} images, median "
        f"{split['median_per_identity']:g}; crops without a detected face dropped: {split['dropped_undetected']})." if split["manifest"] else
        f"Training: {split['identities']} other LFW identities, {split['images']} crops (no manifest).",
        "",
        f"| model | accuracy (mean +- std over {unit}s) | AUC | EER | " + " | ".join(f"TAR@FAR={f}" for f in fars)
        + " | train time | epochs | img/s | load avg |",
        "|---|---:|---:|---:|" + "---:|" * len(fars) + "---:|---:|---:|---:|",
    ]
    for m, r in rep["models"].items():
        v, t = r["verification"], r["train"]
        tars = " | ".join(f"{100 * v['tar_at_far'][f]:.1f}%" for f in fars)
        secs = t.get("seconds_total", t["wall_s"])
        ips = t.get("images_per_s_total", t["images_per_s"])
        lines.append(f"| {m} ({r['name']}) | {100 * v['accuracy_mean']:.2f} +- {100 * v['accuracy_std']:.2f}% | "
                     f"{v['auc']:.4f} | {100 * v['eer']:.2f}% | {tars} | {secs / 60:.1f} min | "
                     f"{t['epochs']:.1f} | {ips:.0f} | {t['load_avg']['mean']} |")
    any_v = next(iter(rep["models"].values()))["verification"]
    lines += ["", f"Protocol: {any_v['protocol']}; features = fc of the crop and of its mirror, concatenated; "
              f"mean of the other {unit}s subtracted{', PCA to ' + str(cfg['pca_dim']) if cfg['pca_dim'] else ''}; "
              f"cosine; threshold chosen on the other {unit}s. TAR resolution 1/{any_v['n_impostor']} "
              "impostor pairs, so TAR at FAR below that is not measurable here.", ""]
    for key, d in rep["paired_differences"].items():
        lines.append(f"Paired difference {key} over the same {len(d['per_fold'])} {unit}s: "
                     f"{100 * d['mean']:+.2f} +- {100 * d['std']:.2f} points (wins/ties/losses "
                     f"{d['wins']}/{d['ties']}/{d['losses']}).")
    first = next(iter(rep["models"].values()))
    train_min = sum(r["train"].get("seconds_total", r["train"]["wall_s"]) for r in rep["models"].values()) / 60
    net_desc = (f"`{first.get('network', '?')}` with {first.get('params', 0) / 1e6:.2f}M parameters "
                "(Face-ResNet-27: 27.5M)")
    lines += ["", "![ROC](roc.png)", "",
              f"Training time of all models: {train_min:.1f} min; this invocation (training still to do + "
              f"evaluation): {rep['total_s'] / 60:.1f} min; {rep['machine']['cpus']} CPUs shared with other users "
              "(see the load average column).", "",
              "## How this relates to the paper", "",
              "The paper trains Face-ResNet-sized networks on ~0.7M images of 17,189 identities and reports 97.37% "
              f"(A) vs 99.28% (C) on all 6,000 LFW pairs. Here {net_desc} sees {split['images']:,} images of "
              f"{split['identities']:,} identities (one of them alone holds {split['max_per_identity']}) for "
              f"{first['train']['epochs']:.0f} epochs on a shared 2-core CPU, ~{700_000 / split['images']:.0f}x less data "
              "than the paper, so the "
              "absolute accuracies are far lower and are not comparable with the paper's. What this run can show "
              "is the direction of the effect of the center loss at equal data, network, schedule and seed, on "
              f"identities never seen in training, with the {unit}-to-{unit} spread as the yardstick for noise. "
              "It is one seed and one split; a different seed moves both models by up to about that spread."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- CLI


HELP = "train models A/C (B) on LFW identities disjoint from held-out pairs and verify on those pairs"

DESCRIPTION = """\
The paper's LFW experiment at CPU scale. Needs LFW aligned by `centerloss align` (every image, --mode test):

  centerloss align ../shared/data/lfw/images runs/lfw_aligned --mode test
  centerloss lfw-experiment --preset cpu --aligned runs/lfw_aligned        # A and C, ~45 min on 2 cores

Writes OUT/report.md, report.json, roc.png and one training run per model. Presets: cpu (face_small,
A and C), cpu_abc (also B), tiny (a 2-epoch smoke test). Each model's training config comes from the train
presets lfw_cpu_A/B/C (see `centerloss train --help`), changed with --set 'train_overrides=[KEY=VALUE, ...]'.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lfw-experiment", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help="experiment preset name or .yaml (default: cpu)")
    p.add_argument("--aligned", help="aligned LFW folder (from `centerloss align`)")
    p.add_argument("--pairs", help="LFW pairs.txt (default: $CENTERLOSS_DATA/lfw/pairs.txt)")
    p.add_argument("--out", help="run folder")
    p.add_argument("--models", help="comma list of A, B, C")
    p.add_argument("--holdout", help="comma list of 1-based LFW folds to hold out (default: 1)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="experiment config overrides, e.g. pca_dim=128 'train_overrides=[optim.epochs=2]'")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import CenterLossError

    try:
        cfg = cfgmod.load(LfwExperimentConfig, cfgmod.preset_path("lfw", args.preset), args.overrides)
        flags: dict[str, Any] = {}
        if args.aligned:
            flags["aligned"] = args.aligned
        if args.pairs:
            flags["pairs"] = args.pairs
        if args.out:
            flags["out_dir"] = args.out
        if args.models:
            flags["models"] = [m.strip().upper() for m in args.models.split(",") if m.strip()]
        if args.holdout:
            flags["holdout_folds"] = [int(f) for f in args.holdout.split(",")]
        if flags:
            cfg = cfgmod.apply_overrides(cfg, flags)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rep = run_experiment(cfg, preset=args.preset)
    except CenterLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(render_markdown(rep))
    return 0
