"""``centerloss train``: train a face network under a head (softmax, margins, sharded) and an aux loss."""

from __future__ import annotations

import argparse

HELP = "train a face CNN (models A/B/C, margin heads, sharded head) from a YAML preset; torchrun-ready"

DESCRIPTION = """\
Train a face network on identity-labelled crops under the joint supervision of Eq. 5,
L = L_S (the head) + lambda * L_aux (center, contrastive or triplet loss).

Values come from a YAML preset, then from --set KEY=VALUE (dotted keys, YAML values), then from the
flags below. Shipped presets: paper_A, paper_B, paper_C (Face-ResNet-27 as in the paper) and
lfw_cpu_A, lfw_cpu_B, lfw_cpu_C (the small CPU network of `centerloss lfw-experiment`); A/B/C differ only
in their `aux` section. Every part is chosen as {name, kwargs}:
  model      face_small, face_resnet27, face_paper, lenetpp          e.g. --set model.kwargs.width=16
  head       linear, normface, cosface, arcface, sphereface, sharded e.g. --set head.name=arcface head.kwargs.m=0.5
  aux        none (A), center (C), contrastive (B), triplet          e.g. --set aux.lam=0.01 aux.kwargs.alpha=0.5
  optimizer  sgd, adamw                                              e.g. --set optimizer.lr=0.05
  schedule   multistep, cosine, constant                             e.g. --set schedule.name=cosine schedule.kwargs={}
Names and keys are checked before anything runs. --print-config shows the resolved config.

OUT gets config.yaml (resolved), classes.json, data_report.json (identities used and dropped),
train_log.csv, tb/ (TensorBoard), checkpoints/step_*/ (safetensors + state.json with a sha256 per file),
model.safetensors (final weights) and summary.json. A second training on the same OUT is refused while the
first runs. After a crash or Ctrl-C, --resume continues exactly where the last checkpoint left off.

Examples:
  centerloss train --preset lfw_cpu_C --data runs/lfw_aligned --out runs/C
  centerloss train --preset lfw_cpu_A --data runs/lfw_aligned --set schedule.epochs=5 --workers 1
  centerloss train --preset paper_C --out runs/C --resume                # continue after a crash, exactly
  centerloss train --preset paper_C --set head.name=arcface head.kwargs={s: 64, m: 0.5} aux.lam=0.001
  torchrun --nproc_per_node 8 -m centerloss.cli train --preset paper_C --data /data/ms1m/train.rec \\
      --set data.kind=recordio data.input_size=[112,112] model.kwargs.input_size=[112,112] \\
            head.name=sharded head.kwargs.sample_rate=0.1

Exit codes: 0 done, 1 the run failed (e.g. non-finite loss: the last good checkpoint is kept),
2 bad config, data or usage, 130 interrupted (resume with --resume).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper_C", help="preset name or .yaml file (default: paper_C)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. optimizer.lr=0.05 aux.lam=0.01 model.kwargs.width=16")
    p.add_argument("--data", help="training data: identity folder of aligned crops, or a .rec file (data.root)")
    p.add_argument("--out", help="run folder (runtime.out_dir)")
    p.add_argument("--batch-size", type=int, help="global batch size (data.batch_size)")
    p.add_argument("--epochs", type=int, help="train for N epochs (schedule.epochs)")
    p.add_argument("--max-steps", type=int, help="train for N optimizer steps (schedule.max_steps; sets epochs 0)")
    p.add_argument("--workers", type=int, help="DataLoader workers per process (data.workers)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 (runtime.device)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast dtype (runtime.amp)")
    p.add_argument("--seed", type=int, help="runtime.seed")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume from a checkpoint folder, or (no value / 'auto') the latest one in --out")
    p.add_argument("--verify-pairs", help="pairs.txt to verify on during training (verify.pairs)")
    p.add_argument("--verify-root", help="aligned crops the pairs name (verify.root)")
    p.add_argument("--verify-every", type=int, help="steps between verifications (verify.every)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_run)


def flag_overrides(args: argparse.Namespace) -> dict:
    """The explicit flags as dotted config keys (they win over --set)."""
    pairs = {
        "data.root": args.data, "runtime.out_dir": args.out, "data.batch_size": args.batch_size,
        "schedule.epochs": args.epochs, "schedule.max_steps": args.max_steps, "data.workers": args.workers,
        "runtime.device": args.device, "runtime.amp": args.amp, "runtime.seed": args.seed,
        "runtime.resume": args.resume, "verify.pairs": args.verify_pairs, "verify.root": args.verify_root,
        "verify.every": args.verify_every,
    }
    if args.max_steps is not None and args.epochs is None:
        pairs["schedule.epochs"] = 0
    return {k: v for k, v in pairs.items() if v is not None}


def _run(args: argparse.Namespace) -> int:
    import json
    import os

    from ..config import to_yaml
    from .config import load_train_config

    cfg = load_train_config(args.preset, args.overrides, flag_overrides(args))
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    from ..eval.callbacks import VerificationCallback
    from .trainer import Trainer

    callbacks = [VerificationCallback(cfg.verify, cfg.data.root)] if cfg.verify.pairs else []
    summary = Trainer(cfg, callbacks=callbacks).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0
