"""The ``centerloss`` command line, and its one error policy.

Each subcommand lives beside the code it drives and exposes ``register(subparsers)``; this file only lists
them. Heavy imports (torch, numpy) happen inside each command's handler, so ``centerloss --help`` stays fast.

Handlers return an exit code for normal outcomes and raise for everything else; :func:`main` turns what
they raise into one line on stderr that names the bad file or value, and an exit code
(:mod:`centerloss.errors` documents them): 2 for bad input or usage, 1 for a failed run, 130 for Ctrl-C.
No traceback is printed unless ``CENTERLOSS_DEBUG=1``. Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank
ends with ``os._exit`` of that code once its output is flushed
(:func:`centerloss.engine.distributed.hold_until_exit` says why).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import re
import sys
import warnings
from collections.abc import Iterator

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CenterLossError, Note

#: Modules that add subcommands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "centerloss.experiments.cli",
    "centerloss.engine.cli",
    "centerloss.align.cli",
    "centerloss.eval.cli",
    "centerloss.face.cli",
)

DESCRIPTION = """\
centerloss: discriminative deep-feature learning with center loss (Wen et al., ECCV 2016).

Typical workflow:
  centerloss mnist --preset quick                 # the paper's 2-D MNIST toy experiment (Figs. 2-3)
  centerloss align RAW/ ALIGNED/ --mode train     # MTCNN + 5-point similarity alignment to 112x96
  centerloss train --preset lfw_cpu_C --data ALIGNED/ --out runs/C    # softmax + center loss
  centerloss lfw-experiment --preset fig5         # held-out LFW: A vs C, lambda/alpha sweeps, margins
  centerloss eval lfw --features F.npz --pairs pairs.txt --out DIR
  centerloss verify a.jpg b.jpg --model M         # same person? (raw photos: detect, align, embed)
  centerloss gallery build PEOPLE/ --model M --out G && centerloss identify who.jpg --gallery G --model M
  centerloss export --model M --out M.onnx        # ONNX for deployment (verify/embed/identify take it)

Run `centerloss COMMAND --help` for what each command does and its options.

Exit codes: 0 success, 1 the run failed (verify: different people), 2 bad input or usage,
130 interrupted. Set CENTERLOSS_DEBUG=1 to see a traceback instead of the one-line error.
"""

_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="centerloss", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def _original_message(text: str) -> str:
    """A DataLoader worker's exception is re-raised in the main process as the same type with the message
    "Caught X in DataLoader worker process N. Original Traceback ... module.X: <message>": keep <message>."""
    if _WORKER_TRACEBACK not in text:
        return text
    last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
    name, sep, message = last.partition(": ")
    return message if sep and re.fullmatch(r"[\w.]+", name) else last


#: Optional packages -> the extra that installs them (pyproject.toml, [project.optional-dependencies]).
_EXTRA_OF = {"cv2": "align", "mtcnn": "align", "joblib": "align", "lz4": "align", "matplotlib": "plots",
             "faiss": "faiss", "tensorboard": "tensorboard", "onnx": "onnx", "onnxruntime": "onnx",
             "onnxscript": "onnx"}


def explain(e: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception a command raised."""
    text = _original_message(str(e))
    if isinstance(e, CenterLossError):
        return text, e.exit_code
    top = (getattr(e, "name", None) or "").split(".")[0]
    if isinstance(e, ModuleNotFoundError) and top in _EXTRA_OF:
        return f"this needs {top}, which is not installed: pip install 'centerloss[{_EXTRA_OF[top]}]'", EXIT_USAGE
    if isinstance(e, KeyError):  # unknown registry names, config keys
        return _original_message(str(e.args[0])) if e.args else text, EXIT_USAGE
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        why = e.strerror or text
        if e.errno in _DISK_FULL:
            return f"{where}{why} (disk full?)", EXIT_FAILED
        return f"{where}{why}", EXIT_USAGE
    if isinstance(e, (ValueError, TypeError)):
        return text, EXIT_USAGE
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller --batch-size)", EXIT_FAILED
    return f"internal error: {type(e).__name__}: {text} (set CENTERLOSS_DEBUG=1 for the traceback)", EXIT_FAILED


def _quiet_teardown() -> None:
    """After Ctrl-C the one line is all: a helper thread that fails while the DataLoader's workers are being
    stopped (multiprocessing's resource sharer, mid-handshake with a worker) would otherwise print a traceback."""
    import threading

    sys.excepthook = lambda *exc: None
    threading.excepthook = lambda exc: None


def main(argv: list[str] | None = None) -> int:
    code = _run(argv)
    if argv is None and _in_multiprocess_world():  # the process is ending: leave without interpreter teardown
        from .engine.distributed import leave_process

        leave_process(code)
    return code


def _in_multiprocess_world() -> bool:
    """True under ``torchrun`` (or anything that sets ``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    notes: list[str] = []
    try:
        with _held_notes(notes):
            code = int(args.func(args) or 0)
    except KeyboardInterrupt:
        if os.environ.get("CENTERLOSS_DEBUG"):
            raise
        if argv is None:  # the process is ending (console script, python -m), not a caller of main()
            _quiet_teardown()  # before the line: a helper thread may fail at any moment from now on
        print(f"centerloss {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if os.environ.get("CENTERLOSS_DEBUG"):
            raise
        msg, code = explain(e)
        print(f"centerloss {args.command}: error: {' '.join(msg.split())}", file=sys.stderr)
        return code
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _held_notes(into: list[str]) -> Iterator[None]:
    """Hold back :class:`~centerloss.errors.Note` warnings (into ``into``) while the command runs: they are
    printed after it succeeds, so a failure is still the one error line. Other warnings show as usual."""
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        show = warnings.showwarning
        warnings.simplefilter("always", Note)

        def hold(message, category, *args, **kwargs):
            if issubclass(category, Note):
                into.append(str(message))
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = hold
        yield


if __name__ == "__main__":
    sys.exit(main())
