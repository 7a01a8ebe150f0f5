"""1:N identification at MegaFace scale: 1M distractors x 512-d float32 (2 GB) and 1,000 probes.

Synthetic data, generated in chunks with a seed per chunk (identical in every run):
  probes      100 people x 10 images; image = normalise(center + s * u), u a random unit vector and
              s ~ U(0.5, 2.0) per image, so genuine cosines spread over ~0.2-0.8 (some fall below the best
              distractor: rank-1 is not trivially 100%)
  gallery     the probes themselves (MegaFace Challenge 1 style: a probe never matches itself)
  distractors N random unit vectors (impostor cosines ~ N(0, 1/512)), in RAM or memory-mapped from /tmp

Each search backend runs in its own child process so that its peak RSS (``ru_maxrss``) is its own; the
child also reports tracemalloc's peak for the numpy/Python allocations of the evaluation itself (torch's and
faiss's internal buffers are invisible to tracemalloc, RSS covers them). The parent checks that all
backends agree, then writes benchmarks/results/identification.json and .md with the machine load.

Usage:  .venv/bin/python benchmarks/bench_identification.py [--distractors 1000000] [--dim 512]
            [--backends faiss torch] [--memmap]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from centerloss.utils.machine import uptime

OUT = Path(__file__).resolve().parent / "results"
CHUNK = 65536


def _rss_now_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_probes(n_people: int, per: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_people, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_people), per)
    u = rng.standard_normal((labels.size, dim), dtype=np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    s = rng.uniform(0.5, 2.0, size=(labels.size, 1)).astype(np.float32)
    x = centers[labels] + s * u
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def fill_distractors(out: np.ndarray, seed: int = 1) -> None:
    """Unit random rows, written chunk by chunk (float32 throughout: no 4 GB float64 temporary)."""
    for i, start in enumerate(range(0, out.shape[0], CHUNK)):
        rng = np.random.default_rng([seed, i])
        block = rng.standard_normal((min(CHUNK, out.shape[0] - start), out.shape[1]), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + block.shape[0]] = block


def child(args: argparse.Namespace) -> int:
    from centerloss.eval.identification import evaluate_identification

    t0 = time.perf_counter()
    probes, labels = make_probes(args.people, args.per_person, args.dim)
    if args.memmap:
        path = Path(args.tmp) / "distractors.npy"
        if not path.exists():
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.distractors, args.dim))
            fill_distractors(mm)
            mm.flush()
            del mm
        distractors = np.load(path, mmap_mode="r")
    else:
        distractors = np.empty((args.distractors, args.dim), dtype=np.float32)
        fill_distractors(distractors)
    t_gen = time.perf_counter() - t0
    rss_data = _rss_now_mb()

    tracemalloc.start()
    t1 = time.perf_counter()
    res = evaluate_identification(probes, labels, probes, labels, distractors, fars=(1e-6,), ranks=(1, 10),
                                  same_set=True, backend=args.backend, progress=False)
    t_eval = time.perf_counter() - t1
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    import torch

    threads = {"torch": torch.get_num_threads()}
    try:
        import faiss

        threads["faiss_omp"] = faiss.omp_get_max_threads()
    except ImportError:
        pass
    print(json.dumps({
        "backend": args.backend,
        "memmap": bool(args.memmap),
        "generate_s": t_gen,
        "evaluate_s": t_eval,
        "stages_s": res.seconds,
        "rss_after_data_mb": rss_data,
        "peak_rss_mb": _peak_rss_mb(),
        "tracemalloc_peak_mb": tm_peak / 2**20,
        "threads": threads,
        "result": res.to_dict(),
    }))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--people", type=int, default=100)
    ap.add_argument("--per-person", type=int, default=10)
    ap.add_argument("--backends", nargs="*", default=["faiss", "torch"])
    ap.add_argument("--memmap", action="store_true", help="keep distractors in a .npy under /tmp, memory-mapped")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    OUT.mkdir(parents=True, exist_ok=True)
    runs = []
    load_before = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            cmd = [sys.executable, __file__, "--child", "--backend", backend, "--tmp", tmp,
                   "--distractors", str(args.distractors), "--dim", str(args.dim), "--people", str(args.people),
                   "--per-person", str(args.per_person)] + (["--memmap"] if args.memmap else [])
            load = uptime()
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            run["wall_s"] = time.perf_counter() - t0
            run["load_at_start"] = load
            runs.append(run)
            r = run["result"]
            print(f"{backend}: search+metrics {run['evaluate_s']:.1f} s (generate {run['generate_s']:.1f} s), "
                  f"peak RSS {run['peak_rss_mb']:.0f} MB; rank-1 {100 * r['rank1']:.2f}%, "
                  f"TAR@1e-6 {100 * r['tar_at_far']['1e-06']:.2f}%   [{load}]")
    keys = ("rank1", "closed_set_rank1", "tar_at_far", "cmc")
    agree = all(run["result"][k] == runs[0]["result"][k] for run in runs for k in keys)
    q = args.people * args.per_person
    result = {
        "setup": {"distractors": args.distractors, "dim": args.dim, "probes": q,
                  "distractor_bytes": args.distractors * args.dim * 4, "memmap": args.memmap},
        "runs": runs,
        "backends_agree": agree,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "mem_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30},
        "load_before": load_before,
        "load_after": uptime(),
    }
    (OUT / "identification.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# 1:N identification: search over distractors",
        "",
        f"{args.distractors:,} distractors x {args.dim}-d float32 ({args.distractors * args.dim * 4 / 2**30:.2f} GiB, "
        f"{'memory-mapped from /tmp' if args.memmap else 'in RAM'}), {q:,} probes ({args.people} people x "
        f"{args.per_person}, probe set = gallery), {runs[0]['result']['n_genuine']:,} genuine trials, "
        f"{runs[0]['result']['n_impostor']:,} impostor pairs. Machine: {os.cpu_count()} cores, "
        f"{result['machine']['mem_total_gb']:.0f} GiB RAM, shared with other users.",
        "",
        "| backend | generate (s) | search + metrics (s) | RSS with data (MB) | peak RSS (MB) | tracemalloc peak (MB) "
        "| rank-1 | TAR@FAR=1e-6 | load average at start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        r = run["result"]
        la = run["load_at_start"].split("load average:")[-1].strip()
        md.append(f"| {run['backend']} | {run['generate_s']:.1f} | {run['evaluate_s']:.1f} | "
                  f"{run['rss_after_data_mb']:.0f} | {run['peak_rss_mb']:.0f} | {run['tracemalloc_peak_mb']:.0f} | "
                  f"{100 * r['rank1']:.2f} % | {100 * r['tar_at_far']['1e-06']:.2f} % | {la} |")
    md += ["", f"Backends agree on every metric: {agree}. Load before: `{load_before}`; after: "
           f"`{result['load_after']}`.", ""]
    (OUT / "identification.md").write_text("\n".join(md))
    print(f"wrote {OUT / 'identification.md'} (backends agree: {agree})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
