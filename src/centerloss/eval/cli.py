"""Commands ``centerloss eval {lfw,bin,ytf,megaface}`` (``verify`` and ``embed`` live in :mod:`centerloss.face.cli`).

Handlers import numpy/torch lazily so ``centerloss --help`` stays fast. They raise
:class:`~centerloss.errors.DataError` (bad input file) or :class:`~centerloss.errors.ConfigError` (bad option)
naming the file or value, and :func:`centerloss.cli.main` prints the one line
``centerloss eval: error: ...`` and returns exit code 2 (1 when the run itself failed, e.g. the disk filled
up). Inputs are validated first, then the output folder is checked (``check_output_dir``), then features are
extracted and the report is written all at once (:mod:`.report`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

_RAW = argparse.RawDescriptionHelpFormatter

EVAL_HELP = """\
Evaluate face features with the paper's protocols (docs/METHOD.md; paper Sec. 4-5).

  lfw       LFW pairs.txt, 10-fold: accuracy mean +- std, ROC AUC, EER, TAR@FAR, plots
  bin       an InsightFace .bin verification set (lfw.bin, cfp_fp.bin, agedb_30.bin ...), 10-fold
  ytf       YouTube-Faces-style video pairs (a video's feature = mean of its frames' features)
  megaface  1:N identification with distractors: rank-1 and TAR@FAR=1e-6

Each writes OUT/report.json, OUT/report.md and plots. Run `centerloss eval lfw --help` for details.
"""

LFW_HELP = """\
LFW verification, the paper's protocol (docs/METHOD.md; paper Sec. 4). For each of the folds of PAIRS:
  1. fit the mean feature (and, with --pca-dim, a PCA basis) on the OTHER folds' pairs only;
  2. centre, project, L2-normalise and score every pair by cosine similarity;
  3. pick the accuracy-maximising threshold on the other folds, apply it to the held-out fold.
Reported: mean +- std of the fold accuracies, and ROC AUC, EER and TAR@FAR on the pooled held-out
scores (each pair scored while its own fold was held out).

Features come from a file or from a model:
  centerloss eval lfw --features F.npz --pairs pairs.txt --out runs/eval
      F.npz holds `paths` (relative, like Aaron_Peirsol/Aaron_Peirsol_0001.jpg) and `features` (N x D),
      e.g. written by `centerloss embed`.
  centerloss eval lfw --model model.safetensors --images ALIGNED/ --pairs pairs.txt --out runs/eval
      embeds the aligned 112x96 crops the pairs need (image + horizontal flip, concatenated), caches
      them, writes OUT/features.npz, then evaluates.

Evaluating on a subset of folds (e.g. the fold whose people were kept out of training):
  --folds 1          one fold has no training folds, so add --subfolds 10: its pairs are split into 10
                     stratified sub-folds (not person-disjoint; the report says so).
  --folds 2,5,7      any 2 or more folds run the normal protocol over those folds.

report.json has accuracy_mean, accuracy_std, accuracy_sem, auc, eer, tar_at_far {"0.001": .., "0.01": ..},
fold_accuracies, fold_thresholds and verify_threshold: the plain-cosine threshold (no mean subtraction,
mean over folds) to store as meta["threshold"] in a checkpoint for `centerloss verify`.
"""



def _default_cache() -> str:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "centerloss" / "features")


def _add_model_options(p: argparse.ArgumentParser, fit_default: str = "error") -> None:
    g = p.add_argument_group("feature extraction (with --model)")
    g.add_argument("--combine", choices=("concat", "sum", "none"), default="concat",
                   help="how the image's and its flip's features combine: concat (paper, 2 x embed_dim), "
                        "sum, or none (no flip) [concat]")
    g.add_argument("--fit", choices=("error", "center-crop", "resize"), default=fit_default,
                   help=f"crops whose size differs from the model input: error, center-crop or resize [{fit_default}]")
    g.add_argument("--input-size", default=None, metavar="HxW",
                   help="model input size, e.g. 112x96 [model.input_size, else 112x96]")
    g.add_argument("--batch-size", type=int, default=64, help="crops per forward pass [64]")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, auto [auto]")
    g.add_argument("--workers", type=int, default=2, help="image-decoding threads [2]")
    g.add_argument("--cache-dir", default=_default_cache(),
                   help="feature cache; the key hashes model file, image list and options [%(default)s]")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_verif_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for report.json, report.md and plots")
    p.add_argument("--pca-dim", type=int, default=None, metavar="N",
                   help="PCA to N dims, fitted on the training folds (paper: PCA; SphereFace script: none)")
    p.add_argument("--no-center", action="store_true",
                   help="do not subtract the training folds' mean (plain cosine)")
    p.add_argument("--far", type=float, action="append", default=None,
                   help="report TAR at this FAR (repeatable) [1e-3 and 1e-2]")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate features: LFW, .bin sets, YTF, MegaFace-style 1:N",
                        description=EVAL_HELP, formatter_class=_RAW)
    ev.set_defaults(func=lambda a: (ev.print_help(), 2)[1])
    esub = ev.add_subparsers(dest="eval_target", metavar="PROTOCOL")

    p = esub.add_parser("lfw", help="LFW pairs.txt 10-fold verification", description=LFW_HELP,
                        formatter_class=_RAW)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="features file (.npz with paths, features)")
    src.add_argument("--model", help="model checkpoint (.safetensors from save_model); needs --images")
    p.add_argument("--images", help="folder of aligned crops laid out as pairs.txt names them (with --model)")
    p.add_argument("--pairs", required=True, help="LFW pairs.txt (header '10\\t300')")
    p.add_argument("--folds", default=None, help="1-based folds to use, e.g. 1 or 2,5,7 [all]")
    p.add_argument("--subfolds", type=int, default=None, metavar="K",
                   help="with a single fold: split it into K stratified sub-folds for the threshold")
    p.add_argument("--seed", type=int, default=0, help="seed of the sub-fold split [0]")
    _add_verif_options(p)
    _add_model_options(p)
    p.set_defaults(func=_eval_lfw)

    p = esub.add_parser("bin", help="InsightFace .bin verification set, 10-fold",
                        description="Evaluate a model on an InsightFace .bin set (pickle of JPEG bytes + issame list),"
                                    " read without unpickling any object. Pairs are split into 10 consecutive folds as "
                                    "InsightFace does; the 112x112 crops are center-cropped to the model's 112x96.",
                        formatter_class=_RAW)
    p.add_argument("bin", help="the .bin file")
    p.add_argument("--model", required=True, help="model checkpoint (.safetensors)")
    p.add_argument("--n-folds", type=int, default=10, help="folds [10]")
    _add_verif_options(p)
    _add_model_options(p, fit_default="center-crop")
    p.set_defaults(func=_eval_bin)

    p = esub.add_parser("ytf", help="YouTube-Faces-style video pairs", formatter_class=_RAW,
                        description="Video verification: each video's feature is the mean of its frames' features "
                                    "(frames are the rows of FEATS whose parent folder is the video id, e.g. "
                                    "Name/3/frame.jpg -> Name/3). Then the 10-fold protocol of `eval lfw` runs "
                                    "over the splits' folds.")
    p.add_argument("--features", required=True, help="frame features (.npz with paths, features)")
    p.add_argument("--splits", required=True, help="splits.txt: 'split, pair, video1, video2, is_same' per line")
    p.add_argument("--normalize-frames", action="store_true", help="L2-normalise frames before averaging")
    _add_verif_options(p)
    p.set_defaults(func=_eval_ytf)

    p = esub.add_parser("megaface", help="1:N identification with distractors (rank-1, TAR@FAR=1e-6)",
                        formatter_class=_RAW, description=_MEGAFACE_HELP)
    p.add_argument("--probes", required=True, help="probe features .npz; identity = first path component")
    p.add_argument("--gallery", default=None, help="gallery features .npz [the probes themselves, MegaFace-style]")
    p.add_argument("--distractors", required=True,
                   help="distractor features: .npy (N x D, memory-mapped) or .npz with `features`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--far", type=float, action="append", default=None, help="FAR for TAR (repeatable) [1e-6]")
    p.add_argument("--backend", choices=("auto", "faiss", "torch"), default="auto", help="search backend [auto]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval_megaface)



_MEGAFACE_HELP = """\
MegaFace-style 1:N identification (docs/METHOD.md; paper Sec. 5-6). Genuine trials are (probe, gallery) pairs of the
same identity -- without --gallery, the probe set is its own gallery and a probe never matches itself.
  rank-1           the mate scores strictly above every distractor (each mate enrolled alone among them)
  closed-set rank-1  the nearest neighbour in gallery + distractors has the probe's identity
  TAR@FAR          genuine trials vs all (probe, distractor) impostor pairs
Exact cosine search: faiss when installed (`pip install centerloss[faiss]`), else chunked torch.
1M x 512 float32 distractors take 2 GB; pass them as .npy to memory-map them.
"""


# ---------------------------------------------------------------- helpers


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input-size must look like 112x96, got {text!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"--input-size must be positive, got {text!r}")
    return h, w


def _load_model(path: str, device: str) -> tuple[Any, dict[str, Any]]:
    from ..models.io import load_model
    from ..utils.device import resolve_device

    dev = resolve_device(device)  # a bad --device is refused before the model file is read
    model, meta = load_model(path)
    return model.to(dev), meta


def _extract_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    return {"batch_size": args.batch_size, "combine": args.combine, "input_size": _size(args.input_size),
            "fit": args.fit, "device": args.device, "num_workers": args.workers, "progress": not args.quiet}


def _fars(args: argparse.Namespace, default: tuple[float, ...]) -> tuple[float, ...]:
    fars = tuple(args.far) if args.far else default
    bad = [f for f in fars if not 0 <= f <= 1]
    if bad:
        raise ConfigError(f"--far must be in [0, 1], got {bad[0]:g}")
    return fars


def _check_out(args: argparse.Namespace) -> Path:
    """The output folder, proven writable before any long work (a read-only or file path is refused)."""
    from ..utils.atomic import check_output_dir

    return check_output_dir(args.out)


def _run_verification(fa, fb, issame, fold_ids, args: argparse.Namespace, title: str, inputs: dict[str, Any],
                      subfolds: int | None = None, seed: int = 0, pair_index=None) -> dict[str, Any]:
    """Evaluate (plus the plain-cosine threshold for `verify`), write the report, print a summary.
    ``pair_index``: as in :func:`evaluate_pairs` (then ``fa`` is the per-image table and ``fb`` None)."""
    from .report import write_verification_report
    from .verification import evaluate_pairs

    t0 = time.perf_counter()
    fars = _fars(args, (1e-3, 1e-2))
    res = evaluate_pairs(fa, fb, issame, fold_ids, pca_dim=args.pca_dim, center=not args.no_center,
                         subfolds=subfolds, seed=seed, fars=fars, pair_index=pair_index)
    plain = res if (args.no_center and args.pca_dim is None) else evaluate_pairs(
        fa, fb, issame, fold_ids, center=False, subfolds=subfolds, seed=seed, fars=fars, pair_index=pair_index)
    extra = {"verify_threshold": {
        "value": float(plain.fold_thresholds.mean()),
        "accuracy_mean": plain.accuracy_mean,
        "note": "mean of the fold thresholds for plain cosine of the (flip-combined) features, without mean "
                "subtraction or PCA; store it as meta['threshold'] for `centerloss verify`",
    }, "seconds": {"evaluate": time.perf_counter() - t0}}
    rep = write_verification_report(res, args.out, title, inputs, extra, plots=not args.no_plots)
    tars = ", ".join(f"TAR@{k} {100 * v:.2f}%" for k, v in res.tar_at_far.items())
    print(f"{title}: accuracy {100 * res.accuracy_mean:.2f} +- {100 * res.accuracy_std:.2f}% over "
          f"{res.folds.size} folds, AUC {res.auc:.4f}, EER {100 * res.eer:.2f}%, {tars}")
    if rep.get("plots_skipped"):
        print(f"plots skipped: {rep['plots_skipped']}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'report.json'} and report.md")
    return rep


# ---------------------------------------------------------------- handlers


def _select_folds(pairs, folds: str | None, source: str):
    if not folds:
        return pairs
    try:
        wanted = sorted({int(v) - 1 for v in folds.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"--folds takes 1-based fold numbers like 1 or 2,5,7; got {folds!r}") from None
    if not wanted:
        raise ConfigError(f"--folds names no fold: {folds!r}")
    bad = [f + 1 for f in wanted if f not in set(pairs.fold_ids.tolist())]
    if bad:
        raise ConfigError(f"{source} has folds 1..{int(pairs.fold_ids.max()) + 1}; no fold {bad}")
    return pairs.folds(*wanted)


def _eval_lfw(args: argparse.Namespace) -> int:
    from .features import extract_features, load_features, save_features
    from .protocols import read_lfw_pairs

    pairs = _select_folds(read_lfw_pairs(args.pairs), args.folds, args.pairs)
    _fars(args, (1e-3,))
    inputs: dict[str, Any] = {"pairs": str(args.pairs), "folds": args.folds or "all"}
    if args.features:
        table = load_features(args.features)
        paths, feats = table.paths, table.features
        index = pairs.indices(paths)
        _check_out(args)
        inputs["features"] = str(args.features)
    else:
        if not args.images:
            raise ConfigError("--model needs --images DIR (the aligned crops)")
        pairs.check_images(args.images)
        kwargs = _extract_kwargs(args)
        model, _ = _load_model(args.model, args.device)
        out = _check_out(args)
        paths = pairs.items()
        feats = extract_features(model, paths, args.images, model_path=args.model,
                                 cache_dir=None if args.no_cache else args.cache_dir, **kwargs)
        index = pairs.indices(paths)
        save_features(out / "features.npz", paths, feats, {"model": str(args.model), "combine": args.combine})
        inputs.update(model=str(args.model), images=str(args.images), combine=args.combine)
    inputs["feature_dim"] = int(feats.shape[1])
    _run_verification(feats, None, pairs.issame, pairs.fold_ids, args, "LFW verification", inputs,
                      subfolds=args.subfolds, seed=args.seed, pair_index=index)
    return 0


def _eval_bin(args: argparse.Namespace) -> int:
    from .features import extract_bin_features
    from .protocols import read_bin

    s = read_bin(args.bin)
    folds = s.fold_ids(args.n_folds)
    _fars(args, (1e-3,))
    kwargs = _extract_kwargs(args)
    model, _ = _load_model(args.model, args.device)
    _check_out(args)
    feats = extract_bin_features(model, s.images, source=str(args.bin), **kwargs)  # (2P, E)
    _run_verification(feats[0::2], feats[1::2], s.issame, folds, args, f"{Path(args.bin).stem} verification",
                      {"bin": str(args.bin), "model": str(args.model), "combine": args.combine, "fit": args.fit})
    return 0


def _eval_ytf(args: argparse.Namespace) -> int:
    from .features import load_features
    from .protocols import read_video_pairs, video_features

    pairs = read_video_pairs(args.splits)
    table = load_features(args.features)
    _fars(args, (1e-3,))
    try:
        ids, vf = video_features(table.paths, table.features, pairs.items(), normalize_frames=args.normalize_frames)
    except DataError as e:
        raise DataError(f"{args.features} (frames for {args.splits}): {e}") from None
    fa, fb = pairs.gather(ids, vf)
    _check_out(args)
    _run_verification(fa, fb, pairs.issame, pairs.fold_ids, args, "Video verification (YTF-style)",
                      {"features": str(args.features), "splits": str(args.splits), "videos": len(ids)})
    return 0


def _eval_megaface(args: argparse.Namespace) -> int:
    from .features import load_distractors, load_features
    from .identification import evaluate_identification
    from .report import write_identification_report

    fars = _fars(args, (1e-6,))
    probes = load_features(args.probes)
    gallery = load_features(args.gallery) if args.gallery else probes
    d = probes.features.shape[1]
    if gallery.features.shape[1] != d:
        raise DataError(f"{args.gallery}: gallery features are {gallery.features.shape[1]}-dim but the probes "
                        f"{args.probes} are {d}-dim")
    distractors = load_distractors(args.distractors, dim=d)
    _check_out(args)
    pc, gc = _codes([p.split("/")[0] for p in probes.paths], [p.split("/")[0] for p in gallery.paths])
    res = evaluate_identification(probes.features, pc, gallery.features, gc, distractors, fars=fars,
                                  same_set=args.gallery is None, backend=args.backend, progress=not args.quiet)
    write_identification_report(res, args.out, "1:N identification",
                                {"probes": args.probes, "gallery": args.gallery or "(probes)",
                                 "distractors": args.distractors})
    print(f"rank-1 {100 * res.rank1:.2f}%, closed-set rank-1 {100 * res.closed_set_rank1:.2f}%, "
          + ", ".join(f"TAR@{f:g} {100 * v:.2f}%" for f, v in res.tar_at_far.items())
          + f"; wrote {Path(args.out) / 'report.json'}")
    return 0


def _codes(a: list[str], b: list[str]):
    import numpy as np

    names = {n: i for i, n in enumerate(sorted(set(a) | set(b)))}
    return np.array([names[n] for n in a]), np.array([names[n] for n in b])
