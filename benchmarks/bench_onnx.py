"""torch vs onnxruntime: feature parity on real LFW crops and embedding throughput on this CPU.

For each architecture (face_small and face_resnet27 by default; weights: seeded random init, which costs
the same as trained weights) the model is saved, exported with ``centerloss export`` (its own torch check
included), and then:

  parity      max |onnxruntime - torch| over the flip-concat features of real aligned LFW crops
              (--crops, default runs/lfw_aligned; the first --n-crops of them, sorted by path)
  throughput  images/s of the full test feature (crop + flip: two forward passes per image) at each
              --batch-sizes and --threads (default 1 and torch's default), both runtimes on the same thread
              count; the median of --repeats runs of at least --min-seconds each, after a warm-up, the two
              runtimes taking turns in every repeat so that a shared machine's load hits both alike

--model M adds the parity (and throughput) of a trained checkpoint. Writes benchmarks/results/onnx_cpu.json
and .md (atomically) with machine_info and `uptime` before and after.

Usage:  .venv/bin/python benchmarks/bench_onnx.py [--model runs/x/C/model.safetensors] [--batch-sizes 1 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from centerloss.utils.machine import uptime

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def _crops(folder: Path, n: int, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    from centerloss.eval.features import fit_image, list_images
    from centerloss.utils.images import read_rgb

    if folder.is_dir():
        paths = list_images(folder)[:n]
        return np.stack([fit_image(read_rgb(folder / p), size) for p in paths]), f"{len(paths)} LFW crops from {folder}"
    rng = np.random.default_rng(0)
    print(f"warning: {folder} not found; parity on random pixels", file=sys.stderr)
    return rng.integers(0, 256, (n, *size, 3), dtype=np.uint8), f"{n} random-pixel crops ({folder} not found)"


def _time(emb: Any, x: np.ndarray, min_seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        emb.embed(x)
        n += len(x)
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt


def _throughput(runtimes: dict[str, Any], crops: np.ndarray, batch: int, threads: int, repeats: int,
                min_seconds: float) -> dict[str, Any]:
    """images/s per runtime; the runtimes take turns in every repeat, so a shared machine's changing load hits
    both alike."""
    import torch

    x = np.concatenate([crops] * int(np.ceil(batch / len(crops))))[:batch]
    torch.set_num_threads(threads)
    rates: dict[str, list[float]] = {k: [] for k in runtimes}
    for emb in runtimes.values():
        emb.embed(x)  # warm-up (allocations, oneDNN / ORT kernel selection)
    for _ in range(repeats):
        for k, emb in runtimes.items():
            rates[k].append(_time(emb, x, min_seconds))
    return {k: {"images_per_s": round(statistics.median(v), 2), "runs": [round(r, 2) for r in v]}
            for k, v in rates.items()}


def _one(name: str, model_path: Path, tmp: Path, crops_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from centerloss.face.models import TorchEmbedder
    from centerloss.face.onnx_model import OnnxEmbedder, export_onnx

    t0 = time.perf_counter()
    summary = export_onnx(model_path, tmp / f"{name}.onnx")
    export_s = time.perf_counter() - t0
    te = TorchEmbedder(model_path)
    crops, what = _crops(crops_dir, args.n_crops, te.input_size)
    oe = {t: OnnxEmbedder(tmp / f"{name}.onnx", threads=t) for t in args.threads}
    diffs = [float(np.abs(oe[args.threads[0]].embed(crops[i:i + 16]) - te.embed(crops[i:i + 16])).max())
             for i in range(0, len(crops), 16)]
    row: dict[str, Any] = {"model": name, "source": str(model_path), "params": sum(p.numel() for p in te.model.parameters()),
                           "onnx_bytes": summary["bytes"], "export_seconds": round(export_s, 2),
                           "parity_crops": what, "max_abs_diff": max(diffs),
                           "feature_scale": float(np.abs(te.embed(crops[:16])).max()), "throughput": {}}
    for t in args.threads:
        for b in args.batch_sizes:
            r = _throughput({"torch": te, "onnxruntime": oe[t]}, crops, b, t, args.repeats, args.min_seconds)
            row["throughput"][f"{t}x{b}"] = {"threads": t, "batch": b, **r}
            print(f"{name} threads {t} batch {b}: torch {r['torch']['images_per_s']:.1f} img/s, onnxruntime "
                  f"{r['onnxruntime']['images_per_s']:.1f} img/s; parity {row['max_abs_diff']:.2e}", flush=True)
    return row


def _markdown(res: dict[str, Any]) -> str:
    lines = ["# torch vs onnxruntime on CPU (benchmarks/bench_onnx.py)", "",
             f"Machine: {res['machine']['cpu']}, {res['machine']['cpu_count']} CPUs, torch {res['machine']['torch']}, "
             f"onnxruntime {res['onnxruntime']}; both runtimes on the same thread count (torch threads = ORT intra-op "
             "threads), taking turns in every repeat.",
             f"Load: before `{res['uptime_before']}`; after `{res['uptime_after']}`.", "",
             "Throughput = images/s of the full test feature (crop + horizontal flip, two forward passes per image), "
             f"median of {res['repeats']} interleaved runs of >= {res['min_seconds']} s (all runs in the JSON). Parity = max |onnxruntime - torch| of the "
             "flip-concat features.", "",
             "| model | params | threads | batch | torch img/s | onnxruntime img/s | ratio | max abs diff | parity crops |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in res["models"]:
        for t in r["throughput"].values():
            tt, oo = t["torch"]["images_per_s"], t["onnxruntime"]["images_per_s"]
            lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {t['threads']} | {t['batch']} | {tt:.1f} | {oo:.1f} "
                         f"| {oo / tt:.2f}x | {r['max_abs_diff']:.2e} | {r['parity_crops']} |")
    lines += ["", "Weights are a seeded random init unless the row names a checkpoint; speed does not depend on them.",
              "A shared machine's load moves these figures; compare rows taken in the same run.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["face_small", "face_resnet27"])
    p.add_argument("--model", default=None, help="also measure this trained .safetensors checkpoint")
    p.add_argument("--crops", default=str(ROOT / "runs" / "lfw_aligned"), help="aligned LFW crops for parity")
    p.add_argument("--n-crops", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts [1 and torch's default]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--out", default=str(OUT / "onnx_cpu"), help="output stem (.json and .md)")
    args = p.parse_args(argv)

    import onnxruntime
    import torch

    from centerloss.models import create_model
    from centerloss.models.io import save_model
    from centerloss.utils.atomic import write_json, write_text
    from centerloss.utils.machine import machine_info

    args.threads = args.threads or sorted({1, torch.get_num_threads()})
    res: dict[str, Any] = {"machine": machine_info(), "uptime_before": uptime(), "threads": args.threads,
                           "onnxruntime": onnxruntime.__version__, "repeats": args.repeats,
                           "min_seconds": args.min_seconds, "command": " ".join(sys.argv), "models": []}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for arch in args.archs:
            torch.manual_seed(0)
            save_model(tmp / f"{arch}.safetensors", create_model(arch), arch, {})
            res["models"].append(_one(arch, tmp / f"{arch}.safetensors", tmp, Path(args.crops), args))
        if args.model:
            res["models"].append(_one(f"{Path(args.model).parent.name or 'model'} (trained)", Path(args.model), tmp,
                                      Path(args.crops), args))
    res["uptime_after"] = uptime()
    write_json(f"{args.out}.json", res)
    write_text(f"{args.out}.md", _markdown(res))
    print(f"wrote {args.out}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
