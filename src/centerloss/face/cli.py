"""Commands ``verify``, ``embed``, ``gallery {build,add,remove,info}``, ``identify`` and ``export``.

Raw photos of any size go in: MTCNN detection, the aligner's face-choice policy, 5-point alignment to the
model's input size, then the paper's feature (crop + flip, concatenated; ``docs/METHOD.md`` Sec. 4).
``--aligned`` takes the photos as ready crops instead. Models are ``.safetensors`` (torch) or ``.onnx``
(onnxruntime, from ``centerloss export``). Handlers raise DataError/ConfigError for bad input;
:func:`centerloss.cli.main` prints the one-line error and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..eval.cli import _RAW, _add_model_options, _size

VERIFY_HELP = """\
Are two photos the same person? Each photo (any size) goes through MTCNN face detection; with several
faces the aligner's policy picks one (largest near the centre) and says so. The face is aligned to the
model's input size, embedded (image + flip, concatenated), and the cosine similarity is compared with
the threshold: `same` (score >= threshold) or `different`. A photo without a face is an error (exit 2);
nothing falls back to a guessed crop. --aligned takes the photos as ready 112x96 crops (no detection).

The threshold is --threshold if given, else the model's metadata key "threshold" (plain cosine, e.g.
`verify_threshold` from `centerloss eval lfw`'s report.json). Without either, the score is printed but no
decision can be made and the exit code is 2.

Exit code: 0 same, 1 different, 2 error.  Examples:
  centerloss verify a.jpg b.jpg --model model.safetensors --threshold 0.45
  centerloss verify a.jpg b.jpg --model model.onnx --json        (onnxruntime; pip install centerloss[onnx])
"""

EMBED_HELP = """\
Embed every photo under DIR (recursively: .jpg .jpeg .png .bmp .webp) and write FEATS.npz with `paths`
(relative to DIR, '/'-separated), `features` (N x D float32) and `meta` (JSON: model hash, options).

Raw photos (default): detection + alignment inside, batched. A photo without a face, or one that does not
decode, is skipped; FEATS.manifest.csv (the `centerloss align` manifest format: path, detected, score,
x1..y5, reason, status ...; status ok = embedded) records what happened to every photo. --aligned takes aligned crops of the model's input
size (112x96) as today; --fit center-crop or resize adapts other sizes. Results are cached (--cache-dir).

  centerloss embed PHOTOS/ --model model.safetensors --out feats.npz
  centerloss embed ALIGNED_LFW/ --aligned --model model.safetensors --out lfw_feats.npz
  centerloss eval lfw --features lfw_feats.npz --pairs pairs.txt --out runs/eval
"""

GALLERY_HELP = """\
A gallery of enrolled people for `centerloss identify`. A folder G holding gallery.json (model sha256,
recipe, segments) and segment folders of .npy arrays (no pickle): every photo's feature and one template
per identity (L2-normalised mean of its photos' features). Search is exact (faiss knn when installed,
else torch). Changes are atomic: an interrupted `add` (even kill -9) leaves the previous gallery usable.
A photo that does not decode or shows no face stops build/add with nothing changed (exit 2), unless
--skip-bad (then it is skipped and listed).

  centerloss gallery build PEOPLE/ --model M --out G        PEOPLE/NAME/*.jpg, one folder per person
  centerloss gallery add G NEW/Jane_Doe NEW/John_Roe --model M
  centerloss gallery remove G Jane_Doe
  centerloss gallery info G
  centerloss identify photo.jpg --gallery G --model M --top-k 5 --threshold 0.45
"""

IDENTIFY_HELP = """\
Who is this? For each photo: detect and align the face (as `verify` does), embed it, and rank the
gallery's identities by cosine similarity to their templates (exact search). Prints the top-k with scores,
and `unknown` when the best score is below the threshold (open set: --threshold, else the model's or the
gallery's stored threshold; with none, the best match is reported as is). A gallery built with another
model is refused (its sha256 differs).

  centerloss identify a.jpg b.jpg --gallery G --model model.safetensors --top-k 5 --threshold 0.45
"""

EXPORT_HELP = """\
Export a model to ONNX (pip install centerloss[onnx]): input `input` float32 (batch, 3, H, W), RGB,
normalised (x - 127.5) / 128, dynamic batch; output `embedding` (batch, embed_dim). The feature recipe
(concat of the crop's and its horizontal flip's embeddings), the input recipe and the source model's
sha256 are stored in the ONNX metadata. The export is checked against torch before it is kept.
`verify`, `embed`, `identify` and `gallery` accept --model M.onnx and run it with onnxruntime.

  centerloss export --model model.safetensors --out model.onnx
"""


# ----------------------------------------------------------------------------------------------- options
def _add_face_options(p: argparse.ArgumentParser, skip_bad: bool = False) -> None:
    g = p.add_argument_group("faces")
    g.add_argument("--aligned", action="store_true",
                   help="the photos are aligned crops of the model's input size: no detection")
    if skip_bad:
        g.add_argument("--skip-bad", action="store_true",
                       help="skip (and list) photos that do not decode or show no face, instead of stopping "
                            "with nothing enrolled")
    g.add_argument("--min-face", type=float, default=40.0,
                   help="smallest face side (px) the detector looks for [40]")


def _add_runtime_options(p: argparse.ArgumentParser, combine: bool = True) -> None:
    g = p.add_argument_group("model")
    if combine:
        g.add_argument("--combine", choices=("concat", "sum", "none"), default="concat",
                       help="image and flip features: concat (paper), sum or none [concat]")
    g.add_argument("--fit", choices=("error", "center-crop", "resize"), default="error",
                   help="with --aligned: crops of another size: error, center-crop or resize [error]")
    g.add_argument("--batch-size", type=int, default=64, help="crops per forward pass [64]")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, auto [auto]")
    g.add_argument("--workers", type=int, default=2, help="image-decoding threads [2]")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model: .safetensors (torch) or .onnx (onnxruntime)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="same person? score two photos with a model", description=VERIFY_HELP,
                       formatter_class=_RAW)
    p.add_argument("image1")
    p.add_argument("image2")
    _model_arg(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine threshold [model metadata 'threshold'; required if absent]")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    _add_face_options(p)
    _add_model_options(p)
    p.set_defaults(func=_verify)

    p = sub.add_parser("embed", help="embed a folder of photos (or crops) into FEATS.npz", description=EMBED_HELP,
                       formatter_class=_RAW)
    p.add_argument("dir", help="folder of photos (or of aligned crops with --aligned)")
    _model_arg(p)
    p.add_argument("--out", required=True, help="features file to write (.npz)")
    p.add_argument("--manifest", default=None, help="manifest CSV to write [OUT with .manifest.csv]")
    _add_face_options(p)
    _add_model_options(p)
    p.set_defaults(func=_embed)

    _register_gallery(sub)

    p = sub.add_parser("identify", help="who is in these photos? rank a gallery's identities",
                       description=IDENTIFY_HELP, formatter_class=_RAW)
    p.add_argument("photos", nargs="+", metavar="PHOTO")
    p.add_argument("--gallery", required=True, help="gallery folder from `centerloss gallery build`")
    _model_arg(p)
    p.add_argument("--top-k", type=int, default=5, help="identities to list per photo [5]")
    p.add_argument("--threshold", type=float, default=None,
                   help="below this cosine the answer is `unknown` [model's, else gallery's threshold]")
    p.add_argument("--json", action="store_true", help="print one JSON object per photo")
    _add_face_options(p)
    _add_runtime_options(p, combine=False)
    p.set_defaults(func=_identify)

    p = sub.add_parser("export", help="export a model to ONNX (with its input and feature recipe)",
                       description=EXPORT_HELP, formatter_class=_RAW)
    p.add_argument("--model", required=True, help="model checkpoint (.safetensors)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset [the exporter's default]")
    p.set_defaults(func=_export)


def _register_gallery(sub: argparse._SubParsersAction) -> None:
    gp = sub.add_parser("gallery", help="build or change a face gallery (for identify)", description=GALLERY_HELP,
                        formatter_class=_RAW)
    gp.set_defaults(func=lambda a: (gp.print_help(), 2)[1])
    gs = gp.add_subparsers(dest="gallery_command", metavar="ACTION")

    p = gs.add_parser("build", help="enrol a folder of identity folders", formatter_class=_RAW,
                      description="Enrol PEOPLE_DIR/NAME/*.jpg (one folder per person) into a new gallery OUT.")
    p.add_argument("people", metavar="PEOPLE_DIR")
    _model_arg(p)
    p.add_argument("--out", required=True, help="gallery folder to create")
    p.add_argument("--threshold", type=float, default=None, help="open-set threshold stored with the gallery")
    p.add_argument("--overwrite", action="store_true", help="replace an existing gallery OUT (atomically)")
    _add_face_options(p, skip_bad=True)
    _add_runtime_options(p)
    p.set_defaults(func=_gallery_build)

    p = gs.add_parser("add", help="enrol more people (one folder each) without a rebuild", formatter_class=_RAW,
                      description="Enrol each PERSON_DIR (its name is the identity) into gallery G, atomically.")
    p.add_argument("gallery", metavar="G")
    p.add_argument("person_dirs", nargs="+", metavar="PERSON_DIR")
    _model_arg(p)
    p.add_argument("--replace", action="store_true", help="re-enrol identities that are already in G")
    _add_face_options(p, skip_bad=True)
    _add_runtime_options(p, combine=False)
    p.set_defaults(func=_gallery_add)

    p = gs.add_parser("remove", help="remove identities", description="Remove identities NAME... from G, atomically.")
    p.add_argument("gallery", metavar="G")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=_gallery_remove)

    p = gs.add_parser("info", help="what a gallery holds", description="Print a gallery's summary (or --json).")
    p.add_argument("gallery", metavar="G")
    p.add_argument("--json", action="store_true", help="print gallery.json without the history")
    p.set_defaults(func=_gallery_info)


def _recognizer(args: argparse.Namespace, combine: str | None = None) -> Any:
    from .recognizer import FaceRecognizer

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.min_face < 12:
        raise ConfigError(f"--min-face must be >= 12 px (the detector's window), got {args.min_face:g}")
    return FaceRecognizer(args.model, args.device, min_face_size=args.min_face,
                          combine=combine or getattr(args, "combine", "concat"), batch_size=args.batch_size,
                          input_size=_size(getattr(args, "input_size", None)))


# ----------------------------------------------------------------------------------------------- verify
def _face_line(name: str, rec: Any) -> str:
    if rec.aligned_input:
        return f"{name}: taken as an aligned crop (--aligned)"
    f = rec.face
    box = ",".join(f"{v:.0f}" for v in f.box)
    line = f"{name}: face box [{box}] (x1,y1,x2,y2), detector score {f.score:.3f}"
    if f.num_faces > 1:
        line += f"; {f.num_faces} faces in the photo, used the largest near the centre (face {f.index + 1} by score)"
    return line


def _verify(args: argparse.Namespace) -> int:
    import numpy as np

    from .recognizer import l2_normalize

    rec = _recognizer(args)
    names = [args.image1, args.image2]
    feats, prep = rec.embed_photos(names, names, aligned=args.aligned, fit=args.fit, strict=True)
    f = l2_normalize(feats).astype(np.float64)  # (2, E)
    score = float(f[0] @ f[1])
    thr, source = args.threshold, "--threshold"
    if thr is None and rec.threshold is not None:
        thr, source = rec.threshold, "model metadata"
    decision = None if thr is None else ("same" if score >= thr else "different")
    if args.json:
        faces = [{"photo": n, "aligned": r.aligned_input, **({} if r.face is None else r.face.to_dict())}
                 for n, r in zip(names, prep.records)]
        print(json.dumps({"score": score, "threshold": thr, "threshold_source": source if thr is not None else None,
                          "decision": decision, "faces": faces}))
    else:
        for n, r in zip(names, prep.records):
            print(_face_line(n, r))
        print(f"score {score:.4f}" if thr is None else f"score {score:.4f}  threshold {thr:.4f} ({source})  ->  {decision}")
    if thr is None:
        raise ConfigError("no threshold: pass --threshold T (e.g. verify_threshold from `centerloss eval lfw`'s "
                          "report.json) or store meta['threshold'] in the checkpoint")
    return 0 if decision == "same" else 1


# ----------------------------------------------------------------------------------------------- embed
def _embed(args: argparse.Namespace) -> int:
    from ..eval.features import list_images, save_features
    from ..utils.atomic import check_output_dir
    from .folder import embed_folder
    from .photos import write_manifest

    out = Path(args.out)
    manifest = Path(args.manifest) if args.manifest else out.with_name(out.name.removesuffix(".npz") + ".manifest.csv")
    check_output_dir(out.parent if str(out.parent) else ".")
    paths = list_images(args.dir)
    rec = _recognizer(args)
    res = embed_folder(rec, args.dir, paths, aligned=args.aligned, fit=args.fit,
                       cache_dir=None if args.no_cache else args.cache_dir, workers=args.workers,
                       progress=not args.quiet)
    if not res.paths:
        raise _no_faces(args.dir, res.records)
    save_features(out, res.paths, res.features, {
        "model": str(args.model), "model_sha256": rec.model_sha256, "runtime": rec.embedder.kind,
        "combine": rec.combine, "fit": args.fit, "root": str(args.dir), "aligned": args.aligned,
        "input_size": list(rec.input_size), "min_face_size": rec.min_face_size,
        "manifest": None if args.aligned else str(manifest), "skipped": len(paths) - len(res.paths)})
    if not args.aligned:
        write_manifest(manifest, res.records)
    skipped = [r for r in res.records if not r.ok]
    cached = " (from cache)" if res.cached else ""
    print(f"wrote {out}: {len(res.paths)} images x {res.features.shape[1]} dims{cached}")
    if not args.aligned:
        multi = sum(1 for r in res.records if r.face is not None and r.face.num_faces > 1)
        print(f"manifest {manifest}: {len(paths)} photos, {len(res.paths)} faces aligned ({multi} photos with several "
              f"faces), {len(skipped)} skipped")
        for r in skipped[:10]:
            print(f"  skipped {r.path}: {r.reason}", file=sys.stderr)
        if len(skipped) > 10:
            print(f"  ... {len(skipped) - 10} more (see {manifest})", file=sys.stderr)
    return 0


def _no_faces(root: str, records: list[Any]) -> Exception:
    from ..errors import DataError

    why = records[0].reason if records else "no photos"
    return DataError(f"no photo under {root} gave a face (e.g. {records[0].path if records else root}: {why}); "
                     "nothing written")


# ----------------------------------------------------------------------------------------------- gallery
def _progress_bar(args: argparse.Namespace, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=args.quiet)


def _print_enrolment(g: Any, skipped: list[dict[str, str]], verb: str) -> None:
    from ..eval.identification import available_backends

    print(f"{verb} {g.path}: {len(g)} identities, {g.n_images} photos, {g.feature_dim}-dim features; "
          f"model sha256 {g.model_sha256[:16]}...; search: exact ({available_backends()[0]})")
    for s in skipped[:10]:
        print(f"  skipped {s['path']}: {s['reason']}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"  ... {len(skipped) - 10} more skipped (gallery.json history lists the first 100)", file=sys.stderr)


def _gallery_build(args: argparse.Namespace) -> int:
    from .gallery import Gallery, enroll, people_in

    people = people_in(args.people)
    rec = _recognizer(args)
    with _progress_bar(args, sum(len(v) for v in people.values()), "enrol") as bar:
        e = enroll(rec, people, aligned=args.aligned, fit=args.fit, skip_bad=args.skip_bad, workers=args.workers,
                   progress=bar.update)
    g = Gallery.create(args.out, e, model_sha256=rec.model_sha256, combine=rec.combine, input_size=rec.input_size,
                       model=args.model, threshold=args.threshold, overwrite=args.overwrite,
                       extra={"aligned_input": args.aligned, "min_face_size": rec.min_face_size})
    _print_enrolment(g, e.skipped, "built")
    return 0


def _gallery_add(args: argparse.Namespace) -> int:
    from ..errors import DataError
    from ..utils.images import IMAGE_EXTENSIONS
    from .gallery import Gallery, enroll

    g = Gallery.load(args.gallery)
    people: dict[str, list[str]] = {}
    for d in (Path(x) for x in args.person_dirs):
        if not d.is_dir():
            raise DataError(f"person folder not found: {d}")
        if d.name in people:
            raise DataError(f"{d}: identity {d.name!r} is given twice")
        people[d.name] = sorted(str(p) for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not people[d.name]:
            raise DataError(f"{d}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    rec = _recognizer(args, combine=str(g.info.get("combine", "concat")))
    g.check_model(rec.model_sha256, args.model)
    with _progress_bar(args, sum(len(v) for v in people.values()), "enrol") as bar:
        e = enroll(rec, people, aligned=args.aligned, fit=args.fit, skip_bad=args.skip_bad, workers=args.workers,
                   progress=bar.update)
    g2 = g.add(e, model_sha256=rec.model_sha256, replace=args.replace)
    _print_enrolment(g2, e.skipped, f"added {len(e.names)} to")
    return 0


def _gallery_remove(args: argparse.Namespace) -> int:
    from .gallery import Gallery

    g = Gallery.load(args.gallery).remove(args.names)
    print(f"removed {len(set(args.names))} from {g.path}: {len(g)} identities, {g.n_images} photos left")
    return 0


def _gallery_info(args: argparse.Namespace) -> int:
    from .gallery import Gallery

    g = Gallery.load(args.gallery)
    if args.json:
        print(json.dumps({k: v for k, v in g.info.items() if k != "history"}, indent=1))
        return 0
    i = g.info
    print(f"gallery {g.path}: {len(g)} identities, {g.n_images} photos, {g.feature_dim}-dim ({i.get('combine')}), "
          f"crop {'x'.join(map(str, i.get('input_size', [])))}, generation {i.get('generation')}")
    print(f"model sha256 {g.model_sha256} ({i.get('model')}); threshold {g.threshold}; updated {i.get('updated')}")
    return 0


# ----------------------------------------------------------------------------------------------- identify
def _identify(args: argparse.Namespace) -> int:
    from .gallery import Gallery

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    g = Gallery.load(args.gallery)
    rec = _recognizer(args, combine=str(g.info.get("combine", "concat")))
    g.check_model(rec.model_sha256, args.model)
    results = rec.identify_batch(args.photos, g, top_k=args.top_k, threshold=args.threshold, aligned=args.aligned)
    for r in results:
        if args.json:
            print(json.dumps({**r.to_dict(), "aligned": args.aligned}))
            continue
        head = "taken as an aligned crop" if r.face is None else \
            f"face box [{','.join(f'{v:.0f}' for v in r.face.box)}], detector score {r.face.score:.3f}" + (
                f", {r.face.num_faces} faces (used the largest near the centre)" if r.face.num_faces > 1 else "")
        best = r.best if r.best != "unknown" else (
            f"unknown (best {r.matches[0][1]:.4f} < threshold {r.threshold:.4f})")
        print(f"{r.source}: {head}  ->  {best}")
        for rank, (name, score) in enumerate(r.matches, 1):
            print(f"  {rank:>3}. {score:.4f}  {name}")
    if results and results[0].threshold is None and not args.json:
        print("(no threshold given or stored: closed-set answer, never `unknown`)", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------- export
def _export(args: argparse.Namespace) -> int:
    from ..errors import DataError
    from ..utils.atomic import check_output_dir
    from .models import is_onnx_path
    from .onnx_model import export_onnx

    if is_onnx_path(args.model):
        raise ConfigError(f"--model {args.model} is already ONNX; export takes a .safetensors model")
    out = Path(args.out)
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the ONNX file to write")
    check_output_dir(out.parent if str(out.parent) else ".")  # before the export, not after it
    s = export_onnx(args.model, args.out, opset=args.opset)
    h, w = s["input_size"]
    print(f"wrote {s['out']} ({s['bytes'] / 1e6:.1f} MB, opset {s['opset']}): input float32 (batch, 3, {h}, {w}) RGB "
          f"(x - 127.5) / 128 -> embedding (batch, {s['embed_dim']}); feature = concat(net(x), net(flip(x))); "
          f"max |onnxruntime - torch| {s['max_abs_diff_vs_torch']:.2e}; source sha256 {s['source_sha256'][:16]}...")
    return 0
