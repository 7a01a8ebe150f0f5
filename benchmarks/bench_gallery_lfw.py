"""1:N identification on LFW through the face tools: a gallery of all 5,749 identities, probes from raw photos.

Protocol (deterministic):
  gallery    the first photo (sorted by name) of every LFW identity, enrolled with FaceRecognizer + Gallery
             (raw photos: MTCNN detection, the aligner's face policy, 5-point alignment, crop + flip features;
             --aligned DIR uses ready crops instead, e.g. runs/lfw_aligned)
  probes     the second photo of every identity with >= 2 photos (1,680), identified by exact search over the
             templates: rank-1 and rank-5 (closed set: every probe's identity is enrolled)
  open set   a copy of the gallery with a random half (--seed) of the multi-photo identities removed
             (`Gallery.remove`); their probes are non-mated and should be called `unknown`. The non-mated people
             are split in two halves: the threshold is set on the first (the best score exceeded by --far of
             their probes, i.e. FPIR = FAR = 1%) and the figures are measured on the second: the share of its
             probes correctly called unknown (1 - FPIR), and the DIR of the mated probes (rank-1 right AND
             score >= threshold). In-sample figures (threshold set and measured on all non-mated) are given too.

Honesty: a model from `centerloss lfw-experiment` was trained on LFW identities outside folds 1-5. Every figure is
reported for probes of identities the model never saw (--heldout, the experiment's heldout_identities.txt), for
the rest, and for all. For that experiment "rest" are exactly its training identities (every LFW identity with
>= 2 photos outside folds 1-5), so their gallery and probe photos were training images: those figures are not
a generalisation measure. The gallery holds both groups. Timings are wall-clock on this machine, with `uptime`.

Usage:
  .venv/bin/python benchmarks/bench_gallery_lfw.py --model runs/face_helper_lfw/C/model.safetensors \\
      --heldout runs/face_helper_lfw/heldout_identities.txt
Writes benchmarks/results/gallery_lfw.json and .md atomically.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from centerloss.utils.machine import uptime

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CENTERLOSS_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "results"


def _photos(lfw: Path) -> dict[str, list[str]]:
    from centerloss.face.gallery import people_in

    return {n: [Path(p).relative_to(lfw).as_posix() for p in ps] for n, ps in people_in(lfw).items() if ps}


def _embed(rec: Any, root: Path, rels: list[str], aligned: bool, desc: str) -> tuple[np.ndarray, list[Any], float]:
    from tqdm import tqdm

    if aligned:  # the crops of `centerloss align` are .jpg with the photo's name
        rels = [str(Path(r).with_suffix(".jpg")) for r in rels]
    t0 = time.perf_counter()
    with tqdm(total=len(rels), desc=desc, unit="img") as bar:
        feats, prep = rec.embed_photos([root / r for r in rels], rels, aligned=aligned, workers=2,
                                       progress=bar.update)
    return feats, prep.records, time.perf_counter() - t0


def _rates(ok: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, Any]:
    return {g: {"n": int(m.sum()), "rate": float(ok[m].mean()) if m.any() else None} for g, m in groups.items()}


def _closed_set(gallery: Any, q: np.ndarray, truth: list[str], groups: dict[str, np.ndarray]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    scores, names = gallery.search(q, k=5)
    dt = time.perf_counter() - t0
    r1 = np.array([n[0] == t for n, t in zip(names, truth)])
    r5 = np.array([t in n for n, t in zip(names, truth)])
    return {"rank1": _rates(r1, groups), "rank5": _rates(r5, groups)}, dt


def _open_set(gallery: Any, q: np.ndarray, truth: list[str], removed: set[str], groups: dict[str, np.ndarray],
              far: float, seed: int) -> dict[str, Any]:
    scores, names = gallery.search(q, k=1)
    best, top = scores[:, 0].astype(np.float64), [n[0] for n in names]
    non = np.array([t in removed for t in truth])
    mated = ~non
    rng = np.random.default_rng(seed + 1)
    people = sorted({t for t in truth if t in removed})
    calib_people = set(rng.permutation(people)[: len(people) // 2].tolist())
    calib = np.array([t in calib_people for t in truth]) & non
    evalm = non & ~calib

    def threshold(mask: np.ndarray) -> float:
        s = np.sort(best[mask])[::-1]  # the k-th best non-mated score, k = floor(far * n): FPIR <= far above it
        k = int(np.floor(far * len(s)))
        return float(np.nextafter(s[k], np.inf)) if k < len(s) else float(s[0])

    out: dict[str, Any] = {"far": far, "n_removed_identities": len(removed), "n_nonmated_probes": int(non.sum()),
                           "n_mated_probes": int(mated.sum())}
    for name, cal, ev in (("held_out_split", calib, evalm), ("in_sample", non, non)):
        t = threshold(cal)
        unknown_ok = best < t
        dir_ok = (np.array([a == b for a, b in zip(top, truth)]) & (best >= t))
        out[name] = {"threshold": t, "n_calibration_probes": int(cal.sum()), "n_eval_nonmated": int(ev.sum()),
                     "fpir_calibration": float((~unknown_ok[cal]).mean()),
                     "correctly_unknown": _rates(unknown_ok, {g: m & ev for g, m in groups.items()}),
                     "dir_mated": _rates(dir_ok, {g: m & mated for g, m in groups.items()})}
    return out


def _markdown(r: dict[str, Any]) -> str:
    def cell(d: dict[str, Any]) -> str:
        return "n/a" if d["rate"] is None else f"{100 * d['rate']:.2f}% (n={d['n']})"

    g = r["closed_set"]
    o = r["open_set"]["held_out_split"]
    i = r["open_set"]["in_sample"]
    lines = [
        "# LFW 1:N identification with a 5,749-identity gallery (benchmarks/bench_gallery_lfw.py)", "",
        f"Model `{r['model']}` (sha256 {r['model_sha256'][:16]}...), input: {r['input']}. Gallery: first photo of each "
        f"identity, {r['gallery_identities']} enrolled (photos without a detected face: {r['gallery_skipped']}). Probes: "
        f"second photo of each identity with >= 2 photos, {r['n_probes']} used (without a face: {r['probes_skipped']}). "
        f"Search: exact ({r['search_backend']}).", "",
        f"Held out = identities in `{r['heldout_file']}` ({r['n_heldout_identities']} names; the model never trained on "
        f"them); rest = all other identities: {_trained_note(r)}", "",
        "| figure | held out | rest | all |", "| --- | ---: | ---: | ---: |",
        f"| rank-1 (closed set) | {cell(g['rank1']['heldout'])} | {cell(g['rank1']['rest'])} | {cell(g['rank1']['all'])} |",
        f"| rank-5 (closed set) | {cell(g['rank5']['heldout'])} | {cell(g['rank5']['rest'])} | {cell(g['rank5']['all'])} |",
        f"| open set: non-mated probes called unknown, threshold {o['threshold']:.4f} (FPIR {100 * r['open_set']['far']:g}% "
        f"on the other half of the removed people) | {cell(o['correctly_unknown']['heldout'])} | "
        f"{cell(o['correctly_unknown']['rest'])} | {cell(o['correctly_unknown']['all'])} |",
        f"| open set: mated probes identified (rank-1 and score >= threshold), same threshold | "
        f"{cell(o['dir_mated']['heldout'])} | {cell(o['dir_mated']['rest'])} | {cell(o['dir_mated']['all'])} |",
        f"| in-sample check: threshold {i['threshold']:.4f} set on all non-mated; called unknown | "
        f"{cell(i['correctly_unknown']['heldout'])} | {cell(i['correctly_unknown']['rest'])} | "
        f"{cell(i['correctly_unknown']['all'])} |",
        f"| in-sample: mated identified | {cell(i['dir_mated']['heldout'])} | {cell(i['dir_mated']['rest'])} | "
        f"{cell(i['dir_mated']['all'])} |", "",
        f"Open set: {r['open_set']['n_removed_identities']} of the multi-photo identities removed (seed {r['seed']}) with "
        f"`Gallery.remove` on a copy; {r['open_set']['n_nonmated_probes']} non-mated and "
        f"{r['open_set']['n_mated_probes']} mated probes.", "",
        "| step | seconds |", "| --- | ---: |"]
    lines += [f"| {k.replace('_', ' ')} | {v:.2f} |" for k, v in r["seconds"].items()]
    lines += ["", f"Detection + alignment + embedding: {r['photos_per_s']['gallery']:.1f} gallery photos/s, "
              f"{r['photos_per_s']['probes']:.1f} probe photos/s.", "", f"Machine: {r['machine']['cpu']}, {r['machine']['cpu_count']} CPUs, torch {r['machine']['torch']}. "
              f"Load before: `{r['uptime_before']}`; after: `{r['uptime_after']}`.", "", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def _trained_note(r: dict[str, Any]) -> str:
    k, n = r.get("rest_probes_of_training_classes"), r["closed_set"]["rank1"]["rest"]["n"]
    if k is None:
        return "the model file does not list its training classes, so how many of them it saw is unknown."
    return (f"{k} of their {n} probes belong to the model's training classes (its metadata `classes`), whose "
            "gallery and probe photos were training images: a fit figure, not a generalisation one.")


def _setup(args: argparse.Namespace) -> tuple[Path, dict[str, list[str]], set[str]]:
    lfw = Path(args.lfw)
    if not lfw.is_dir():
        sys.exit(f"LFW photos not found at {lfw} (set CENTERLOSS_DATA or --lfw)")
    heldout = set(Path(args.heldout).read_text(encoding="utf-8").split()) if args.heldout else set()
    return lfw, _photos(lfw), heldout


def _groups(truth: list[str], heldout: set[str]) -> dict[str, np.ndarray]:
    h = np.array([t in heldout for t in truth])
    return {"heldout": h, "rest": ~h, "all": np.ones(len(truth), bool)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from centerloss.eval.identification import available_backends
    from centerloss.face import FaceRecognizer, Gallery
    from centerloss.face.gallery import Enrollment
    from centerloss.utils.machine import machine_info

    lfw, photos, heldout = _setup(args)
    src = Path(args.aligned) if args.aligned else lfw
    res: dict[str, Any] = {"command": " ".join(sys.argv), "uptime_before": uptime(), "machine": machine_info(),
                           "seed": args.seed, "heldout_file": args.heldout, "n_heldout_identities": len(heldout),
                           "input": f"aligned crops from {src}" if args.aligned else f"raw photos from {lfw} (detection inside)"}
    rec = FaceRecognizer(args.model, args.device)
    res.update(model=args.model, model_sha256=rec.model_sha256, search_backend=available_backends()[0])
    names = sorted(photos)
    gf, grecs, t_gal = _embed(rec, src, [photos[n][0] for n in names], bool(args.aligned), "gallery")
    kept = [n for n, r in zip(names, grecs) if r.ok]
    with tempfile.TemporaryDirectory(dir=args.tmp) as td:
        t0 = time.perf_counter()
        g = Gallery.create(Path(td) / "g", Enrollment(kept, gf, np.arange(len(kept), dtype=np.int32),
                                                      [photos[n][0] for n in kept]), model_sha256=rec.model_sha256,
                           combine=rec.combine, input_size=rec.input_size, model=args.model)
        t_write = time.perf_counter() - t0
        multi = [n for n in names if len(photos[n]) >= 2]
        pf, precs, t_probe = _embed(rec, src, [photos[n][1] for n in multi], bool(args.aligned), "probes")
        truth = [n for n, r in zip(multi, precs) if r.ok]
        truth_in = [t for t in truth if t in g]
        q_in = pf[[i for i, t in enumerate(truth) if t in g]]
        res["closed_set"], t_search = _closed_set(g, q_in, truth_in, _groups(truth_in, heldout))
        rng = np.random.default_rng(args.seed)
        removed = set(rng.permutation([n for n in multi if n in g])[: len(multi) // 2].tolist())
        shutil.copytree(Path(td) / "g", Path(td) / "g2")
        t0 = time.perf_counter()
        g2 = Gallery.load(Path(td) / "g2").remove(sorted(removed))
        t_remove = time.perf_counter() - t0
        res["open_set"] = _open_set(g2, q_in, truth_in, removed, _groups(truth_in, heldout), args.far, args.seed)
    trained = set(rec.embedder.meta.get("classes") or [])  # a training run stores its class names
    rest = [t for t in truth_in if t not in heldout]
    res["rest_probes_of_training_classes"] = sum(t in trained for t in rest) if trained else None
    res.update(gallery_identities=len(kept), gallery_skipped=len(names) - len(kept), n_probes=len(truth_in),
               probes_skipped=len(multi) - len(truth_in), uptime_after=uptime(),
               seconds={"gallery_detect_align_embed": t_gal, "gallery_write": t_write, "probes_detect_align_embed": t_probe,
                        f"search_{len(truth_in)}_probes_x_{len(kept)}_templates": t_search,
                        "remove_half_of_multi_photo_people": t_remove},
               photos_per_s={"gallery": len(names) / t_gal, "probes": len(multi) / t_probe})
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".safetensors or .onnx model")
    p.add_argument("--heldout", default=None, help="identities the model never trained on (heldout_identities.txt)")
    p.add_argument("--lfw", default=str(DATA / "lfw" / "images"))
    p.add_argument("--aligned", default=None, help="use these aligned crops (same tree, .jpg) instead of raw photos")
    p.add_argument("--far", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tmp", default=None, help="folder for the temporary galleries")
    p.add_argument("--out", default=str(OUT / "gallery_lfw"), help="output stem (.json and .md)")
    args = p.parse_args(argv)
    from centerloss.utils.atomic import write_json, write_text

    res = run(args)
    write_json(f"{args.out}.json", res)
    write_text(f"{args.out}.md", _markdown(res))
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
