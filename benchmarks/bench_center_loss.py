"""Time and memory of one center-loss training step (forward + backward + center update) against C.

Compares ``centerloss.CenterLoss`` (paper mode: gathered centers, Eq. 4 on the classes in the batch) with our
own implementation of the dense formulation used by popular ports: a full (B, C) distance matrix
``|x|^2 + |c|^2 - 2 x.c``, masked to the true class, with the centers an ``nn.Parameter`` stepped by SGD.

Each (method, C) is measured in a fresh subprocess so peak memory is clean. On CPU "extra memory" is the peak
resident set size minus the RSS right after the centers table, inputs and a warm-up step exist; on CUDA it is
``max_memory_allocated`` minus the centers table and inputs.

    python benchmarks/bench_center_loss.py                     # CPU, writes benchmarks/results/
    python benchmarks/bench_center_loss.py --device cuda --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class DenseCenterLoss(torch.nn.Module):
    """The ports' formulation, written here for comparison: O(B * C * d) time, O(B * C) memory."""

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = torch.nn.Parameter(torch.zeros(num_classes, feat_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.centers
        distmat = x.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1) - 2.0 * x @ c.t()  # (B, C)
        mask = y.unsqueeze(1) == torch.arange(c.shape[0], device=x.device)  # (B, C)
        return (distmat * mask).clamp(1e-12, 1e12).sum() / (2 * x.shape[0])


def measure_one(method: str, num_classes: int, batch: int, dim: int, device: str, steps: int) -> dict:
    """Run in the child process: returns ms/step and extra bytes."""
    from centerloss import CenterLoss

    torch.manual_seed(0)
    dev = torch.device(device)
    if method == "centerloss":
        loss_fn = CenterLoss(num_classes, dim, alpha=0.5).to(dev)
        opt = None
    else:
        loss_fn = DenseCenterLoss(num_classes, dim).to(dev)
        opt = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    x = torch.randn(batch, dim, device=dev, requires_grad=True)
    y = torch.randint(0, num_classes, (batch,), device=dev)

    def step() -> None:
        loss = loss_fn(x, y)
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        x.grad = None

    step()  # warm-up (allocator, kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    times = []
    for _ in range(steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        extra = torch.cuda.max_memory_allocated() - base
    else:
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times.sort()
    return {"ms_per_step": 1000 * times[len(times) // 2], "extra_bytes": max(0, extra),
            "centers_bytes": num_classes * dim * 4}


def render(machine: dict, batch: int, dim: int, rows: list[dict]) -> list[str]:
    """The markdown table of a run (also used by ``--render`` to redraw it from the saved JSON)."""
    load = ""
    if "uptime_before" in machine:
        load = f" Load: before `{machine['uptime_before']}`; after `{machine['uptime_after']}`."
    lines = [f"# Center-loss step time and memory ({machine['device']}, B={batch}, d={dim})", "",
             f"torch {machine['torch']}, {machine['threads']} threads, {machine.get('cpu', '')} "
             f"({machine.get('cpu_count', '?')} CPUs), {machine['platform']}. Median of timed steps (forward + "
             "backward + center update), each point in a fresh process. Extra memory excludes the centers table "
             f"itself.{load}", "",
             "| C | CenterLoss ms/step | dense ms/step | speed-up | CenterLoss extra MiB | dense extra MiB |",
             "|---|---|---|---|---|---|"]
    by = {(r["classes"], r["method"]): r for r in rows}
    for c in sorted({r["classes"] for r in rows}):
        a, b = by.get((c, "centerloss"), {}), by.get((c, "dense"), {})

        def fmt(r: dict, key: str, scale: float = 1.0) -> str:
            return f"{r[key] / scale:.2f}" if key in r else r.get("error", "-")[:40]

        sp = "-"
        if "ms_per_step" in a and "ms_per_step" in b:
            ratio = b["ms_per_step"] / a["ms_per_step"]
            sp = f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2g}x"
        lines.append(f"| {c:,} | {fmt(a, 'ms_per_step')} | {fmt(b, 'ms_per_step')} | {sp} | "
                     f"{fmt(a, 'extra_bytes', 2**20)} | {fmt(b, 'extra_bytes', 2**20)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", default="10,1000,10000,100000,1000000")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per point (median reported)")
    ap.add_argument("--dense-steps", type=int, default=3, help="timed steps for the dense baseline at C >= 100k")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--render", metavar="JSON", help="only redraw the markdown table of a saved run")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "C"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.render:
        saved = json.loads(Path(args.render).read_text())
        lines = render(saved["machine"], saved["batch"], saved["dim"], saved["rows"])
        Path(args.render).with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return

    if args.child:
        method, c = args.child[0], int(args.child[1])
        steps = args.dense_steps if method == "dense" and c >= 100_000 else args.steps
        print(json.dumps(measure_one(method, c, args.batch, args.dim, args.device, steps)))
        return

    from centerloss.utils.machine import uptime

    rows, before = [], uptime()
    for c in [int(v) for v in args.classes.split(",")]:
        for method in ("centerloss", "dense"):
            cmd = [sys.executable, __file__, "--child", method, str(c), "--device", args.device,
                   "--batch", str(args.batch), "--dim", str(args.dim), "--steps", str(args.steps),
                   "--dense-steps", str(args.dense_steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                rows.append({"classes": c, "method": method, "error": err})
                print(f"C={c:>8} {method:>10}: FAILED {err}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r.update(classes=c, method=method)
            rows.append(r)
            print(f"C={c:>8} {method:>10}: {r['ms_per_step']:9.2f} ms/step, extra {r['extra_bytes'] / 2**20:8.1f} MiB"
                  f" (centers {r['centers_bytes'] / 2**20:.1f} MiB)", flush=True)

    name = args.device.replace(":", "")
    from centerloss.utils.atomic import write_json, write_text
    from centerloss.utils.machine import machine_info

    machine = {**machine_info(), "threads": torch.get_num_threads(), "uptime_before": before,
               "uptime_after": uptime(),
               "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"center_loss_{name}.json", {"machine": machine, "batch": args.batch, "dim": args.dim,
                                                   "rows": rows})
    lines = render(machine, args.batch, args.dim, rows)
    write_text(out / f"center_loss_{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
