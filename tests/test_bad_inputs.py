"""Fault-injection corpus: bad input, faults and concurrency for every command -- every failure is one
line on stderr that names the bad file or value, and nothing is silently wrong, dropped or left behind.

Each row runs one command, in-process through :func:`centerloss.cli.main` where it can (fast), in a
subprocess only for signals and ``CENTERLOSS_DEBUG``, and checks the policy of ``centerloss.cli.main`` and
``centerloss.errors``: (a) the exit code (2 bad input or usage, 1 a failed run, 130 Ctrl-C); (b) stderr is
exactly one line ``centerloss CMD: error: ...`` matching a pattern that names the bad file or value; (c) no
traceback; (d) what is left: no result file that looks complete (report.json, features.npz, model.safetensors,
gallery.json, ...), no temporary file (a name containing ``.tmp``), and galleries and checkpoints
byte-identical to before.

Faults are made deterministically: a full disk by ``RLIMIT_FSIZE`` around the in-process call (writes past
the limit fail with EFBIG; SIGXFSZ is ignored); a read-only file system -- we run as root, so chmod cannot
make one -- by making every write-open and mkdir under the folder fail with EROFS; being offline by
``urlopen`` raising the resolver's error. Fixtures are tiny and built once per module: a random
``face_small`` (width 4, embed_dim 8), 112x96 crops, a 2-fold pairs.txt, fake MNIST .gz files in IDX format,
an identity folder (4 identities x 6 crops + one with a single image) and one short training run.

Rows per class (ids start with the class number):

1. output-path OS errors of every writing command (eval, embed, align, train, mnist, gallery build/add/
   remove, export): a parent that is a file, an --out of the wrong kind, a full disk (also mid-checkpoint
   and with the feature cache on), a read-only folder; a cache that cannot be written is one warning ... 35
2. garbage accepted as data: duplicated/self pairs, 0-dim and NaN features, all-NaN distractors,
   NaN weights, one identity, a truncated JPEG (also through a DataLoader worker), identities
   below data.min_images listed in data_report.json (a success row) ........................ 11
3. model and config problems: recipe/weight mismatches, unknown and negative kwargs, non-JSON
   metadata, truncated and corrupt model files, YAML syntax errors, unknown keys/values,
   conflicting overrides, --device cuda without CUDA, decompression bombs (verify, embed, .bin,
   training data), broken MNIST files, --download offline ...................................... 35
4. resume and concurrency: flipped checkpoint bytes, deleted state.json, a new run on a folder with
   checkpoints, a second training on a busy --out (the holder's PID), Ctrl-C while the workers
   start and mid-run (exit 130, one line), and an exact resume after each .......................... 8
5. align: loops, dangling symlinks, FIFOs, non-UTF-8 names, corrupt and truncated images are listed,
   not fatal ........................................................................................ 6
6. errors that must name the file: binary pairs.txt, object .npy, MNIST labels out of range,
   a gallery of another model (identify, add), a non-image photo, a folder without images,
   a photo without a face ............................................................................ 8
7. CENTERLOSS_DEBUG=1 turns the one line into a traceback, once per command (subprocesses) ... 10

plus 7 controls: the same fixtures without the fault succeed, so every row fails for its fault alone.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import gzip
import io
import os
import pickle
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_faces
from PIL import Image

from centerloss.cli import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: --device cuda is valid")
KW = {"width": 4, "embed_dim": 8}
LFW_NAMES = ("Ann", "Bob", "Cid", "Dan")


# ------------------------------------------------------------------------------------------------ fixtures
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (its pixel data is not there): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BOMB = _png_header(60000, 60000)  # 3.6 Gpx declared in 70 bytes


def _crop(seed: int, hw: tuple[int, int] = (112, 96)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_crop(seed)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _idx(path: Path, arr: np.ndarray, magic: int) -> None:
    """An MNIST IDX file (gzip): magic, dims, uint8 data."""
    head = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(gzip.compress(head + arr.astype(np.uint8).tobytes()))


def _fake_mnist(d: Path, train_images: np.ndarray | None = None, train_labels: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("t10k", 32)):
        imgs = train_images if split == "train" and train_images is not None else rng.integers(0, 256, (n, 28, 28))
        labs = train_labels if split == "train" and train_labels is not None else np.arange(len(imgs)) % 10
        _idx(d / f"{split}-images-idx3-ubyte.gz", imgs, 2051)
        _idx(d / f"{split}-labels-idx1-ubyte.gz", labs, 2049)
    return d


def _save(path: Path, seed: int = 0, kwargs: dict | None = None, weights_kw: dict | None = None, nan: bool = False,
          extra: dict | None = None) -> Path:
    """A face_small saved with recipe ``kwargs`` (default KW) but weights built with ``weights_kw``."""
    from centerloss.models import create_model
    from centerloss.models.io import save_model

    torch.manual_seed(seed)
    net = create_model("face_small", **(weights_kw or KW))
    if nan:
        with torch.no_grad():
            net.fc5.weight[0, 0] = float("nan")
    save_model(path, net, "face_small", kwargs if kwargs is not None else KW, extra)
    return path


def _pairs_text(folds: list[list[str]]) -> str:
    return f"{len(folds)}\t2\n" + "".join("\n".join(f) + "\n" for f in folds)


PAIR_FOLDS = [["Ann 1 2", "Bob 1 2", "Ann 1 Bob 1", "Cid 1 Dan 1"],
              ["Cid 1 2", "Dan 1 2", "Ann 2 Cid 2", "Bob 2 Dan 2"]]


@dataclass
class World:
    root: Path
    model: Path  # face_small, seed 0
    model_b: Path  # the same recipe, other weights (seed 1)
    people: Path  # people/{Ann,Bob,Cid}/{1,2}.png aligned crops
    lfw: Path  # lfw/<Name>/<Name>_000k.jpg aligned crops, as pairs.txt names them
    pairs: Path
    feats: Path  # features of the lfw crops (paths, features 8 x 16)
    faces: Path  # training identity folder: 4 x 6 crops + solo/ with one image
    mnist: Path
    gallery: Path  # built from people/ with model
    run: Path  # a finished 3-step training (checkpoint at step 3)


def train_argv(data: Path, out: Path, *extra: str, steps: int = 3, workers: int = 0,
               kw: str = "{width: 4, embed_dim: 8}", ckpt: int = 3) -> list[str]:
    return ["train", "--preset", "lfw_cpu_C", "--data", str(data), "--out", str(out), "--device", "cpu",
            "--batch-size", "8", "--workers", str(workers), "--max-steps", str(steps),
            "--set", f"model.kwargs={kw}", "runtime.progress=false", "runtime.tensorboard=false",
            "runtime.log_every=1", f"runtime.ckpt_every={ckpt}", *extra]


def mnist_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["mnist", "--preset", "quick", "--data-dir", str(data), "--out", str(out), "--iterations", "2",
            "--lambdas", "0.01", "--device", "cpu", "--set", "train.data.batch_size=16", *extra]


def eval_argv(w: World, out: Path, feats: Path | None = None, pairs: Path | None = None) -> list[str]:
    return ["eval", "lfw", "--features", str(feats or w.feats), "--pairs", str(pairs or w.pairs), "--out", str(out),
            "--no-plots"]


def embed_argv(src: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["embed", str(src), "--model", str(model), "--out", str(out), "--aligned", "--quiet", "--no-cache",
            "--workers", "0", *extra]


def verify_argv(a: Path, b: Path, model: Path, *extra: str) -> list[str]:
    return ["verify", str(a), str(b), "--model", str(model), "--threshold", "0.5", "--quiet", "--no-cache", *extra]


def build_argv(people: Path, model: Path, out: Path) -> list[str]:
    return ["gallery", "build", str(people), "--model", str(model), "--out", str(out), "--aligned", "--quiet",
            "--workers", "0"]


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("world")
    model, model_b = _save(root / "m.safetensors", 0), _save(root / "m_b.safetensors", 1)
    people = root / "people"
    for k, name in enumerate(("Ann", "Bob", "Cid")):
        (people / name).mkdir(parents=True)
        for i in (1, 2):
            Image.fromarray(_crop(10 * k + i)).save(people / name / f"{i}.png")
    lfw = root / "lfw"
    paths = []
    for k, name in enumerate(LFW_NAMES):
        (lfw / name).mkdir(parents=True)
        for i in (1, 2):
            (lfw / name / f"{name}_{i:04d}.jpg").write_bytes(_jpeg_bytes(100 + 10 * k + i))
            paths.append(f"{name}/{name}_{i:04d}.jpg")
    pairs = root / "pairs.txt"
    pairs.write_text(_pairs_text(PAIR_FOLDS))
    from centerloss.eval.features import save_features

    feats = root / "feats.npz"
    save_features(feats, paths, np.random.default_rng(0).standard_normal((len(paths), 16)).astype(np.float32))
    faces = write_faces(root / "faces")
    (faces / "solo").mkdir()
    Image.fromarray(_crop(7)).save(faces / "solo" / "solo_0001.png")
    world = World(root, model, model_b, people, lfw, pairs, feats, faces, _fake_mnist(root / "mnist"),
                  root / "gallery", root / "run")
    assert main(build_argv(people, model, world.gallery)) == 0
    assert main(train_argv(faces, world.run)) == 0
    return world


# ------------------------------------------------------------------------------------------------ checks
def error_line(err: str, cmd: str) -> str:
    """The one stderr line ``centerloss CMD: error: <message>``; fails on anything else."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"stderr is not exactly one line: {err!r}"
    prefix = f"centerloss {cmd}: error: "
    assert lines[0].startswith(prefix) and lines[0][len(prefix):].strip(), lines[0]
    return lines[0]


def temps(root: Path) -> list[str]:
    """Temporary names (``.tmp`` anywhere in the name) under ``root``, without following symlinks."""
    found = []
    for d, dirs, files in os.walk(root):
        found += [os.path.join(d, n) for n in dirs + files if ".tmp" in n]
    return found


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) -> its bytes."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """A full disk, deterministically: writes past ``nbytes`` fail with EFBIG (SIGXFSZ ignored)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """A read-only file system under ``root``: opening for writing and creating folders fail with EROFS."""
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    top = os.path.abspath(root)

    def under(p) -> bool:
        return isinstance(p, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(p)).startswith(top)

    def erofs(p):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(p))

    def fake_open(file, mode="r", *a, **k):
        if under(file) and any(c in mode for c in "wax+"):
            raise erofs(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise erofs(path)
        return real_os_open(path, flags, *a, **k)

    def fake_mkdir(path, *a, **k):
        if under(path):
            raise FileExistsError(errno.EEXIST, "File exists", path) if os.path.exists(path) else erofs(path)
        return real_mkdir(path, *a, **k)

    for mod, name, fn in ((builtins, "open", fake_open), (io, "open", fake_open), (os, "open", fake_os_open),
                          (os, "mkdir", fake_mkdir)):
        monkeypatch.setattr(mod, name, fn)


@dataclass
class Run:
    """What one row runs and what it expects besides the exit code."""

    argv: list[str]
    match: str  # regex the error line must match: it names the bad file or value
    absent: tuple[Path, ...] = ()  # must not exist afterwards
    same: tuple[Path, ...] = ()  # files or folders that must be byte-identical afterwards
    fsize: int | None = None  # RLIMIT_FSIZE during the command (a full disk)
    readonly: Path | None = None  # a read-only file system under this folder
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


CASES: list = []


def row(rid: str, code: int, xfail: str | None = None, cuda: bool = False):
    """Register the decorated builder ``(world, tmp) -> Run`` as row ``rid`` expecting exit ``code``."""
    def deco(fn: Callable[[World, Path], Run]) -> Callable[[World, Path], Run]:
        marks = ([pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []) + ([NO_CUDA] if cuda else [])
        CASES.append(pytest.param(fn, code, id=rid, marks=marks))
        return fn

    return deco


def _file(p: Path, text: str = "I am a file, not a folder\n") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _q(p: Path | str) -> str:
    return re.escape(str(p))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ================================================================ 1. output-path OS errors (every writer)
NOT_DIR = "(Not a directory|exists and is not a folder)"
DISK_FULL = r"File too large \(disk full\?\)"
RO = "Read-only file system"


@row("1-eval-parent-is-a-file", 2)
def _(w, t):
    _file(t / "f")
    return Run(eval_argv(w, t / "f" / "out"), _q(t / "f" / "out") + f".*{NOT_DIR}")


@row("1-eval-out-is-a-file", 2)
def _(w, t):
    return Run(eval_argv(w, _file(t / "out")), _q(t / "out") + " exists and is not a folder")


@row("1-eval-disk-full", 1)
def _(w, t):
    return Run(eval_argv(w, t / "out"), _q(t / "out" / "report.json") + f".*{DISK_FULL}",
               (t / "out" / "report.json", t / "out" / "report.md", t / "out" / "scores.npz"), fsize=100)


@row("1-eval-read-only", 2)
def _(w, t):
    (t / "ro").mkdir()
    return Run(eval_argv(w, t / "ro" / "out"), _q(t / "ro" / "out") + f".*{RO}", (t / "ro" / "out" / "report.json",),
               readonly=t / "ro")


@row("1-eval-model-disk-full", 1)
def _(w, t):
    argv = ["eval", "lfw", "--model", str(w.model), "--images", str(w.lfw), "--pairs", str(w.pairs), "--out",
            str(t / "out"), "--no-plots", "--quiet", "--workers", "0", "--no-cache"]
    return Run(argv, _q(t / "out" / "features.npz") + f".*{DISK_FULL}",
               (t / "out" / "features.npz", t / "out" / "report.json"), fsize=500)


@row("1-embed-parent-is-a-file", 2)
def _(w, t):
    _file(t / "f")
    return Run(embed_argv(w.people, w.model, t / "f" / "x.npz"), _q(t / "f") + f".*{NOT_DIR}")


@row("1-embed-out-is-a-folder", 2)
def _(w, t):
    (t / "x.npz").mkdir()
    return Run(embed_argv(w.people, w.model, t / "x.npz"), _q(t / "x.npz") + ".*(Is a directory|folder)")


@row("1-embed-disk-full", 1)
def _(w, t):
    return Run(embed_argv(w.people, w.model, t / "x.npz"), _q(t / "x.npz") + f".*{DISK_FULL}", (t / "x.npz",),
               fsize=200)


@row("1-embed-disk-full-with-the-feature-cache", 1)
def _(w, t):
    argv = [a for a in embed_argv(w.people, w.model, t / "x.npz") if a != "--no-cache"] + ["--cache-dir", str(t / "c")]
    return Run(argv, _q(t / "x.npz") + f".*{DISK_FULL}", (t / "x.npz",), fsize=200)


@row("1-embed-read-only", 2)
def _(w, t):
    (t / "ro").mkdir()
    return Run(embed_argv(w.people, w.model, t / "ro" / "x.npz"), _q(t / "ro") + f".*{RO}", (t / "ro" / "x.npz",),
               readonly=t / "ro")


def _faceless(p: Path, seed: int = 0) -> Path:
    """A small faceless photo (120x100 smooth gradient)."""
    rng = np.random.default_rng(seed)
    a = (np.linspace(60, 160, 100)[None, :, None] + rng.integers(0, 3, (120, 100, 3))).astype(np.uint8)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(p)
    return p


def _align_src(t: Path) -> Path:
    _faceless(t / "src" / "a" / "1.png")
    _faceless(t / "src" / "a" / "2.png", seed=1)
    return t / "src"


def align_argv(src: Path, dst: Path) -> list[str]:
    return ["align", str(src), str(dst), "--workers", "1", "--no-progress"]


ALIGN_RESULTS = ("manifest.csv", "summary.json", "report.md")


@row("1-align-parent-is-a-file", 2)
def _(w, t):
    _file(t / "f")
    return Run(align_argv(_align_src(t), t / "f" / "dst"), _q(t / "f") + f".*{NOT_DIR}")


@row("1-align-dst-is-a-file", 2)
def _(w, t):
    return Run(align_argv(_align_src(t), _file(t / "dst")), _q(t / "dst") + " exists and is not a folder")


@row("1-align-disk-full", 1)
def _(w, t):
    return Run(align_argv(_align_src(t), t / "dst"), "cannot write " + _q(t / "dst") + r"/\S+: " + DISK_FULL,
               tuple(t / "dst" / n for n in ALIGN_RESULTS),
               fsize=1000)


@row("1-align-read-only", 2)
def _(w, t):
    (t / "ro").mkdir()
    return Run(align_argv(_align_src(t), t / "ro" / "dst"), _q(t / "ro" / "dst") + f".*{RO}",
               tuple(t / "ro" / "dst" / n for n in ALIGN_RESULTS), readonly=t / "ro")


@row("1-train-parent-is-a-file", 2)
def _(w, t):
    _file(t / "f")
    return Run(train_argv(w.faces, t / "f" / "run"), _q(t / "f" / "run") + f".*{NOT_DIR}")


@row("1-train-out-is-a-file", 2)
def _(w, t):
    return Run(train_argv(w.faces, _file(t / "run")), _q(t / "run") + " exists and is not a folder")


@row("1-train-disk-full-at-start", 1)
def _(w, t):
    return Run(train_argv(w.faces, t / "run"), _q(t / "run" / "config.yaml") + f".*{DISK_FULL}",
               (t / "run" / "model.safetensors", t / "run" / "config.yaml", t / "run" / "checkpoints"), fsize=100)


@row("1-train-disk-full-at-checkpoint", 1)
def _(w, t):
    return Run(train_argv(w.faces, t / "run"), r"model\.safetensors.*" + DISK_FULL,
               (t / "run" / "model.safetensors", t / "run" / "checkpoints" / "step_00000003"), fsize=12000)


@row("1-train-read-only", 2)
def _(w, t):
    (t / "ro").mkdir()
    return Run(train_argv(w.faces, t / "ro" / "run"), _q(t / "ro" / "run") + f".*{RO}",
               (t / "ro" / "run" / "config.yaml",), readonly=t / "ro")


@row("1-mnist-parent-is-a-file", 2)
def _(w, t):
    _file(t / "f")
    return Run(mnist_argv(w.mnist, t / "f" / "out"), _q(t / "f" / "out") + f".*{NOT_DIR}")


@row("1-mnist-out-is-a-file", 2)
def _(w, t):
    return Run(mnist_argv(w.mnist, _file(t / "out")), _q(t / "out") + " exists and is not a folder")


@row("1-mnist-disk-full", 1)
def _(w, t):
    return Run(mnist_argv(w.mnist, t / "out"), _q(t / "out" / "config.yaml") + f".*{DISK_FULL}",
               (t / "out" / "config.yaml", t / "out" / "report.json"), fsize=100)


@row("1-gallery-build-parent-is-a-file", 2)
def _(w, t):
    _file(t / "f")
    return Run(build_argv(w.people, w.model, t / "f" / "g"), _q(t / "f" / "g") + f".*{NOT_DIR}")


@row("1-gallery-build-out-is-a-file", 2)
def _(w, t):
    return Run(build_argv(w.people, w.model, _file(t / "g")), _q(t / "g") + " exists and is not a folder",
               same=(t / "g",))


@row("1-gallery-build-disk-full", 1)
def _(w, t):
    return Run(build_argv(w.people, w.model, t / "g"), _q(t / "g") + f".*{DISK_FULL}", (t / "g" / "gallery.json",),
               fsize=64)


@row("1-gallery-build-read-only", 2)
def _(w, t):
    (t / "ro").mkdir()
    return Run(build_argv(w.people, w.model, t / "ro" / "g"), _q(t / "ro" / "g") + f".*{RO}",
               (t / "ro" / "g" / "gallery.json",), readonly=t / "ro")


@row("1-gallery-add-disk-full", 1)
def _(w, t):
    g = _copy(w.gallery, t / "g")
    (t / "Eve").mkdir()
    Image.fromarray(_crop(99)).save(t / "Eve" / "1.png")
    return Run(add_argv(g, w.model, t / "Eve"), _q(g) + f"/seg-.*{DISK_FULL}", same=(g,), fsize=64)


@row("1-gallery-remove-disk-full", 1)
def _(w, t):
    g = _copy(w.gallery, t / "g")
    return Run(["gallery", "remove", str(g), "Bob"], _q(g) + f"/seg-.*{DISK_FULL}", same=(g,), fsize=64)


@row("1-gallery-add-read-only", 2)
def _(w, t):
    g = _copy(w.gallery, t / "ro" / "g")
    (t / "Eve").mkdir()
    Image.fromarray(_crop(99)).save(t / "Eve" / "1.png")
    return Run(add_argv(g, w.model, t / "Eve"), _q(g) + f".*{RO}", same=(g,), readonly=t / "ro")


@row("1-mnist-read-only", 2)
def _(w, t):
    (t / "ro").mkdir()
    return Run(mnist_argv(w.mnist, t / "ro" / "out"), _q(t / "ro" / "out") + f".*{RO}",
               (t / "ro" / "out" / "config.yaml",), readonly=t / "ro")


@row("1-export-parent-is-a-file", 2)
def _(w, t):
    _file(t / "f")
    return Run(["export", "--model", str(w.model), "--out", str(t / "f" / "m.onnx")], _q(t / "f") + f".*{NOT_DIR}")


@row("1-export-out-is-a-folder", 2)
def _(w, t):
    (t / "m.onnx").mkdir()
    return Run(["export", "--model", str(w.model), "--out", str(t / "m.onnx")],
               _q(t / "m.onnx") + ".*(Is a directory|folder)")


@row("1-export-disk-full", 1)
def _(w, t):
    return Run(["export", "--model", str(w.model), "--out", str(t / "m.onnx")], _q(t / "m.onnx") + f".*{DISK_FULL}",
               (t / "m.onnx",), fsize=1000)


@row("1-export-read-only", 2)
def _(w, t):
    (t / "ro").mkdir()
    return Run(["export", "--model", str(w.model), "--out", str(t / "ro" / "m.onnx")], _q(t / "ro") + f".*{RO}",
               (t / "ro" / "m.onnx",), readonly=t / "ro")


# ================================================================ 2. garbage accepted as data
@row("2-eval-duplicated-pair", 2)
def _(w, t):
    folds = [f.copy() for f in PAIR_FOLDS]
    folds[1][0] = "Ann 1 2"  # fold 1's first matched pair again, in fold 2
    (t / "pairs.txt").write_text(_pairs_text(folds))
    return Run(eval_argv(w, t / "out", pairs=t / "pairs.txt"), _q(t / "pairs.txt") + r": lines 2 and 6 are the same pair",
               (t / "out",))


@row("2-eval-pair-with-itself", 2)
def _(w, t):
    folds = [f.copy() for f in PAIR_FOLDS]
    folds[0][0] = "Ann 1 1"
    (t / "pairs.txt").write_text(_pairs_text(folds))
    return Run(eval_argv(w, t / "out", pairs=t / "pairs.txt"), _q(t / "pairs.txt") + r":2: pairs Ann/Ann_0001.jpg with itself",
               (t / "out",))


def _features(t: Path, feats: np.ndarray, name: str = "f.npz") -> Path:
    paths = [f"{n}/{n}_{i:04d}.jpg" for n in LFW_NAMES for i in (1, 2)]
    np.savez(t / name, paths=np.array(paths), features=feats)
    return t / name


@row("2-eval-0-dim-features", 2)
def _(w, t):
    f = _features(t, np.zeros((8, 0), np.float32))
    return Run(eval_argv(w, t / "out", feats=f), _q(f) + r".*zero width", (t / "out",))


@row("2-eval-nan-features", 2)
def _(w, t):
    a = np.ones((8, 4), np.float32)
    a[5, 2] = np.nan
    f = _features(t, a)
    return Run(eval_argv(w, t / "out", feats=f), _q(f) + r".*1 of 8 rows contain NaN or Inf \(first: row 5\)", (t / "out",))


@row("2-megaface-all-nan-distractors", 2)
def _(w, t):
    np.save(t / "d.npy", np.full((5, 16), np.nan, np.float32))
    argv = ["eval", "megaface", "--probes", str(w.feats), "--distractors", str(t / "d.npy"), "--out", str(t / "out"),
            "--quiet"]
    return Run(argv, _q(t / "d.npy") + r".*all 5 rows contain NaN", (t / "out",))


@row("2-verify-nan-weights", 2)
def _(w, t):
    m = _save(t / "nan.safetensors", nan=True)
    p = w.people / "Ann"
    return Run(verify_argv(p / "1.png", p / "2.png", m, "--aligned"), _q(m) + r".*NaN/Inf: fc5\.weight")


@row("2-embed-nan-weights", 2)
def _(w, t):
    m = _save(t / "nan.safetensors", nan=True)
    return Run(embed_argv(w.people, m, t / "x.npz"), _q(m) + r".*NaN/Inf: fc5\.weight", (t / "x.npz",))


@row("2-train-single-identity", 2)
def _(w, t):
    shutil.copytree(w.faces / "id0", t / "data" / "id0")
    return Run(train_argv(t / "data", t / "run"), r"data: the training set has 1 identity \(with >= 2 images\); a classifier needs at least 2",
               (t / "run" / "model.safetensors", t / "run" / "checkpoints"))


def _data_with(w: World, t: Path, name: str, content: bytes) -> tuple[Path, Path]:
    """The training folder with id1's first crop replaced by ``name`` holding ``content`` (still 24 images)."""
    data = _copy(w.faces, t / "data")
    (data / "id1" / "id1_0001.png").unlink()
    (data / "id1" / name).write_bytes(content)
    return data, data / "id1" / name


def _cut_jpeg() -> bytes:
    raw = _jpeg_bytes(3)
    return raw[: len(raw) // 2]


@row("2-train-truncated-jpeg", 2)
def _(w, t):
    data, bad = _data_with(w, t, "cut.jpg", _cut_jpeg())
    return Run(train_argv(data, t / "run"), _q(bad) + r": truncated image",
               (t / "run" / "model.safetensors", t / "run" / "checkpoints" / "step_00000003"))


@row("2-train-truncated-jpeg-in-a-worker", 2)
def _(w, t):
    data, bad = _data_with(w, t, "cut.jpg", _cut_jpeg())
    return Run(train_argv(data, t / "run", workers=1),
               "^centerloss train: error: " + _q(bad) + r": truncated image",
               (t / "run" / "model.safetensors", t / "run" / "checkpoints" / "step_00000003"))


# ================================================================ 3. model and config problems
def _verify_with(w: World, m: Path) -> list[str]:
    p = w.people / "Ann"
    return verify_argv(p / "1.png", p / "2.png", m, "--aligned")


@row("3-verify-weights-do-not-fit-recipe", 2)
def _(w, t):
    m = _save(t / "m.safetensors", kwargs={"width": 8, "embed_dim": 8})  # recipe says width 8, weights are width 4
    return Run(_verify_with(w, m), _q(m) + r": weight \S+ has shape \(\d+(, \d+)*\) in the file but face_small")


@row("3-embed-weights-do-not-fit-recipe", 2)
def _(w, t):
    m = _save(t / "m.safetensors", kwargs={"width": 4, "embed_dim": 16})
    return Run(embed_argv(w.people, m, t / "x.npz"), _q(m) + r": weight fc5\.\w+ has shape", (t / "x.npz",))


@row("3-verify-unknown-model-kwarg", 2)
def _(w, t):
    m = _save(t / "m.safetensors", kwargs={"widht": 4, "embed_dim": 8})
    return Run(_verify_with(w, m), _q(m) + r": the recipe's constructor arguments do not fit face_small.*widht")


@row("3-verify-negative-model-kwarg", 2)
def _(w, t):
    m = _save(t / "m.safetensors", kwargs={"width": -4, "embed_dim": 8})
    return Run(_verify_with(w, m), _q(m) + r": cannot build face_small\(.*width=-4 is negative")


@row("3-verify-recipe-not-json", 2)
def _(w, t):
    from safetensors.torch import save_file

    m = t / "m.safetensors"
    save_file({"x": torch.zeros(2)}, str(m), metadata={"centerloss.model": "face_small",
                                                      "centerloss.model_kwargs": "{width: 4"})
    return Run(_verify_with(w, m), _q(m) + r": metadata 'centerloss.model_kwargs' is not JSON")


@row("3-verify-truncated-model", 2)
def _(w, t):
    raw = w.model.read_bytes()
    (t / "m.safetensors").write_bytes(raw[: len(raw) // 2])
    return Run(_verify_with(w, t / "m.safetensors"), _q(t / "m.safetensors") + r".*(truncated|cannot read the weights)")


@row("3-verify-corrupt-model-header", 2)
def _(w, t):
    raw = bytearray(w.model.read_bytes())
    raw[8:40] = b"\xff" * 32  # the JSON header's start
    (t / "m.safetensors").write_bytes(bytes(raw))
    return Run(_verify_with(w, t / "m.safetensors"), _q(t / "m.safetensors") + r" is not a safetensors model file")


@row("3-eval-truncated-model", 2)
def _(w, t):
    raw = w.model.read_bytes()
    (t / "m.safetensors").write_bytes(raw[: len(raw) - 100])
    argv = ["eval", "lfw", "--model", str(t / "m.safetensors"), "--images", str(w.lfw), "--pairs", str(w.pairs),
            "--out", str(t / "out"), "--quiet", "--no-cache", "--device", "cpu"]
    return Run(argv, _q(t / "m.safetensors") + r".*(truncated|cannot read the weights)", (t / "out",))


@row("3-export-truncated-model", 2)
def _(w, t):
    raw = w.model.read_bytes()
    (t / "m.safetensors").write_bytes(raw[:100])
    return Run(["export", "--model", str(t / "m.safetensors"), "--out", str(t / "m.onnx")],
               _q(t / "m.safetensors") + r".*(truncated|cannot read)", (t / "m.onnx",))


def _bad_yaml(t: Path) -> Path:
    return _file(t / "x.yaml", "model:\n  name: face_small\n  kwargs: {width: 4\nhead: linear\n")


@row("3-train-preset-yaml-syntax-error", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", "--preset", str(_bad_yaml(t))), _q(t / "x.yaml") + r": not valid YAML \(line \d+, column \d+\)",
               (t / "run",))


@row("3-mnist-preset-yaml-syntax-error", 2)
def _(w, t):
    return Run(mnist_argv(w.mnist, t / "out", "--preset", str(_bad_yaml(t))), _q(t / "x.yaml") + r": not valid YAML",
               (t / "out",))


@row("3-lfw-experiment-preset-yaml-syntax-error", 2)
def _(w, t):
    return Run(["lfw-experiment", "--preset", str(_bad_yaml(t)), "--out", str(t / "out")],
               _q(t / "x.yaml") + r": not valid YAML", (t / "out",))


@row("3-train-preset-file-missing", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", "--preset", str(t / "nope.yaml")), _q(t / "nope.yaml") + " not found",
               (t / "run",))


@row("3-train-unknown-config-key", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", "--set", "model.widht=4"), r"unknown key\(s\) \['widht'\]", (t / "run",))


@row("3-train-unknown-model-kwarg", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", kw="{width: 4, embed_dim: 8, widht: 4}"),
               r"model\.kwargs: unknown argument\(s\) \['widht'\]", (t / "run",))


@row("3-train-negative-model-kwarg", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", kw="{width: -4, embed_dim: 8}"), r"model.*width.*-4",
               (t / "run" / "config.yaml",))


@row("3-train-unknown-head-kwarg", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", "--set", "head.kwargs.margn=0.5"),
               r"head\.kwargs: unknown argument\(s\) \['margn'\]", (t / "run",))


@row("3-train-conflicting-overrides", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", "--set", "a.b=1", "a.b.c=2"),
               r"conflicting overrides: 'a\.b' and 'a\.b\.c'", (t / "run",))


@row("3-train-unknown-aux-name", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", "--set", "aux.name=centr"), r"aux\.name: unknown aux loss 'centr'", (t / "run",))


@row("3-train-bad-amp-value", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", "--set", "runtime.amp=fp32"), r"runtime\.amp: 'fp32' is not one of",
               (t / "run",))


@row("3-train-negative-lr", 2)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", "--set", "optimizer.lr=-0.1"), r"optimizer\.lr must be > 0, got -0\.1",
               (t / "run",))


@row("3-mnist-unknown-key", 2)
def _(w, t):
    return Run(mnist_argv(w.mnist, t / "out", "--set", "train.aux.name=centr"), r"aux\.name: unknown aux loss 'centr'", (t / "out",))


@row("3-mnist-bad-lambdas", 2)
def _(w, t):
    return Run(mnist_argv(w.mnist, t / "out", "--lambdas", "0,x"), r"--lambdas takes numbers.*'0,x'", (t / "out",))


@row("3-train-device-cuda", 2, cuda=True)
def _(w, t):
    return Run(train_argv(w.faces, t / "run", "--device", "cuda"), r"device 'cuda' was asked for, but CUDA is not available",
               (t / "run",))


@row("3-mnist-device-cuda", 2, cuda=True)
def _(w, t):
    return Run(mnist_argv(w.mnist, t / "out", "--device", "cuda"), r"device 'cuda' was asked for, but CUDA is not available",
               (t / "out" / "report.json",))


@row("3-eval-device-cuda", 2, cuda=True)
def _(w, t):
    argv = ["eval", "lfw", "--model", str(w.model), "--images", str(w.lfw), "--pairs", str(w.pairs), "--out",
            str(t / "out"), "--quiet", "--no-cache", "--device", "cuda"]
    return Run(argv, r"device 'cuda' was asked for, but CUDA is not available", (t / "out",))


@row("3-verify-device-cuda", 2, cuda=True)
def _(w, t):
    return Run(_verify_with(w, w.model) + ["--device", "cuda"], r"device 'cuda' was asked for, but CUDA is not available")


BOMB_RE = r": (60000x60000 pixels is over the [\d,]+-pixel limit|image too large to decode safely).*decompression bomb"


@row("3-verify-decompression-bomb", 2)
def _(w, t):
    (t / "bomb.png").write_bytes(BOMB)
    return Run(verify_argv(t / "bomb.png", w.people / "Ann" / "1.png", w.model, "--aligned"), _q(t / "bomb.png") + BOMB_RE)


@row("3-verify-raw-decompression-bomb", 2)
def _(w, t):
    (t / "bomb.jpg").write_bytes(BOMB)
    return Run(verify_argv(t / "bomb.jpg", w.people / "Ann" / "1.png", w.model), _q(t / "bomb.jpg") + BOMB_RE)


@row("3-embed-decompression-bomb", 2)
def _(w, t):
    src = _copy(w.people, t / "people")
    (src / "Bob" / "bomb.png").write_bytes(BOMB)
    return Run(embed_argv(src, w.model, t / "x.npz"), _q(src / "Bob" / "bomb.png") + BOMB_RE, (t / "x.npz",))


def _bin(t: Path, images: list[bytes], issame: list[bool]) -> Path:
    (t / "set.bin").write_bytes(pickle.dumps((images, issame), protocol=4))
    return t / "set.bin"


def _png(seed: int, hw: tuple[int, int] = (112, 112)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_crop(seed, hw)).save(buf, "PNG")
    return buf.getvalue()


def bin_argv(b: Path, model: Path, out: Path) -> list[str]:
    return ["eval", "bin", str(b), "--model", str(model), "--out", str(out), "--n-folds", "2", "--no-plots",
            "--quiet", "--no-cache", "--workers", "0", "--device", "cpu"]


@row("3-eval-bin-decompression-bomb", 2)
def _(w, t):
    b = _bin(t, [_png(i) for i in range(5)] + [BOMB] + [_png(i) for i in range(6, 8)], [True, False, True, False])
    return Run(bin_argv(b, w.model, t / "out"), _q(b) + r" image 5 \(pair 2\)" + BOMB_RE, (t / "out" / "report.json",))


@row("3-train-decompression-bomb", 2)
def _(w, t):
    data, bad = _data_with(w, t, "bomb.png", BOMB)
    return Run(train_argv(data, t / "run"), _q(bad) + BOMB_RE,
               (t / "run" / "model.safetensors", t / "run" / "checkpoints" / "step_00000003"))


@row("3-mnist-idx-header-cut-short", 2)
def _(w, t):
    d = _copy(w.mnist, t / "mnist")
    f = d / "train-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(struct.pack(">II", 2051, 64)))  # magic and one of three dims
    return Run(mnist_argv(d, t / "out"), _q(f) + r": 8 bytes is too short for an IDX header", (t / "out" / "report.json",))


@row("3-mnist-images-wrong-size", 2)
def _(w, t):
    d = _fake_mnist(t / "mnist", train_images=np.zeros((64, 27, 28)))
    return Run(mnist_argv(d, t / "out"), _q(d / "train-images-idx3-ubyte.gz") + r": images are 27x28, MNIST's are 28x28",
               (t / "out" / "report.json",))


@row("3-mnist-download-offline", 2)
def _(w, t):
    def offline(*a, **k):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    return Run(mnist_argv(t / "dl", t / "out", "--download"), r"cannot download https?://\S+train-images-idx3-ubyte\.gz.*offline",
               (t / "dl" / "train-images-idx3-ubyte.gz", t / "out"),
               patch=lambda mp: mp.setattr(urllib.request, "urlopen", offline))


# ================================================================ 4. resume (engine), in-process part
def _run_copy(w: World, t: Path) -> Path:
    return _copy(w.run, t / "run")


@row("4-resume-flipped-checkpoint-bytes", 2)
def _(w, t):
    run = _run_copy(w, t)
    f = run / "checkpoints" / "step_00000003" / "objective.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    return Run(train_argv(w.faces, run, "--resume", steps=6), _q(f) + r" is corrupt \(its sha256 differs",
               same=(run / "checkpoints", run / "model.safetensors"))


@row("4-resume-auto-without-any-state-json", 2)
def _(w, t):
    run = _run_copy(w, t)
    for s in (run / "checkpoints").glob("step_*/state.json"):
        s.unlink()
    return Run(train_argv(w.faces, run, "--resume", "auto", steps=6),
               r"--resume auto: " + _q(run / "checkpoints") + r" holds checkpoint folders but none is complete",
               same=(run / "checkpoints", run / "model.safetensors"))


@row("4-new-run-on-a-folder-with-checkpoints", 2)
def _(w, t):
    run = _run_copy(w, t)
    return Run(train_argv(w.faces, run, steps=6), _q(run) + r" already holds checkpoints; pass --resume auto",
               same=(run / "checkpoints", run / "model.safetensors"))


# ================================================================ 6. errors that must name the file
@row("6-eval-binary-pairs-file", 2)
def _(w, t):
    (t / "pairs.txt").write_bytes(b"2\t2\nAnn 1 2\n\x00\x01\x02binary\n")
    return Run(eval_argv(w, t / "out", pairs=t / "pairs.txt"), _q(t / "pairs.txt") + r":3: a binary file \(NUL byte",
               (t / "out",))


@row("6-megaface-object-npy-distractors", 2)
def _(w, t):
    np.save(t / "d.npy", np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    argv = ["eval", "megaface", "--probes", str(w.feats), "--distractors", str(t / "d.npy"), "--out", str(t / "out"),
            "--quiet"]
    return Run(argv, _q(t / "d.npy") + r": not a plain numeric \.npy", (t / "out",))


@row("6-mnist-label-out-of-range", 2)
def _(w, t):
    labels = np.arange(64) % 10
    labels[17] = 12
    d = _fake_mnist(t / "mnist", train_labels=labels)
    return Run(mnist_argv(d, t / "out"), _q(d / "train-labels-idx1-ubyte.gz") + r": label 12 at index 17 is outside 0\.\.9",
               (t / "out" / "report.json",))


def _sha(p: Path) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


@row("6-identify-gallery-of-another-model", 2)
def _(w, t):
    g = _copy(w.gallery, t / "g")
    argv = ["identify", str(w.people / "Ann" / "1.png"), "--gallery", str(g), "--model", str(w.model_b), "--aligned",
            "--quiet"]
    return Run(argv, f"built with model sha256 {_sha(w.model)}.*{_q(w.model_b)} has sha256 {_sha(w.model_b)}", same=(g,))


def add_argv(g: Path, model: Path, *dirs: Path) -> list[str]:
    return ["gallery", "add", str(g), *map(str, dirs), "--model", str(model), "--aligned", "--quiet", "--workers", "0"]


@row("6-gallery-add-with-another-model", 2)
def _(w, t):
    g = _copy(w.gallery, t / "g")
    (t / "Eve").mkdir()
    Image.fromarray(_crop(99)).save(t / "Eve" / "1.png")
    return Run(add_argv(g, w.model_b, t / "Eve"), f"built with model sha256 {_sha(w.model)}.*has sha256 {_sha(w.model_b)}",
               same=(g,))


@row("6-gallery-add-non-image-photo", 2)
def _(w, t):
    g = _copy(w.gallery, t / "g")
    (t / "Eve").mkdir()
    Image.fromarray(_crop(99)).save(t / "Eve" / "1.png")
    (t / "Eve" / "fake.jpg").write_text("<html>not an image</html>\n")
    return Run(add_argv(g, w.model, t / "Eve"), _q(t / "Eve" / "fake.jpg") + r": not an image.*nothing was enrolled",
               same=(g,))


@row("6-gallery-add-folder-without-images", 2)
def _(w, t):
    g = _copy(w.gallery, t / "g")
    _file(t / "Eve" / "notes.txt")
    return Run(add_argv(g, w.model, t / "Eve"), _q(t / "Eve") + r": no images", same=(g,))


@row("6-verify-photo-without-a-face", 2)
def _(w, t):
    a, b = _faceless(t / "a.png"), _faceless(t / "b.png", seed=1)
    return Run(verify_argv(a, b, w.model), _q(a) + r": no face detected")


# ------------------------------------------------------------------------------------------------ the table
@pytest.mark.parametrize("build, code", CASES)
def test_fault(build, code, w, tmp_path, capsys, monkeypatch):
    r = build(w, tmp_path)
    before = {p: snapshot(p) for p in r.same}
    capsys.readouterr()
    if r.readonly is not None:
        read_only(monkeypatch, r.readonly)
    if r.patch is not None:
        r.patch(monkeypatch)
    with file_size_limit(r.fsize) if r.fsize else contextlib.nullcontext():
        got = main(r.argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert got == code, f"exit {got}, expected {code}; stderr: {err!r}"
    line = error_line(err, r.argv[0])
    assert re.search(r.match, line), f"{r.match!r} not in {line!r}"
    left = [str(p) for p in r.absent if p.exists()]
    assert not left, f"left behind after the failure: {left}"
    assert not temps(tmp_path), f"temporary files left: {temps(tmp_path)}"
    for p, snap in before.items():
        assert snapshot(p) == snap, f"{p} changed although the command failed"


# ================================================================ controls: the fixtures are good
@pytest.mark.parametrize("what", ["eval-lfw", "eval-bin", "embed", "verify", "gallery", "train", "mnist"])
def test_control_without_the_fault_succeeds(what, w, tmp_path, capsys):
    """The rows above fail for their fault alone: the same fixtures without it succeed (exit 0, no stderr)."""
    if what == "gallery":  # built by the fixture; `info` reads it back
        argv = ["gallery", "info", str(w.gallery)]
    elif what == "train":  # run by the fixture; the row `2-train-drops-...` checks its data report
        assert (w.run / "model.safetensors").is_file() and not temps(w.run)
        return
    elif what == "mnist":
        from centerloss.data.mnist import load_mnist

        train, test = load_mnist(w.mnist)
        assert (len(train.images), len(test.images)) == (64, 32)
        return
    else:
        argv = {"eval-lfw": eval_argv(w, tmp_path / "out"),
                "eval-bin": bin_argv(_bin(tmp_path, [_png(i) for i in range(8)], [True, False, True, False]), w.model,
                                     tmp_path / "out"),
                "embed": embed_argv(w.people, w.model, tmp_path / "x.npz"),
                "verify": verify_argv(w.people / "Ann" / "1.png", w.people / "Ann" / "2.png", w.model, "--aligned")}[what]
    code = main(argv)
    err = capsys.readouterr().err
    assert code in ((0, 1) if what == "verify" else (0,)) and err == "", err


def test_1_a_cache_that_cannot_be_written_is_one_warning_after_success(w, tmp_path, capsys, monkeypatch):
    """The feature cache only saves time: a full cache disk is said once, after the command succeeded (and
    not at all when the command then fails: see row 1-embed-disk-full-with-the-feature-cache)."""
    import centerloss.eval.features as F
    from centerloss.errors import RunError

    real, cache = F.save_features, tmp_path / "cache"

    def full_cache_disk(path, *a, **k):
        if Path(path).parent == cache:
            raise RunError(f"cannot write {path}: No space left on device (disk full?)")
        return real(path, *a, **k)

    monkeypatch.setattr(F, "save_features", full_cache_disk)
    argv = [a for a in embed_argv(w.people, w.model, tmp_path / "x.npz") if a != "--no-cache"]
    assert main(argv + ["--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    assert re.fullmatch(r"warning: feature cache not written: cannot write " + _q(cache) + r"/\w+\.npz: No space "
                        r"left on device \(disk full\?\)\n", err), err
    assert (tmp_path / "x.npz").is_file() and not temps(tmp_path)


def test_2_train_drops_identities_below_min_images_and_lists_them(w):
    """Success row of class 2: the identity with 1 image (< data.min_images = 2) is left out, and said so."""
    import json

    rep = json.loads((w.run / "data_report.json").read_text())
    assert rep["identities"] == 4 and rep["images"] == 24
    assert rep["dropped_identities"]["names"] == {"solo": 1} and rep["dropped_identities"]["count"] == 1
    assert "solo" not in json.loads((w.run / "classes.json").read_text())


# ================================================================ 4. concurrency and Ctrl-C (subprocesses)
def _cli(*argv: object) -> list[str]:
    return [sys.executable, "-m", "centerloss.cli", *map(str, argv)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CENTERLOSS_DEBUG"}
    return {**env, **extra}


def _child(pid: int, marker: bytes) -> int | None:
    """A child process of ``pid`` whose command line holds ``marker`` (from /proc; pids above ``pid`` only,
    which is where a new child's is, so one scan stays short)."""
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) <= pid:
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                if int(f.read().rsplit(b")", 1)[1].split()[1]) != pid:
                    continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if marker in f.read():
                    return int(d)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _signal_masks(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v, 16) for k, v in (ln.split(":") for ln in f if ln.startswith(("SigIgn", "SigCgt")))}
    except (OSError, ValueError):
        return None


def _server_starting(pid: int, timeout: float = 60.0) -> bool:
    """Wait until the worker server ``pid`` runs Python code that treats SIGINT (Python's handler, or ignored)
    -> True; False if it finished starting first (it catches SIGCHLD once its preamble is done) or is gone."""
    sigint, sigchld = 1 << (signal.SIGINT - 1), 1 << (signal.SIGCHLD - 1)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        m = _signal_masks(pid)
        if m is None or m["SigCgt"] & sigchld:
            return False
        if (m["SigCgt"] | m["SigIgn"]) & sigint:
            return True
        time.sleep(0.0005)
    return False


def _wait(proc: subprocess.Popen, cond: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the training exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def _holder(out: Path) -> int | None:
    try:
        return int((out / ".lock").read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


@dataclass
class Interrupted:
    code: int  # exit code of the interrupted training
    err: str  # its stderr
    out: Path
    pid: int
    second: tuple[int, str] | None = None  # (exit code, stderr) of a second training started on the same --out
    in_window: bool = True  # "early": SIGINT came while the worker server was starting (running its imports)


def _second_training(w: World, out: Path) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
        code = main(train_argv(w.faces, out, steps=4, ckpt=2))
    return code, buf.getvalue()


def _interrupt(w: World, out: Path, when: str) -> Interrupted:
    """A long `train --workers 2` in its own process group, Ctrl-C'd (SIGINT to the group, as a terminal
    does): "early" as soon as the DataLoader's worker server process appears, "mid" once the checkpoint of
    step 2 is complete; while "mid" runs, a second training on the same --out is attempted in-process."""
    argv = train_argv(w.faces, out, "--set", "runtime.keep_last=0", steps=100000, workers=2, ckpt=2)
    p = subprocess.Popen(_cli(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=_env())
    second, in_window, server = None, True, []
    try:
        if when == "early":
            _wait(p, lambda: server.append(_child(p.pid, b"forkserver")) or server[-1] is not None,
                  "the worker server to start")
            in_window = _server_starting(server[-1])
        else:
            _wait(p, lambda: _holder(out) == p.pid, "the run folder's lock")
            second = _second_training(w, out)
            _wait(p, lambda: (out / "checkpoints" / "step_00000002" / "state.json").is_file(), "checkpoint 2")
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # the group's stragglers, if any
        p.wait()
    return Interrupted(p.returncode, err, out, p.pid, second, in_window)


@pytest.fixture(scope="module")
def interrupted(w, tmp_path_factory) -> dict[str, Interrupted]:
    root = tmp_path_factory.mktemp("interrupted")
    return {when: _interrupt(w, root / when, when) for when in ("early", "mid")}


@pytest.fixture(scope="module")
def reference(w, tmp_path_factory) -> Path:
    """The uninterrupted 4-step run the resumed ones must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(train_argv(w.faces, out, steps=4, ckpt=2)) == 0
    return out / "model.safetensors"


def test_4_second_training_on_a_busy_out_is_refused_with_the_holders_pid(interrupted):
    r = interrupted["mid"]
    assert r.second is not None
    code, err = r.second
    assert code == 2, err
    line = error_line(err, "train")
    assert re.search(_q(r.out) + rf" is in use by another process \(pid {r.pid}\b", line), line


CTRL_C = [pytest.param("early", id="4-ctrl-c-while-workers-start"), pytest.param("mid", id="4-ctrl-c-mid-run")]


@pytest.mark.parametrize("when", CTRL_C)
def test_4_ctrl_c_is_exit_130_and_one_line(when, interrupted):
    r = interrupted[when]
    if not r.in_window:
        pytest.skip("the worker server had finished starting before it was seen: the early window was missed")
    assert r.code == 130, r.err
    assert r.err == "centerloss train: interrupted\n", r.err
    assert not (r.out / "model.safetensors").exists() and not temps(r.out), temps(r.out)


@pytest.mark.parametrize("when", [pytest.param("early", id="4-resume-after-early-ctrl-c"),
                                  pytest.param("mid", id="4-resume-after-mid-run-ctrl-c")])
def test_4_resume_after_ctrl_c_ends_like_an_uninterrupted_run(when, interrupted, reference, w, capsys):
    from safetensors.torch import load_file

    out = interrupted[when].out
    ckpt = out / "checkpoints" / "step_00000002"
    resume = ["--resume"] if when == "early" else ["--resume", str(ckpt)]
    if when == "mid":
        assert (ckpt / "state.json").is_file()
    assert main(train_argv(w.faces, out, *resume, steps=4, ckpt=2)) == 0, capsys.readouterr().err
    got, want = load_file(str(out / "model.safetensors")), load_file(str(reference))
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want), "the resumed run's weights differ"
    # (the file bytes are not compared: safetensors writes the metadata keys in a random order)
    assert _metadata(out / "model.safetensors") == _metadata(reference)


def _metadata(p: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        return dict(f.metadata())


# ================================================================ 5. align: listed, not fatal
ALIGN_ROWS = [  # (manifest path, status, what the reason says)
    ("loop_a", "skipped", "symlink loop"),
    ("dangling.png", "skipped", "dangling symlink"),
    ("pipe.jpg", "skipped", "not a regular file (FIFO)"),
    ("caf\\xe9.png", "ok", ""),  # a non-UTF-8 name (byte 0xe9), escaped in the manifest
    ("corrupt.jpg", "failed", "unreadable:"),
    ("cut.jpg", "failed", "truncated"),
]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    import csv

    t = tmp_path_factory.mktemp("align")
    src, dst = t / "src", t / "dst"
    _faceless(src / "good.png")
    os.symlink("loop_b", src / "loop_a")
    os.symlink("loop_a", src / "loop_b")
    os.symlink(t / "nowhere.png", src / "dangling.png")
    os.mkfifo(src / "pipe.jpg")
    _faceless(Path(os.fsdecode(os.fsencode(src) + b"/caf\xe9.png")), seed=2)
    (src / "corrupt.jpg").write_bytes(_jpeg_bytes(5)[:600] + np.random.default_rng(0).bytes(3000))
    (src / "cut.jpg").write_bytes(_cut_jpeg())
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(align_argv(src, dst))
    with open(dst / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    return code, buf_err.getvalue(), rows, dst


@pytest.mark.parametrize("path, status, why", [pytest.param(*r, id=f"5-align-{r[0]}") for r in ALIGN_ROWS])
def test_5_align_lists_every_bad_entry_and_finishes(path, status, why, aligned):
    code, err, rows, dst = aligned
    assert code == 0 and err == "", err
    assert path in rows, sorted(rows)
    r = rows[path]
    assert r["status"] == status and why in r["reason"], r
    if status == "ok":
        assert r["path_escaped"] == "1" and os.path.isfile(os.fsencode(dst) + b"/caf\xe9.jpg")
    else:
        assert r["out"] == ""


# ================================================================ 7. CENTERLOSS_DEBUG=1: a traceback instead
def _debug_cases(w: World, t: Path) -> dict[str, tuple[list[str], str, str]]:
    """command -> (argv, the exception class, what its message says); each fails at once."""
    a = w.people / "Ann" / "1.png"
    return {
        "train": (["train", "--preset", "nope"], "ConfigError", r"no train preset 'nope'"),
        "mnist": (["mnist", "--preset", "nope"], "ConfigError", r"no mnist preset 'nope'"),
        "lfw-experiment": (["lfw-experiment", "--preset", "nope"], "ConfigError", r"no lfw preset 'nope'"),
        "align": (align_argv(t / "missing", t / "dst"), "DataError", r"source folder not found"),
        "eval": (eval_argv(w, t / "out", pairs=t / "missing.txt"), "DataError", r"pairs file not found"),
        "verify": (verify_argv(a, a, t / "missing.safetensors", "--aligned"), "DataError", r"model file not found"),
        "embed": (embed_argv(t / "missing", w.model, t / "x.npz"), "DataError", r"image folder not found"),
        "gallery": (["gallery", "info", str(t / "missing")], "DataError", r"gallery not found"),
        "identify": (["identify", str(a), "--gallery", str(w.gallery), "--model", str(w.model), "--top-k", "0"],
                     "ConfigError", r"--top-k must be >= 1"),
        "export": (["export", "--model", str(t / "m.onnx"), "--out", str(t / "o.onnx")], "ConfigError",
                   r"is already ONNX"),
    }


@pytest.fixture(scope="module")
def debug_runs(w, tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Every command of :func:`_debug_cases` in its own process with CENTERLOSS_DEBUG=1, all at once."""
    t = tmp_path_factory.mktemp("debug")
    procs = {cmd: subprocess.Popen(_cli(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env=_env(CENTERLOSS_DEBUG="1"))
             for cmd, (argv, _, _) in _debug_cases(w, t).items()}
    return {cmd: (p.wait(timeout=300), p.stderr.read()) for cmd, p in procs.items()}


@pytest.mark.parametrize("cmd", [pytest.param(c, id=f"7-debug-{c}") for c in (
    "train", "mnist", "lfw-experiment", "align", "eval", "verify", "embed", "gallery", "identify", "export")])
def test_7_debug_shows_the_traceback_instead_of_the_line(cmd, debug_runs, w, tmp_path, capsys):
    argv, cls, why = _debug_cases(w, tmp_path)[cmd]
    assert main(argv) == 2  # without CENTERLOSS_DEBUG: the one line
    assert re.search(why, error_line(capsys.readouterr().err, argv[0]))
    code, err = debug_runs[cmd]
    assert code == 1 and "Traceback (most recent call last):" in err, err  # Python's own report of the raise
    assert re.match(rf"centerloss\.errors\.{cls}: .*{why}", err.strip().splitlines()[-1]), err[-500:]
    assert f"centerloss {argv[0]}: error:" not in err
