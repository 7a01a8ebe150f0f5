"""Benchmark the aligner: detector time per stage, per-image cost, and end-to-end `align_tree` throughput.

    .venv/bin/python benchmarks/bench_align.py --n 500 --workers 2 --out runs/bench_align \
        [--manifest runs/lfw_aligned_test/manifest.csv]

Writes OUT/bench_align.json and OUT/bench_align.md. With --manifest it also recomputes the test-mode
fallback points (mean detected landmarks as fractions of the image size) and compares them with
``centerloss.align.policy.DEFAULT_POINTS_FRAC``. The machine is shared, so the load average is recorded
with every figure; compare runs only at similar load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np


def _data_dir() -> Path:
    return Path(os.environ.get("CENTERLOSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _detector_stages(files: list[Path], min_face: float) -> dict:
    import torch

    from centerloss.align.mtcnn import MTCNN
    from centerloss.utils.images import decode_image as read_rgb  # (rgb, note), like the old align reader

    torch.set_num_threads(1)
    det = MTCNN(min_face_size=min_face)
    images = [read_rgb(f)[0] for f in files]
    det.detect(images[0])  # warm-up
    t = np.zeros(3)
    n = np.zeros(3)
    for im in images:
        a = time.perf_counter()
        b1, i1 = det._stage1([im])
        b = time.perf_counter()
        b2, i2 = det._stage2([im], b1, i1)
        c = time.perf_counter()
        faces = det._stage3([im], b2, i2)[0]
        d = time.perf_counter()
        t += (b - a, c - b, d - c)
        n += (len(b1), len(b2), len(faces))
    k = len(images)
    return {"images": k, "ms_pnet_stage": 1e3 * t[0] / k, "ms_rnet_stage": 1e3 * t[1] / k,
            "ms_onet_stage": 1e3 * t[2] / k, "ms_detect_total": 1e3 * t.sum() / k,
            "candidates_after_pnet": n[0] / k, "candidates_after_rnet": n[1] / k, "faces": n[2] / k}


def _end_to_end(files: list[Path], root: Path, workers: int, min_face: float) -> dict:
    from centerloss.align import align_tree

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for f in files:
            link = src / f.relative_to(root)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)
        s = align_tree(src, Path(tmp) / "dst", workers=workers, min_face_size=min_face, progress=False)
    return {k: s[k] for k in ("files", "detected", "seconds_total", "images_per_second", "workers",
                              "load_average_start", "load_average_end")}


def _mean_points(manifest: Path) -> dict:
    from centerloss.align.policy import DEFAULT_POINTS_FRAC

    cols = [f"{a}{i}" for i in range(1, 6) for a in "xy"]
    with open(manifest, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["detected"] == "1"]
    pts = np.array([[float(r[c]) for c in cols] for r in rows]).reshape(-1, 5, 2)
    # LFW images are all 250x250; points are pixel centres, fractions are of pixel edges.
    frac = (pts.mean(0) + 0.5) / 250.0
    return {"detected_rows": len(rows), "mean_points_frac": np.round(frac, 4).tolist(),
            "max_abs_diff_vs_DEFAULT_POINTS_FRAC": float(np.abs(frac - DEFAULT_POINTS_FRAC).max()),
            "std_px": np.round(pts.std(0), 2).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=_data_dir() / "lfw" / "images")
    ap.add_argument("--n", type=int, default=500, help="random LFW images to time (seed 0)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--min-face", type=float, default=40.0)
    ap.add_argument("--manifest", type=Path, default=None, help="a manifest.csv of all LFW (fallback points)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_align"))
    a = ap.parse_args()

    files = sorted(a.data.rglob("*.jpg"))
    files = random.Random(0).sample(files, min(a.n, len(files)))
    res = {"cpu_count": os.cpu_count(), "load_average_before": list(os.getloadavg()), "n": len(files),
           "min_face": a.min_face}
    res["detector_single_thread"] = _detector_stages(files[: min(200, len(files))], a.min_face)
    res["align_tree"] = _end_to_end(files, a.data, a.workers, a.min_face)
    if a.manifest is not None:
        res["fallback_points"] = _mean_points(a.manifest)
    res["load_average_after"] = list(os.getloadavg())
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_align.json").write_text(json.dumps(res, indent=1))
    d, e = res["detector_single_thread"], res["align_tree"]
    md = [
        "# Aligner benchmark", "",
        f"{res['cpu_count']} CPUs, load average before {res['load_average_before']}, after "
        f"{res['load_average_after']}; min face {a.min_face:g} px.", "",
        "| measure | value |", "|---|---|",
        f"| P-Net stage (pyramid, NMS) ms/img | {d['ms_pnet_stage']:.2f} |",
        f"| R-Net stage ms/img | {d['ms_rnet_stage']:.2f} |",
        f"| O-Net stage ms/img | {d['ms_onet_stage']:.2f} |",
        f"| detector total ms/img (1 thread) | {d['ms_detect_total']:.2f} |",
        f"| candidates after P-Net / R-Net / faces | {d['candidates_after_pnet']:.1f} / "
        f"{d['candidates_after_rnet']:.1f} / {d['faces']:.2f} |",
        f"| align_tree on {e['files']} images, {e['workers']} workers | {e['seconds_total']} s, "
        f"**{e['images_per_second']} img/s** |",
        f"| projected all of LFW (13,233) | {13233 / e['images_per_second']:.0f} s |", "",
    ]
    if "fallback_points" in res:
        fp = res["fallback_points"]
        md += [f"Mean detected landmarks (fractions of W, H) over {fp['detected_rows']} images: "
               f"{fp['mean_points_frac']}; max difference to DEFAULT_POINTS_FRAC "
               f"{fp['max_abs_diff_vs_DEFAULT_POINTS_FRAC']:.4f}.", ""]
    (a.out / "bench_align.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
