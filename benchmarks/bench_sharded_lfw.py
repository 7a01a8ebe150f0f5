"""The sharded head on the LFW experiment's data: does it train the same network as the dense head?

Three trainings of model C (``lfw_cpu_C``: face_small, lambda 3e-3, alpha 0.5, 20 epochs) on the identities
disjoint from LFW folds 1-5, then verification on those folds (the ``cpu`` LFW protocol):

1. the dense head in one process, initialised like the sharded head (``head.kwargs.init=blocks``);
2. the sharded head (classifier rows and centers split over the ranks) at sample_rate 1, 2 gloo processes;
3. the sharded head at sample_rate 0.1, 2 gloo processes.

Run 2 should match run 1 to rounding (same initial weights, same global batches; only reduction order
differs); run 3 samples ~10% of the negative classes per step and should land within the fold std.

    python benchmarks/bench_sharded_lfw.py --aligned runs/lfw_aligned   # -> benchmarks/results/sharded_lfw.*
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {
    "dense, 1 process": (1, ["head.name=linear", "head.kwargs={bias: true, init: blocks}"]),
    "sharded r=1, 2 processes": (2, ["head.name=sharded", "head.kwargs={bias: true, sample_rate: 1.0}"]),
    "sharded r=0.1, 2 processes": (2, ["head.name=sharded", "head.kwargs={bias: true, sample_rate: 0.1}"]),
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(name: str, procs: int, sets: list[str], args, train_list: Path, out: Path) -> dict:
    folder = out / name.split(",")[0].replace(" ", "_").replace("=", "")
    cmd = [sys.executable, "-m", "centerloss.cli"]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_port",
               str(_free_port()), "-m", "centerloss.cli"]
    cmd += ["train", "--preset", "lfw_cpu_C", "--data", str(Path(args.aligned).resolve()), "--out", str(folder),
            "--resume", "--set", f"data.file_list={train_list}", f"runtime.threads={max(1, 2 // procs)}",
            "runtime.progress=false", *sets, *args.extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return {"folder": str(folder), "processes": procs, "set": sets, "wall_s": round(time.perf_counter() - t0, 1),
            "summary": json.loads((folder / "summary.json").read_text())}


def verify(folder: Path, args) -> dict:
    from centerloss.eval.features import extract_features
    from centerloss.eval.protocols import read_lfw_pairs
    from centerloss.eval.verification import evaluate_pairs
    from centerloss.models.io import load_model

    pairs = read_lfw_pairs(args.pairs).folds(0, 1, 2, 3, 4)
    net, _ = load_model(folder / "model.safetensors")
    f = extract_features(net, pairs.items(), args.aligned, batch_size=128, progress=False)
    fa, fb = pairs.gather(pairs.items(), f)
    r = evaluate_pairs(fa, fb, pairs.issame, pairs.fold_ids)
    return {"accuracy_mean": r.accuracy_mean, "accuracy_std": r.accuracy_std, "auc": r.auc,
            "fold_accuracies": [float(a) for a in r.fold_accuracies]}


def weight_diff(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    num = max(float((x[k] - y[k]).abs().max()) for k in x)
    rel = max(float((x[k] - y[k]).norm() / x[k].norm().clamp_min(1e-12)) for k in x)
    return {"max_abs": num, "max_relative_l2": rel}


def loss_trajectory(dense: Path, other: Path, at: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000)) -> dict:
    """|loss - dense loss| / |dense loss| at logged steps (and the last): rounding differences start at
    float precision and are amplified by training; a bug would show from the first steps."""
    from centerloss.engine.logs import read_csv

    a = {int(r["step"]): float(r["loss"]) for r in read_csv(dense / "train_log.csv")}
    b = {int(r["step"]): float(r["loss"]) for r in read_csv(other / "train_log.csv")}
    steps = [s for s in (*at, max(a)) if s in a and s in b]
    return {str(s): abs(a[s] - b[s]) / abs(a[s]) for s in steps}


def paired_vs_dense(dense: dict, other: dict) -> dict:
    import numpy as np

    d = np.array(other["fold_accuracies"]) - np.array(dense["fold_accuracies"])
    return {"mean": float(d.mean()), "std": float(d.std(ddof=1)), "dense_fold_std": dense["accuracy_std"]}


def compare(runs: dict) -> None:
    """The derived comparisons against the first (dense) run, added to each other run in place."""
    first = next(iter(runs.values()))
    dense = Path(first["folder"])
    for r in list(runs.values())[1:]:
        r["weights_vs_dense"] = weight_diff(dense, Path(r["folder"]))
        r["loss_rel_diff_vs_dense"] = loss_trajectory(dense, Path(r["folder"]))
        r["accuracy_vs_dense"] = paired_vs_dense(first["verification"], r["verification"])


def render(res: dict) -> str:
    lines = ["# Sharded head on the LFW experiment's data", "",
             f"Model C (lfw_cpu_C), {res['train_identities']} training identities; held-out LFW folds 1-5 "
             f"(5-fold CV over 3,000 pairs). CPU: {res['machine']['cpu']}, {res['machine']['cpu_count']} cores "
             "(shared; see the load averages in the JSON).", "",
             "| run | held-out accuracy | minus dense, paired over folds | AUC | vs dense: backbone weights "
             "(max abs / max rel. L2) | train time |",
             "|---|---:|---:|---:|---|---:|"]
    for name, r in res["runs"].items():
        v, d = r["verification"], r.get("weights_vs_dense")
        dd = f"{d['max_abs']:.2e} / {d['max_relative_l2']:.2e}" if d else "-"
        pd = r.get("accuracy_vs_dense")
        pd = f"{100 * pd['mean']:+.2f} +- {100 * pd['std']:.2f}" if pd else "-"
        lines.append(f"| {name} | {100 * v['accuracy_mean']:.2f} +- {100 * v['accuracy_std']:.2f}% | {pd} | "
                     f"{v['auc']:.4f} | {dd} | {r['wall_s'] / 60:.1f} min |")
    traj = {n: r["loss_rel_diff_vs_dense"] for n, r in res["runs"].items() if "loss_rel_diff_vs_dense" in r}
    if traj:
        steps = list(next(iter(traj.values())))
        lines += ["", "Relative difference of the logged training loss from the dense run's, by step:", "",
                  "| run | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---:|" * len(steps)]
        lines += [f"| {n} | " + " | ".join(f"{t[s]:.1e}" for s in steps) + " |" for n, t in traj.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--aligned", default="runs/lfw_aligned")
    p.add_argument("--pairs", default=str(Path(os.environ.get("CENTERLOSS_DATA", "../shared/data")) / "lfw" / "pairs.txt"))
    p.add_argument("--work", default="runs/bench_sharded_lfw")
    p.add_argument("--out", default=str(HERE / "results" / "sharded_lfw.json"))
    p.add_argument("--render", action="store_true", help="only redraw the .md from the saved JSON")
    p.add_argument("--reanalyse", action="store_true", help="recompute the comparisons with the dense run from "
                   "the saved JSON and the run folders (no training), then redraw the .md")
    p.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE", help="more --set overrides (smoke tests)")
    args = p.parse_args()
    from centerloss.eval.protocols import read_lfw_pairs
    from centerloss.experiments.lfw import training_split
    from centerloss.utils.atomic import write_json, write_text
    from centerloss.utils.machine import machine_info

    if args.render or args.reanalyse:
        res = json.loads(Path(args.out).read_text())
        if args.reanalyse:
            compare(res["runs"])
            write_json(Path(args.out), res)
        write_text(Path(args.out).with_suffix(".md"), render(res))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    held = {p.split("/")[0] for p in read_lfw_pairs(args.pairs).folds(0, 1, 2, 3, 4).items()}
    files, split = training_split(Path(args.aligned), held, 2, True)
    train_list = work / "train_files.txt"
    write_text(train_list, "\n".join(files) + "\n")
    runs = {}
    for name, (procs, sets) in RUNS.items():
        runs[name] = train(name, procs, sets, args, train_list.resolve(), work)
        runs[name]["verification"] = verify(Path(runs[name]["folder"]), args)
    compare(runs)
    res = {"train_identities": split["identities"], "runs": runs, "machine": machine_info("cpu")}
    write_json(Path(args.out), res)
    write_text(Path(args.out).with_suffix(".md"), render(res))
    print(render(res))


if __name__ == "__main__":
    main()
