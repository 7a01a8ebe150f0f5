"""The ``centerloss`` command line.

Each subcommand lives beside the code it drives and exposes ``register(subparsers)``; this file only lists
them. Heavy imports happen inside each command's handler, so ``centerloss --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import CenterLossError

#: Modules that add subcommands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "centerloss.experiments.mnist",
    "centerloss.engine.cli",
    "centerloss.experiments.lfw",
    "centerloss.align.cli",
    "centerloss.eval.cli",
    "centerloss.face.cli",
)

DESCRIPTION = """\
centerloss: discriminative deep-feature learning with center loss (Wen et al., ECCV 2016).

Typical workflow:
  centerloss mnist --preset quick            # the paper's 2-D MNIST toy experiment (Figs. 2-3)
  centerloss align RAW/ ALIGNED/ --mode train  # MTCNN + 5-point similarity alignment to 112x96
  centerloss train --preset lfw_cpu_C        # face CNN with softmax + center loss
  centerloss eval lfw --features F.npz --pairs pairs.txt --out DIR

Run `centerloss COMMAND --help` for what each command does and its options.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="centerloss", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CenterLossError, FileNotFoundError, KeyError, ValueError) as e:
        # Wrong input, missing files, bad preset/config values: a message, not a traceback
        # (set CENTERLOSS_DEBUG=1 to see the traceback).
        if os.environ.get("CENTERLOSS_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"centerloss {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
