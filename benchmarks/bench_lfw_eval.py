"""How long a full LFW 10-fold evaluation from a features file takes (target: <= 2 s on the 2-core dev box).

Synthetic but realistically shaped input: one row per LFW image (13,233 x 1024 float32 by default, the
size of flip-concatenated 512-d features), people as clusters, and the official pairs.txt. Each stage is
timed separately, best and median of ``--repeats`` runs, plus the first run of each setting ("first": with
PCA that is the first eigendecomposition of the process, which once ran with multi-threaded LAPACK):

  load      np.load of the features file (uncompressed .npz)
  parse     read_lfw_pairs (+ existence check is *not* included; the features file stands in for images)
  gather    look the 6,000 pairs' rows up ("indexed": their row numbers only, PairList.indices;
            "gathered": copy the 12,000 pair sides' features, PairList.gather)
  evaluate  evaluate_pairs (10 folds, mean subtraction, threshold sweep, ROC/AUC/EER/TAR); "indexed" passes
            the per-image table with pair_index (what `centerloss eval lfw` does: each distinct image is
            projected once), "gathered" the two (P, D) arrays
  total     load + parse + gather + evaluate (what `centerloss eval lfw --no-plots` computes)
  cli       the whole `centerloss eval lfw` command incl. report files and both plots (once)

Every setting runs for each input path (--paths) and twice in a child process: with the BLAS thread count
left alone, and with one thread (on a 2-core machine shared by several people, multi-threaded OpenBLAS can be
several times slower).

The machine is shared: the report records `uptime` before and after; under load compare the best runs.

Usage:  .venv/bin/python benchmarks/bench_lfw_eval.py [--dim 1024] [--pca 0 128 256] [--repeats 5] [--note TEXT]
Writes benchmarks/results/lfw_eval.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from centerloss.eval.features import load_features, save_features
from centerloss.eval.protocols import read_lfw_pairs
from centerloss.eval.verification import evaluate_pairs
from centerloss.utils.machine import uptime

DATA = Path(os.environ.get("CENTERLOSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
OUT = Path(__file__).resolve().parent / "results"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_features(path: Path, dim: int, seed: int = 0) -> int:
    """One row per LFW image; rows of a person share a random center (noise 1.0, center scale 0.3)."""
    images = sorted(p.relative_to(DATA / "lfw" / "images").as_posix()
                    for p in (DATA / "lfw" / "images").glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    people = sorted({p.split("/")[0] for p in images})
    centers = {n: 0.3 * rng.standard_normal(dim, dtype=np.float32) for n in people}
    feats = np.stack([centers[p.split("/")[0]] for p in images])
    feats += rng.standard_normal(feats.shape, dtype=np.float32)
    feats += 0.3  # a common offset, as real (post-ReLU/PReLU) features have; the mean subtraction removes it
    save_features(path, images, feats)
    return len(images)


def time_once(feats: Path, pairs_path: Path, pca: int | None, path: str) -> dict[str, float]:
    t0 = time.perf_counter()
    table = load_features(feats)
    t1 = time.perf_counter()
    pairs = read_lfw_pairs(pairs_path)
    t2 = time.perf_counter()
    if path == "indexed":
        index = pairs.indices(table.paths)
        t3 = time.perf_counter()
        res = evaluate_pairs(table.features, None, pairs.issame, pairs.fold_ids, pca_dim=pca, pair_index=index)
    else:
        fa, fb = pairs.gather(table.paths, table.features)
        t3 = time.perf_counter()
        res = evaluate_pairs(fa, fb, pairs.issame, pairs.fold_ids, pca_dim=pca)
    t4 = time.perf_counter()
    return {"load": t1 - t0, "parse": t2 - t1, "gather": t3 - t2, "evaluate": t4 - t3, "total": t4 - t0,
            "accuracy": res.accuracy_mean}


def child(args: argparse.Namespace) -> int:
    """Time every PCA setting on an existing features file; print the rows as JSON."""
    pairs_path = DATA / "lfw" / "pairs.txt"
    rows = []
    for pca in args.pca:
        for path in args.paths:
            runs = [time_once(Path(args.features), pairs_path, pca or None, path) for _ in range(args.repeats)]
            row = {"pca_dim": pca or None, "path": path}
            for k in ("load", "parse", "gather", "evaluate", "total"):
                vals = [r[k] for r in runs]
                row[k] = {"best": min(vals), "median": statistics.median(vals), "first": vals[0]}
            row["accuracy"] = runs[0]["accuracy"]
            rows.append(row)
    print(json.dumps(rows))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--pca", type=int, nargs="*", default=[0, 128, 256], help="0 = no PCA")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--paths", nargs="*", choices=["indexed", "gathered"], default=["indexed", "gathered"],
                    help="input paths to time: per-image table + pair_index, or gathered (P, D) pair sides")
    ap.add_argument("--blas-threads", nargs="*", default=["default", "1"],
                    help="run every setting with these OPENBLAS/OMP thread counts ('default' = leave unset)")
    ap.add_argument("--note", default="", help="free text for the report, e.g. what changed since the last run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--features", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    pairs_path = DATA / "lfw" / "pairs.txt"
    if not pairs_path.is_file():
        print(f"missing {pairs_path}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    load_before = uptime()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        feats = Path(tmp) / "lfw_feats.npz"
        n = make_features(feats, args.dim)
        for threads in args.blas_threads:
            env = dict(os.environ)
            if threads != "default":
                env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            cmd = [sys.executable, __file__, "--child", "--features", str(feats), "--repeats", str(args.repeats),
                   "--pca", *map(str, args.pca), "--paths", *args.paths]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            for row in json.loads(out.strip().splitlines()[-1]):
                row["blas_threads"] = threads
                rows.append(row)
                print(f"threads={threads} pca={row['pca_dim'] or 'none'} {row['path']}: total best {row['total']['best']:.3f} s, "
                      f"median {row['total']['median']:.3f} s, first {row['total']['first']:.3f} s "
                      f"(evaluate {row['evaluate']['median']:.3f} s), accuracy {row['accuracy']:.4f}", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "centerloss.cli", "eval", "lfw", "--features", str(feats),
                        "--pairs", str(pairs_path), "--out", str(Path(tmp) / "run")], check=True,
                       capture_output=True)
        cli_s = time.perf_counter() - t0
    print(f"full CLI incl. interpreter start, report and plots: {cli_s:.2f} s")
    result = {
        "features": f"{n} x {args.dim} float32 (synthetic clusters), official pairs.txt (6000 pairs, 10 folds)",
        "repeats": args.repeats,
        "rows": rows,
        "cli_seconds": cli_s,
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__},
        "load_before": load_before,
        "load_after": uptime(),
        "note": args.note,
    }
    (OUT / "lfw_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# LFW 10-fold evaluation from a features file",
        "",
        f"Input: {result['features']}. Best / median of {args.repeats} runs, seconds (stage columns: median).",
        f"Machine: {result['machine']['cpu']}, {os.cpu_count()} cores, shared with other users.",
        f"Load before: `{load_before}`; after: `{result['load_after']}`.",
        *(["", f"Note: {args.note}"] if args.note else []),
        "",
        "| BLAS threads | PCA | input | load | parse | gather | evaluate | total (best) | total (median) "
        "| total (first) | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(f"| {r['blas_threads']} | {r['pca_dim'] or 'none'} | {r['path']} | {r['load']['median']:.3f} | "
                  f"{r['parse']['median']:.3f} | {r['gather']['median']:.3f} | {r['evaluate']['median']:.3f} | "
                  f"{r['total']['best']:.3f} | {r['total']['median']:.3f} | {r['total']['first']:.3f} | "
                  f"{r['accuracy']:.4f} |")
    md += ["", "Input: `indexed` = per-image table + `pair_index` (each distinct image projected once; what the "
           "CLI uses), `gathered` = the (P, D) pair sides.",
           "", f"Whole `centerloss eval lfw` command (new interpreter, torch import, report.json/md, two plots, "
           f"no PCA, default threads): {cli_s:.2f} s.", ""]
    (OUT / "lfw_eval.md").write_text("\n".join(md))
    print(f"wrote {OUT / 'lfw_eval.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
