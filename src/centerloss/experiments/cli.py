"""The experiments' commands: ``centerloss mnist`` (paper Figs. 2-3) and ``centerloss lfw-experiment``."""

from __future__ import annotations

import argparse
from pathlib import Path

_RAW = argparse.RawDescriptionHelpFormatter

MNIST_HELP = """\
Reproduce the paper's toy experiment (Figs. 2-3): LeNets++ with 2-D features on MNIST, softmax
alone vs softmax + center loss for several lambda (alpha = 0.5, Eq. 4 center update). Every run trains
through the same engine as `centerloss train` (train preset mnist_lenetpp) and resumes if stopped.

Presets (centerloss/configs/mnist/):
  quick    softmax + lambda 0.01, 1,400 iterations each: 8 min per lambda on a 2-core CPU  (make demo)
  paper    the lambda sweep 0, 1e-4 .. 1e-1, 15,000 iterations each (about 1 h per lambda on 2 CPU cores)
  updates  the paper's Eq. 4 vs learnable centers vs caffe-face's solver, lambda 0.01 and 0.1, with the
           centers' trajectories

Examples:
  centerloss mnist --preset quick
  centerloss mnist --preset paper --out runs/mnist-paper --device cuda --set workers=5
  centerloss mnist --preset quick --lambdas 0,0.003,0.03 --iterations 2000
  centerloss mnist --preset quick --set train.optimizer.lr=0.01 train.schedule.kwargs.gamma=0.5

A sweep split across machines or sessions: run a part in each folder, then the whole preset with
reuse=[...]; finished runs of the same setup there (CPU threads included: keep `workers` the same) are
copied (result, features, log), the rest trained:
  centerloss mnist --preset paper --lambdas 0,0.0001 --out runs/part1
  centerloss mnist --preset paper --out runs/mnist-paper --set "reuse=[runs/part1]"

MNIST is read from --data-dir, else $CENTERLOSS_MNIST_DIR, else $CENTERLOSS_DATA/mnist (`make demo` sets
CENTERLOSS_DATA to ../shared/data); --download fetches it (md5-checked) where you are online.
Writes OUT/config.yaml, report.json, report.md and the figures, and one run folder per lambda (with
mnist_result.json and measured.npz once measured: a rerun reads them back instead of measuring again).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mnist", help="MNIST 2-D toy experiment (paper Figs. 2-3)", description=MNIST_HELP,
                       formatter_class=_RAW)
    p.add_argument("--preset", default="quick", help="preset name (quick, paper, updates) or a YAML file [quick]")
    p.add_argument("--out", default=None, help="run folder [runs/mnist-<preset>]")
    p.add_argument("--data-dir", default=None, help="folder with the four MNIST .gz files")
    p.add_argument("--download", action="store_true", help="download MNIST into --data-dir (md5-checked)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (train.runtime.device) [auto]")
    p.add_argument("--lambdas", default=None, help="comma-separated lambdas, 0 = softmax only, e.g. 0,0.01")
    p.add_argument("--iterations", type=int, default=None, help="SGD steps per run (train.schedule.max_steps)")
    p.add_argument("--seed", type=int, default=None, help="train.runtime.seed")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. workers=2 train.optimizer.lr=0.01")
    p.set_defaults(func=_mnist)

    p = sub.add_parser("lfw-experiment", help=LFW_SHORT, description=LFW_HELP, formatter_class=_RAW)
    p.add_argument("--preset", default="cpu", help="experiment preset name or .yaml (default: cpu)")
    p.add_argument("--aligned", help="aligned LFW folder (from `centerloss align`)")
    p.add_argument("--pairs", help="LFW pairs.txt (default: $CENTERLOSS_DATA/lfw/pairs.txt)")
    p.add_argument("--out", help="run folder (out_dir)")
    p.add_argument("--runs", "--models", dest="runs", help="comma list of the preset's runs to keep, e.g. A,C")
    p.add_argument("--holdout", help="comma list of 1-based LFW folds to hold out")
    p.add_argument("--seeds", help="comma list of seeds, e.g. 0,1")
    p.add_argument("--parallel", type=int, help="trainings at once (each gets cores / parallel threads)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. pca_dim=128 train.schedule.epochs=2")
    p.add_argument("--render", metavar="REPORT_JSON", help="only re-render report.md from an existing report.json")
    p.set_defaults(func=_lfw)


LFW_SHORT = "train runs (A/B/C, margins, sweeps) on LFW identities disjoint from held-out pairs; verify on them"

LFW_HELP = """\
The paper's LFW experiment at CPU scale. Needs LFW aligned by `centerloss align` (every image, --mode test):

  centerloss align ../shared/data/lfw/images runs/lfw_aligned --mode test
  centerloss lfw-experiment --preset cpu --aligned runs/lfw_aligned       # models A and C, ~10 min on 2 cores

Presets (centerloss/configs/lfw/):
  cpu        A (softmax) and C (softmax + center), face_small, LFW folds 1-5 held out
  cpu_abc    also B (softmax + contrastive)
  cpu_fold1  A and C holding out fold 1 only (scored on 60-pair sub-folds)
  fig5       the paper's Fig. 5: lambda in {0, 1e-4 .. 1e-1} at alpha 0.5, alpha in {0.01 .. 1} at lambda 3e-3,
             2 seeds (~2 h on 2 cores)
  updates    C with the paper's Eq. 4, learnable centers, and caffe-face's solver, 2 seeds
  margins    A, C, NormFace, CosFace, ArcFace, ArcFace + center at equal data, network and epochs; each
             tuned over a small grid on seed 0, the best rerun on seed 1
  tiny       a 2-epoch smoke test

Each run's train config is its train preset (see `centerloss train --help`) with the experiment's `train`
overrides and its own `set`; e.g. --set train.schedule.epochs=2. Rerunning a command resumes: unfinished
trainings continue from their checkpoints, finished evaluations are reused. `updates` and `margins` reuse
(copy, not retrain) the Fig. 5 sweep's finished trainings whose config, seed and training files are identical
(`reuse` in the preset; --set reuse=[] trains everything). Writes OUT/report.json,
report.md, roc.png (and fig5_*.png for sweeps), train_files.txt, heldout_identities.txt, runs/<run>/seed<k>/.
"""


def _lfw(args: argparse.Namespace) -> int:
    import json

    from ..errors import DataError
    from .lfw import load_config, run_experiment
    from .lfw_report import render_markdown

    if args.render:
        from ..utils.atomic import write_text

        try:
            rep = json.loads(Path(args.render).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {args.render}: {e}") from None
        write_text(Path(args.render).with_name("report.md"), render_markdown(rep))
        return 0
    flags: dict = {}
    for key, val in (("aligned", args.aligned), ("pairs", args.pairs), ("out_dir", args.out),
                     ("parallel", args.parallel)):
        if val is not None:
            flags[key] = val
    for key, val in (("holdout_folds", args.holdout), ("seeds", args.seeds)):
        if val:
            flags[key] = _ints(val, key)
    cfg = load_config(args.preset, args.overrides, flags)
    if args.runs:
        cfg = _keep_runs(cfg, [r.strip() for r in args.runs.split(",") if r.strip()])
    rep = run_experiment(cfg, preset=Path(args.preset).stem)
    print(render_markdown(rep))
    return 0


def _ints(text: str, key: str) -> list[int]:
    from ..errors import ConfigError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{key} takes integers separated by commas, got {text!r}") from None


def _keep_runs(cfg, names: list[str]):
    import dataclasses

    from ..errors import ConfigError

    unknown = sorted(set(names) - set(cfg.runs))
    if unknown:
        raise ConfigError(f"--runs: {unknown} are not runs of this preset; it has {sorted(cfg.runs)}")
    base = cfg.baseline if cfg.baseline in names else names[0]
    return dataclasses.replace(cfg, runs={n: cfg.runs[n] for n in names}, grids={}, select={}, baseline=base)


def _mnist_flags(args: argparse.Namespace) -> dict:
    from ..errors import ConfigError

    flags: dict = {}
    if args.lambdas is not None:
        try:
            flags["lambdas"] = [float(x) for x in args.lambdas.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--lambdas takes numbers separated by commas, got {args.lambdas!r}") from None
    for key, value in (("train.runtime.device", args.device), ("train.schedule.max_steps", args.iterations),
                       ("train.runtime.seed", args.seed), ("data_dir", args.data_dir)):
        if value is not None:
            flags[key] = value
    return flags


def _mnist(args: argparse.Namespace) -> int:
    import os

    import torch

    from .mnist import load_config, run_experiment

    cfg = load_config(args.preset, args.overrides, _mnist_flags(args))
    if args.download:
        from ..data.mnist import download_mnist
        from ..errors import ConfigError

        if not cfg.data_dir:
            raise ConfigError("--download needs --data-dir (where to put the files)")
        download_mnist(cfg.data_dir)
    out = Path(args.out or f"runs/mnist-{Path(args.preset).stem}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    report = run_experiment(cfg, out, Path(args.preset).stem)
    print(f"\nwrote {out}/report.md and report.json")
    for r in report["runs"]:
        print(f"  lambda={r['lam']:<8g} {r['update']:<9} test acc {r['test_accuracy'] * 100:6.2f}%  "
              f"compactness {r['compactness']:.4f}")
    return 0
