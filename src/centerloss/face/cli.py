"""Commands ``centerloss verify`` and ``centerloss embed`` (moved here from :mod:`centerloss.eval.cli`; the
face tools -- raw photos, gallery, identify, export -- grow here)."""

from __future__ import annotations

import argparse
import json
import sys

from ..eval.cli import _RAW, _add_model_options, _errors, _extract_kwargs, _load_model, _size

VERIFY_HELP = """\
Are two face crops the same person? Embeds both (image + flip, concatenated), prints the cosine
similarity and the decision `same` (score >= threshold) or `different`.

The threshold is --threshold if given, else the checkpoint's metadata key "threshold" (plain cosine,
e.g. `verify_threshold` from `centerloss eval lfw`'s report.json). Without either, the score is printed
but no decision can be made and the exit code is 2.

Exit code: 0 same, 1 different, 2 error.  Example:
  centerloss verify a.jpg b.jpg --model model.safetensors --threshold 0.45
"""

EMBED_HELP = """\
Embed every image under DIR (recursively: .jpg .jpeg .png .bmp .webp) and write FEATS.npz with
`paths` (relative to DIR, '/'-separated), `features` (N x D float32) and `meta` (JSON: model hash,
options). Images should be aligned crops of the model's input size (112x96); --fit center-crop or
resize adapts other sizes. The result is cached (see --cache-dir), so re-running is instant.

  centerloss embed ALIGNED_LFW/ --model model.safetensors --out lfw_feats.npz
  centerloss eval lfw --features lfw_feats.npz --pairs pairs.txt --out runs/eval
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="same person? score two face crops with a model", description=VERIFY_HELP,
                       formatter_class=_RAW)
    p.add_argument("image1")
    p.add_argument("image2")
    p.add_argument("--model", required=True, help="model checkpoint (.safetensors from save_model)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine threshold [checkpoint metadata 'threshold'; required if absent]")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    _add_model_options(p)
    p.set_defaults(func=_errors(_verify))

    p = sub.add_parser("embed", help="embed a folder of face crops into FEATS.npz", description=EMBED_HELP,
                       formatter_class=_RAW)
    p.add_argument("dir", help="folder of aligned crops")
    p.add_argument("--model", required=True, help="model checkpoint (.safetensors from save_model)")
    p.add_argument("--out", required=True, help="features file to write (.npz)")
    _add_model_options(p)
    p.set_defaults(func=_errors(_embed))


def _verify(args: argparse.Namespace) -> int:
    import numpy as np

    from ..eval.features import embed_images, fit_image, load_image

    model, meta = _load_model(args.model, args.device)
    size = _size(args.input_size) or tuple(getattr(model, "input_size", None) or (112, 96))
    imgs = np.stack([fit_image(load_image(p), size, args.fit, name=p) for p in (args.image1, args.image2)])
    f = embed_images(model, imgs, args.combine).astype(np.float64)  # (2, E)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    score = float(f[0] @ f[1])
    thr, source = args.threshold, "--threshold"
    if thr is None and isinstance(meta.get("threshold"), int | float):
        thr, source = float(meta["threshold"]), "checkpoint metadata"
    decision = None if thr is None else ("same" if score >= thr else "different")
    if args.json:
        print(json.dumps({"score": score, "threshold": thr, "threshold_source": source if thr is not None else None,
                          "decision": decision}))
    elif thr is None:
        print(f"score {score:.4f}")
    else:
        print(f"score {score:.4f}  threshold {thr:.4f} ({source})  ->  {decision}")
    if thr is None:
        print("error: no threshold: pass --threshold T (e.g. verify_threshold from `centerloss eval lfw`'s "
              "report.json) or store meta['threshold'] in the checkpoint", file=sys.stderr)
        return 2
    return 0 if decision == "same" else 1


def _embed(args: argparse.Namespace) -> int:
    from ..eval.features import extract_features, list_images, model_fingerprint, save_features

    paths = list_images(args.dir)
    model, _ = _load_model(args.model, args.device)
    feats = extract_features(model, paths, args.dir, model_path=args.model,
                             cache_dir=None if args.no_cache else args.cache_dir, **_extract_kwargs(args))
    save_features(args.out, paths, feats, {"model": str(args.model), "model_sha256": model_fingerprint(path=args.model),
                                           "combine": args.combine, "fit": args.fit, "root": str(args.dir)})
    print(f"wrote {args.out}: {len(paths)} images x {feats.shape[1]} dims")
    return 0
