"""Training throughput (images/s) of the face networks at 112x96: one full model-C step (forward, softmax over
C identities + center loss, backward, SGD) on synthetic on-device batches, so data loading is not measured.

CPU: fp32 (NCHW and channels-last). CUDA: fp32, bf16 autocast, and bf16 + channels-last (the issue's target:
>= 4,000 images/s for Face-ResNet-27 on an H200-class GPU). Needs only torch and numpy plus this repository's
``src`` (found relative to this file; the package need not be installed).

    python benchmarks/bench_face_throughput.py                           # CPU, short
    python benchmarks/bench_face_throughput.py --device cuda --out DIR   # GPU, < 2 minutes incl. warm-up

Writes ``face_throughput_<device>.json`` and ``face_throughput_<device>.md`` into ``--out``
(default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from centerloss.losses import CenterLoss  # noqa: E402  (torch only)
from centerloss.models import create_model  # noqa: E402  (torch only)


def _load() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover
        return None


def bench(model_name: str, device: torch.device, batch: int, amp: str, channels_last: bool, iters: int,
          warmup: int, num_classes: int, compile_: bool = False) -> dict:
    """Images/s of the training step; median of per-iteration times after ``warmup`` iterations."""
    torch.manual_seed(0)
    net = create_model(model_name).to(device)
    d = net.embed_dim
    clf = torch.nn.Linear(d, num_classes).to(device)
    center = CenterLoss(num_classes, d, alpha=0.5).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    params = list(net.parameters()) + list(clf.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    step_net = torch.compile(net) if compile_ else net
    x = torch.randn(batch, 3, 112, 96, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            f = step_net(x)
            logits = clf(f)
            loss = F.cross_entropy(logits.float(), y) + 0.003 * center(f, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_w = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t_w
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    out = {"model": model_name, "device": str(device), "batch": batch, "amp": amp, "channels_last": channels_last,
           "compile": compile_, "iters": iters, "warmup": warmup, "warmup_s": round(warm_s, 2),
           "ms_per_step_median": round(1e3 * med, 2), "images_per_s": round(batch / med, 1),
           "images_per_s_mean": round(batch * iters / sum(times), 1)}
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    return out


def _md(rows: list[dict], env: dict) -> str:
    lines = ["# Face network training throughput (112x96, model C step)", "",
             f"Machine: {env['device_name']}; torch {env['torch']}; {env['threads']} threads; "
             f"load average before/after: {env['load_before']} / {env['load_after']}.", "",
             "Synthetic on-device batches (no data loading); softmax over "
             f"{env['num_classes']} identities + center loss; SGD momentum. Median of the timed iterations.", "",
             "| model | device | batch | amp | channels-last | compile | ms/step | images/s |",
             "|---|---|---:|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['device']} | {r['batch']} | {r['amp']} | {r['channels_last']} | "
                     f"{r['compile']} | {r['ms_per_step_median']} | **{r['images_per_s']}** |")
    if env.get("skipped_for_time"):
        lines += ["", "Skipped (time budget): " + "; ".join(env["skipped_for_time"])]
    if any(r["device"].startswith("cuda") and r["model"] == "face_resnet27" for r in rows):
        best = max(r["images_per_s"] for r in rows if r["model"] == "face_resnet27" and r["device"].startswith("cuda"))
        lines += ["", f"Best Face-ResNet-27 GPU throughput: **{best} images/s** (target >= 4000 on an H200)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--batch", type=int, default=None, help="default: 32 on CPU, 256 on CUDA")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default: 3 CPU, 30 CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="default: 1 CPU, 15 CUDA")
    ap.add_argument("--num-classes", type=int, default=10575, help="identities (CASIA-WebFace: 10575)")
    ap.add_argument("--models", default=None, help="comma list (default: face_resnet27 + face_small on CPU)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA; adds compile time)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds (default: 80 on CUDA, 900 on CPU); configurations not started by then are skipped (results are written after "
                         "every configuration, so an outer timeout still leaves a table)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    rows: list[dict] = []
    t0 = time.perf_counter()
    if dev.type == "cpu":
        batch, iters, warm = args.batch or 32, args.iters or 3, args.warmup if args.warmup is not None else 1
        models = (args.models or "face_resnet27,face_small").split(",")
        configs = [("none", False), ("none", True)]
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        batch, iters, warm = args.batch or 256, args.iters or 30, args.warmup if args.warmup is not None else 15
        models = (args.models or "face_resnet27").split(",")
        configs = [("bf16", True), ("bf16", False), ("none", False)]  # the target configuration first
    plan: list[tuple[str, int, str, bool, bool]] = []
    for m in models:
        plan += [(m, batch, amp, cl, False) for amp, cl in configs]
        if dev.type == "cuda":
            plan.append((m, 2 * batch, "bf16", True, False))  # larger batch
            if args.compile:
                plan.append((m, batch, "bf16", True, True))
    budget = args.budget if args.budget is not None else (80.0 if dev.type == "cuda" else 900.0)
    skipped: list[str] = []
    env: dict = {}
    for m, b, amp, cl, comp in plan:
        if time.perf_counter() - t0 > budget:
            skipped.append(f"{m} batch {b} {amp} channels_last={cl} compile={comp}")
            continue
        r = bench(m, dev, b, amp, cl, iters, warm, args.num_classes, compile_=comp)
        print(json.dumps(r), flush=True)
        rows.append(r)
        env = _env(dev, load_before, args.num_classes, t0, skipped)
        _write(out, dev, rows, env)
    env = _env(dev, load_before, args.num_classes, t0, skipped)
    _write(out, dev, rows, env)
    print(_md(rows, env))
    return 0


def _env(dev: torch.device, load_before, num_classes: int, t0: float, skipped: list[str]) -> dict:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {"device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_before": [round(v, 2) for v in load_before or ()],
            "load_after": [round(v, 2) for v in _load() or ()], "num_classes": num_classes,
            "total_s": round(time.perf_counter() - t0, 1), "python": platform.python_version(),
            "skipped_for_time": skipped}


def _write(out: Path, dev: torch.device, rows: list[dict], env: dict) -> None:
    (out / f"face_throughput_{dev.type}.json").write_text(json.dumps({"env": env, "results": rows}, indent=2))
    (out / f"face_throughput_{dev.type}.md").write_text(_md(rows, env))


if __name__ == "__main__":
    sys.exit(main())
