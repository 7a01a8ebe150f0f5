"""``centerloss train``: train a face network under softmax (A), softmax + contrastive (B) or softmax + center (C)."""

from __future__ import annotations

import argparse

HELP = "train a face CNN (model A/B/C) from a YAML preset; torchrun-ready"

DESCRIPTION = """\
Train a face network on identity-labelled crops under the joint supervision of Eq. 5.

Values come from a YAML preset (shipped: paper_A, paper_B, paper_C for Face-ResNet-27 as in the paper;
lfw_cpu_A/B/C for the small CPU network), then from --set key=value, then from the explicit flags below.
The resolved config is saved as OUT/config.yaml. OUT also gets train_log.csv, verify_log.csv, tb/
(TensorBoard), checkpoints/step_*/ (safetensors + state.json) and model.safetensors (final weights).

Examples:
  centerloss train --preset paper_C --data /data/webface_aligned --out runs/C
  centerloss train --preset lfw_cpu_A --data runs/lfw_aligned --set optim.epochs=5 data.workers=1
  centerloss train --preset paper_C --out runs/C --resume auto          # continue after a crash, exactly
  torchrun --nproc_per_node 8 -m centerloss.cli train --preset paper_C --data /data/ms1m/train.rec \\
      --set data.kind=recordio data.input_size=[112,112] model.kwargs.input_size=[112,112]
"""

_MODEL_TYPES = {"A": "softmax", "B": "contrastive", "C": "center"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper_C", help="preset name or .yaml file (default: paper_C)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. optim.lr=0.05 loss.lam=0.01 model.kwargs.width=16")
    p.add_argument("--data", help="training data: identity folder of aligned crops, or a .rec file")
    p.add_argument("--out", help="run folder (runtime.out_dir)")
    p.add_argument("--model-type", choices=sorted(_MODEL_TYPES), help="A softmax, B +contrastive, C +center")
    p.add_argument("--model", help="network registry name (model.name)")
    p.add_argument("--lam", type=float, help="lambda of Eq. 5 (loss.lam)")
    p.add_argument("--alpha", type=float, help="center rate of Eq. 4 (loss.alpha)")
    p.add_argument("--lr", type=float, help="base learning rate (optim.lr)")
    p.add_argument("--batch-size", type=int, help="global batch size (data.batch_size)")
    p.add_argument("--epochs", type=int, help="train for N epochs (optim.epochs)")
    p.add_argument("--max-steps", type=int, help="train for N optimizer steps (optim.max_steps)")
    p.add_argument("--workers", type=int, help="DataLoader workers per process (data.workers)")
    p.add_argument("--device", help="auto, cpu, cuda (runtime.device)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast dtype (runtime.amp)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (runtime.channels_last)")
    p.add_argument("--seed", type=int, help="runtime.seed")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume from a checkpoint folder, or (no value / 'auto') the latest one in --out")
    p.add_argument("--verify-pairs", help="pairs.txt to verify on during training (verify.pairs)")
    p.add_argument("--verify-root", help="aligned crops the pairs name (verify.root)")
    p.add_argument("--verify-every", type=int, help="steps between verifications (verify.every)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_run)


def _flag_overrides(args: argparse.Namespace) -> dict:
    pairs = {
        "data.root": args.data, "runtime.out_dir": args.out, "model.name": args.model, "loss.lam": args.lam,
        "loss.alpha": args.alpha, "optim.lr": args.lr, "data.batch_size": args.batch_size,
        "optim.epochs": args.epochs, "optim.max_steps": args.max_steps, "data.workers": args.workers,
        "runtime.device": args.device, "runtime.amp": args.amp, "runtime.channels_last": args.channels_last,
        "runtime.seed": args.seed, "runtime.resume": args.resume, "verify.pairs": args.verify_pairs,
        "verify.root": args.verify_root, "verify.every": args.verify_every,
        "loss.type": _MODEL_TYPES.get(args.model_type) if args.model_type else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def _run(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..errors import CenterLossError
    from .config import apply, load_train_config
    from .config import to_yaml as _to_yaml

    try:
        cfg = load_train_config(args.preset, args.overrides)
        cfg = apply(cfg, _flag_overrides(args))
        if args.max_steps is not None and args.epochs is None:
            cfg = apply(cfg, {"optim.epochs": 0})
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(_to_yaml(cfg))
        return 0
    from .trainer import Trainer

    try:
        summary = Trainer(cfg).fit()
    except CenterLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0
