"""``centerloss align SRC DST``: MTCNN detection + 5-point alignment of a whole identity-folder tree."""

from __future__ import annotations

import argparse

HELP = "detect faces (MTCNN) and align them to 112x96 crops; writes DST/manifest.csv"

DESCRIPTION = """\
Detect the face in every image under SRC with MTCNN, map its 5 landmarks (eyes, nose, mouth corners)
onto the paper's template by a similarity transform, and write the crops to DST mirroring SRC's tree.

Policy (paper Sec. 4): with several faces the one maximising area - 2*dist_to_centre^2 is used.
  --mode train  images with no face are skipped and listed.
  --mode test   images with no face use the --landmarks CSV (path,x1,y1,...,x5,y5; path relative to SRC),
                else documented default centre points; every test image gets a crop and a manifest note.

Every entry under SRC gets a manifest row: files of any extension are tried (non-images are listed as
unreadable); hidden names, symlinks to folders, dangling or looping symlinks, FIFOs, sockets and devices are
listed as skipped with the reason and never opened. Symlinks to files are followed. Any file name works.

DST gets manifest.csv (path,detected,score,x1,y1,...,x5,y5,reason,status,failure,decoded,out,path_escaped;
points in source pixels, left = smaller x), report.md and summary.json (written last, when the run is done).
Reruns skip finished files (state in DST/.align/) and retry failures per --retry-failed. Ctrl-C or a full
disk keeps what is done; rerun the same command to resume. Exit codes: 0 done, 1 some images failed or the
run stopped (the message names one), 2 bad option/input/DST, 130 interrupted.

Examples:
  centerloss align data/lfw/images runs/lfw_aligned --mode test
  centerloss align raw/ aligned/ --mode train --size 112x112 --workers 8
  centerloss align runs/lfw_aligned --contact-sheet sheet.png      (grid of random crops; no SRC)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="folder of raw images (any depth); or, with --contact-sheet, "
                   "a folder of aligned crops")
    p.add_argument("dst", metavar="DST", nargs="?", help="output folder for crops, manifest and report")
    p.add_argument("--mode", choices=("train", "test"), default="test",
                   help="train: skip images without a face; test: fall back, never drop (default: test)")
    p.add_argument("--size", default="112x96", help="crop HEIGHTxWIDTH: 112x96 (paper) or 112x112 "
                   "(template +8 px in x); other sizes scale the template (default: 112x96)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    p.add_argument("--landmarks", metavar="CSV", default=None,
                   help="test-mode fallback points: path,x1,y1,...,x5,y5 (a manifest.csv also works)")
    p.add_argument("--ext", choices=("jpg", "png"), default="jpg", help="crop format (default: jpg, q=95)")
    p.add_argument("--min-face", type=float, default=40.0,
                   help="smallest face side in px to search for; lower finds smaller faces, slower "
                        "(default: 40, fine for LFW's ~110 px faces)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in DST and redo all")
    p.add_argument("--retry-failed", choices=("transient", "all", "none"), default="transient",
                   help="on a rerun, redo failed images: transient = OS failures only (permission, disk full, "
                        "I/O, vanished); all = also bad files and no-face skips; none (default: transient)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--contact-sheet", metavar="PNG", default=None,
                   help="instead of aligning: write a grid of random crops from folder SRC to PNG")
    p.add_argument("--grid", default="8x12", help="contact sheet ROWSxCOLS (default: 8x12)")
    p.add_argument("--seed", type=int, default=0, help="contact sheet sampling seed (default: 0)")
    p.add_argument("--colors", type=int, default=None,
                   help="contact sheet as a palette PNG with this many colours (smaller file; default: full)")
    p.set_defaults(func=_run)


def _grid(text: str) -> tuple[int, int]:
    from ..errors import ConfigError

    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--grid must look like ROWSxCOLS, e.g. 8x12, got {text!r}") from None
    return rows, cols


def _print_summary(s: dict, dst: str) -> None:
    rate = "n/a" if s["detection_rate"] is None else f"{100 * s['detection_rate']:.2f}%"
    print(f"{s['files']} files: {s['detected']} detected ({rate}), {s['crops']} crops, "
          f"fallbacks {s['fallback_landmarks_file']} landmarks-file + {s['fallback_default']} default, "
          f"{s['skipped_no_face']} skipped, {s['unreadable']} unreadable, {s['errors']} errors; "
          f"{s['not_inputs']} other entries not inputs; {s['seconds_total']} s"
          + (f", {s['images_per_second']} img/s" if s["images_per_second"] else ""))
    for p in s["fallback_default_files"][:20]:
        print(f"  default-points fallback: {p}")
    if s["fallback_default"] > 20:
        print(f"  ... {s['fallback_default'] - 20} more default-points fallbacks (see manifest.csv)")
    print(f"manifest: {dst}/manifest.csv, report: {dst}/report.md")


def _run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, RunError

    if args.contact_sheet:
        from .contact_sheet import contact_sheet

        rows, cols = _grid(args.grid)
        out = contact_sheet(args.src, args.contact_sheet, rows=rows, cols=cols, seed=args.seed,
                            colors=args.colors)
        print(f"contact sheet -> {out}")
        return 0
    if args.dst is None:
        raise ConfigError("DST is required (or use --contact-sheet PNG)")
    from .runner import align_tree

    s = align_tree(args.src, args.dst, mode=args.mode, size=args.size, workers=args.workers,
                   landmarks=args.landmarks, ext=args.ext, min_face_size=args.min_face,
                   overwrite=args.overwrite, progress=not args.no_progress, retry_failed=args.retry_failed)
    _print_summary(s, args.dst)
    if s["errors"]:
        again = ("rerun the same command to retry them" if s["failed_transient"] == s["errors"]
                 else "rerun with --retry-failed all to retry them")
        raise RunError(f"{s['errors']} of {s['files']} images failed, e.g. {s['first_error']}; fix the cause "
                       f"and {again} (the rest is done; see {args.dst}/manifest.csv)")
    return 0
