"""Host syncs and time per steady-state training step of the real engine, for each head / aux combination.

Counts, with :class:`centerloss.engine.syncs.SyncCounter`, every device-to-host synchronisation inside
``Trainer.train_step`` (``.item()``, ``bool()``, ``.tolist()``, ``unique``, boolean masks, ...) after the first
``--warmup`` steps, and times the same steps. It also counts the steps that read the host on purpose (log and
checkpoint steps) to show where the syncs went. Synthetic 112x96 crops, face_small, CPU.

    python benchmarks/bench_engine_syncs.py            # -> benchmarks/results/engine_syncs.{json,md}
    python benchmarks/bench_engine_syncs.py --render   # re-render the .md from the JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

CONFIGS = {
    "softmax (A)": {"aux.name": "none", "aux.kwargs": {}},
    "softmax + center, paper Eq. 4 (C)": {"aux.name": "center", "aux.kwargs": {"alpha": 0.5}},
    "softmax + center, learnable": {"aux.name": "center", "aux.kwargs": {"update": "learnable"}},
    "softmax + center, caffe": {"aux.name": "center", "aux.kwargs": {"update": "caffe"}},
    "softmax + contrastive (B)": {"aux.name": "contrastive", "aux.kwargs": {"margin": 1.0}},
    "ArcFace + center": {"head.name": "arcface", "head.kwargs": {"s": 30, "m": 0.35},
                         "aux.name": "center", "aux.kwargs": {"alpha": 0.5}},
    "SphereFace": {"head.name": "sphereface", "head.kwargs": {}, "aux.name": "none", "aux.kwargs": {}},
    "sharded head r=0.5 + center (1 process)": {"head.name": "sharded", "head.kwargs": {"sample_rate": 0.5},
                                                "aux.name": "center", "aux.kwargs": {"alpha": 0.5}},
}


def measure(name: str, over: dict, data: Path, tmp: Path, steps: int, warmup: int) -> dict:
    from conftest import tiny_cfg

    from centerloss.engine.syncs import SyncCounter
    from centerloss.engine.trainer import Trainer

    cfg = tiny_cfg(data, tmp / name.replace(" ", "_").replace("/", "_"), **{
        **over, "schedule.epochs": 0, "schedule.max_steps": steps, "runtime.log_every": steps,
        "runtime.ckpt_every": steps, "model.kwargs": {"width": 16, "embed_dim": 64}, "data.batch_size": 32})
    t = Trainer(cfg)
    counts, times = [], []
    orig = t.train_step

    def counted(x, y):
        with SyncCounter() as s:
            t0 = time.perf_counter()
            orig(x, y)
            dt = time.perf_counter() - t0
        if t.step >= warmup:
            counts.append(dict(s.ops))
            times.append(dt)

    t.train_step = counted
    t.fit()
    total = sum(sum(c.values()) for c in counts)
    return {"config": name, "steps_counted": len(counts), "syncs_total": total,
            "syncs_per_step": total / max(len(counts), 1), "ops": {k: v for c in counts for k, v in c.items()},
            "step_ms_median": 1000 * statistics.median(times)}


def render(res: dict) -> str:
    m = res["machine"]
    lines = ["# Host syncs per steady-state training step", "",
             f"`python benchmarks/bench_engine_syncs.py`: face_small (width 16, 64-d), batch 32 of synthetic 112x96 "
             f"crops, {res['steps']} steps, the first {res['warmup']} not counted; CPU ({m['cpu']}, {m['cpu_count']} "
             f"cores, torch {m['torch']}), load average {m['load_average']} at the end.", "",
             "| config | steps counted | syncs per step | step time (median) |", "|---|---:|---:|---:|"]
    for r in res["results"]:
        lines.append(f"| {r['config']} | {r['steps_counted']} | {r['syncs_per_step']:g} | {r['step_ms_median']:.1f} ms |")
    lines += ["", "Syncs happen at log and checkpoint steps only (metrics, the non-finite flag, checkpoint tensors)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "engine_syncs.json"))
    p.add_argument("--render", action="store_true")
    args = p.parse_args()
    from centerloss.utils.atomic import write_json, write_text
    from centerloss.utils.machine import machine_info

    out = Path(args.out)
    if args.render:
        write_text(out.with_suffix(".md"), render(json.loads(out.read_text())))
        return
    import torch
    from conftest import write_faces

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        data = write_faces(Path(d) / "faces", identities=8, per_identity=8)
        results = [measure(n, o, data, Path(d), args.steps, args.warmup) for n, o in CONFIGS.items()]
    res = {"steps": args.steps, "warmup": args.warmup, "results": results, "machine": machine_info("cpu")}
    write_json(out, res)
    write_text(out.with_suffix(".md"), render(res))
    print(render(res))


if __name__ == "__main__":
    main()
