"""Readers for verification protocol files: LFW ``pairs.txt``, YouTube-Faces-style video pairs and InsightFace
``.bin`` sets. They parse and validate; they never decode images or run a model (that is :mod:`.features`).

* :func:`read_lfw_pairs` -- ``pairs.txt`` (View 2: header ``10\\t300``; View 1: header ``1100``).
* :func:`read_video_pairs` and :func:`video_features` -- YTF ``splits.txt``-style lists; a video's feature is
  the mean of its frames' features (docs/METHOD.md; paper Sec. 6).
* :func:`read_bin` -- a pickle of ``(list of JPEG bytes, issame list)``, read by an unpickler that can build
  nothing but bytes, str, lists, tuples, bools and small ints, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

__all__ = [
    "BinSet",
    "PairList",
    "read_bin",
    "read_lfw_pairs",
    "read_video_pairs",
    "video_features",
]

LFW_PATH_FORMAT = "{name}/{name}_{num:04d}.jpg"


@dataclass
class PairList:
    """Pairs of items (image paths or video ids), their labels and folds. All arrays have length P."""

    left: list[str]
    right: list[str]
    issame: np.ndarray  # (P,) bool
    fold_ids: np.ndarray  # (P,) int, 0-based
    source: str = ""  # the file it came from, for error messages

    def __len__(self) -> int:
        return len(self.left)

    def subset(self, mask: np.ndarray | Sequence[bool] | Sequence[int]) -> PairList:
        """The pairs selected by a boolean mask or an index array."""
        idx = np.arange(len(self))[np.asarray(mask)]
        return PairList([self.left[i] for i in idx], [self.right[i] for i in idx], self.issame[idx],
                        self.fold_ids[idx], self.source)

    def folds(self, *fold_ids: int) -> PairList:
        """Only the pairs of the given folds (0-based), e.g. ``pairs.folds(0)`` for LFW's first fold."""
        return self.subset(np.isin(self.fold_ids, fold_ids))

    def items(self) -> list[str]:
        """Every distinct item the pairs use, sorted."""
        return sorted(set(self.left) | set(self.right))

    def missing(self, root: str | os.PathLike[str]) -> list[str]:
        """Items with no file under ``root``."""
        root = Path(root)
        return [p for p in self.items() if not (root / p).is_file()]

    def check_images(self, root: str | os.PathLike[str]) -> None:
        """Raise :class:`DataError` listing how many images are missing (and the first few)."""
        miss = self.missing(root)
        if miss:
            raise DataError(f"{len(miss)} of the {len(self.items())} images named by {self.source or 'the pairs'} "
                            f"are missing under {root}, e.g. {', '.join(miss[:5])}")

    def gather(self, paths: Sequence[str], features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Look the pairs' items up in a features table; returns ``(features_a, features_b)``, each (P, D)."""
        ia, ib = self.indices(paths)
        return features[ia], features[ib]

    def indices(self, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the pairs' items in a features table with these ``paths``: ``(index_a, index_b)``, (P,)
        each -- the ``pair_index`` of :func:`~centerloss.eval.verification.evaluate_pairs`."""
        index = {p: i for i, p in enumerate(paths)}
        miss = [p for p in self.items() if p not in index]
        if miss:
            raise DataError(f"the features lack {len(miss)} of the {len(self.items())} items the pairs need, "
                            f"e.g. {', '.join(miss[:5])} (paths must be relative like Name/Name_0001.jpg)")
        ia = np.fromiter((index[p] for p in self.left), dtype=np.int64, count=len(self))
        ib = np.fromiter((index[p] for p in self.right), dtype=np.int64, count=len(self))
        return ia, ib


def _read_text(path: Path, what: str) -> str:
    """A protocol file's text; a binary or non-UTF-8 file is refused naming the line of the first bad byte."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise DataError(f"{path}:{_line_of(data, at)}: a binary file (NUL byte at offset {at}), not a {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{_line_of(data, e.start)}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}); a {what} is plain text") from None


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _check_distinct(source: str, left: Sequence[str], right: Sequence[str], linenos: Sequence[int]) -> None:
    """Refuse a pair of an item with itself, and the same unordered pair listed twice (it would count twice
    in the accuracy, and could sit in two folds at once)."""
    seen: dict[tuple[str, str], int] = {}
    repeats: list[tuple[int, int, tuple[str, str]]] = []
    for a, b, lno in zip(left, right, linenos, strict=True):
        if a == b:
            raise DataError(f"{source}:{lno}: pairs {a} with itself")
        key = (a, b) if a <= b else (b, a)
        if key in seen:
            repeats.append((seen[key], lno, key))
        else:
            seen[key] = lno
    if repeats:
        first, lno, (a, b) = repeats[0]
        more = f"; {len(repeats)} repeated pairs in all" if len(repeats) > 1 else ""
        raise DataError(f"{source}: lines {first} and {lno} are the same pair ({a}, {b}){more}")


def _int_field(tok: str, what: str, where: str) -> int:
    try:
        v = int(tok)
    except ValueError:
        raise DataError(f"{where}: {what} must be an integer, got {tok!r}") from None
    if v < 1:
        raise DataError(f"{where}: {what} must be >= 1, got {v}")
    return v


def read_lfw_pairs(
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    path_format: str = LFW_PATH_FORMAT,
) -> PairList:
    """Parse an LFW ``pairs.txt``.

    Layout: a header ``n_folds n_per_class`` (View 1 files have just ``n_per_class``: one fold), then per
    fold ``n_per_class`` matched lines ``name i j`` followed by ``n_per_class`` mismatched lines
    ``name1 i name2 j``. Items become ``path_format`` paths (default ``Name/Name_0001.jpg``). Blank lines are
    skipped. Any deviation is a :class:`DataError` naming the line number and content; so are a binary or
    non-UTF-8 file, a pair of an image with itself and the same pair listed twice. With ``image_root`` every
    image must exist there.
    """
    path = Path(path)
    text = _read_text(path, "pairs file")
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise DataError(f"{path} is empty")
    hno, header = lines[0]
    head = header.split()
    where = f"{path}:{hno}"
    if len(head) == 2:
        n_folds, n_per = _int_field(head[0], "number of folds", where), _int_field(head[1], "pairs per class", where)
    elif len(head) == 1:
        n_folds, n_per = 1, _int_field(head[0], "pairs per class", where)
    else:
        raise DataError(f"{where}: expected a header 'n_folds n_pairs_per_class' like '10\\t300', got {header!r}")
    body = lines[1:]
    expected = n_folds * 2 * n_per
    if len(body) != expected:
        raise DataError(f"{path}: header {header!r} promises {n_folds} folds x 2 x {n_per} = {expected} pair lines, "
                        f"found {len(body)}")
    left, right, same, folds, linenos = [], [], [], [], []
    for k, (lno, ln) in enumerate(body):
        fold, pos = divmod(k, 2 * n_per)
        matched = pos < n_per
        tok = ln.split()
        where = f"{path}:{lno}"
        if matched:
            if len(tok) != 3:
                raise DataError(f"{where}: fold {fold + 1} expects a matched pair 'name i j' here, got {ln!r}")
            n1, n2 = tok[0], tok[0]
            i, j = _int_field(tok[1], "image number", where), _int_field(tok[2], "image number", where)
        else:
            if len(tok) != 4:
                raise DataError(f"{where}: fold {fold + 1} expects a mismatched pair 'name1 i name2 j' here, got {ln!r}")
            n1, n2 = tok[0], tok[2]
            i, j = _int_field(tok[1], "image number", where), _int_field(tok[3], "image number", where)
            if n1 == n2:
                raise DataError(f"{where}: a mismatched pair names the same person twice: {ln!r}")
        left.append(path_format.format(name=n1, num=i))
        right.append(path_format.format(name=n2, num=j))
        same.append(matched)
        folds.append(fold)
        linenos.append(lno)
    _check_distinct(str(path), left, right, linenos)
    pairs = PairList(left, right, np.array(same, dtype=bool), np.array(folds, dtype=np.int64), str(path))
    if image_root is not None:
        pairs.check_images(image_root)
    return pairs


# ---------------------------------------------------------------- YouTube Faces-style video pairs


YTF_HEADER = "split number, pair number, first name, second name, is same"


def _video_pair_line(tok: list[str], ln: str, where: str) -> tuple[int, str, str, bool]:
    """One data line of a splits file -> (0-based split, video1, video2, is_same)."""
    if len(tok) < 5:
        raise DataError(f"{where}: expected 'split, pair, video1, video2, is_same', got {ln!r}")
    split = _int_field(tok[0], "split number", where)
    if not tok[1].isdigit():
        raise DataError(f"{where}: pair number must be an integer, got {tok[1]!r}")
    if tok[4] not in ("0", "1"):
        raise DataError(f"{where}: is_same must be 0 or 1, got {tok[4]!r}")
    v1, v2 = tok[2].strip("/"), tok[3].strip("/")
    if not v1 or not v2:
        raise DataError(f"{where}: empty video id in {ln!r}")
    return split - 1, v1, v2, tok[4] == "1"


def read_video_pairs(path: str | os.PathLike[str]) -> PairList:
    """Parse a YTF ``splits.txt``-style list of video pairs.

    Each data line is comma-separated: ``split, pair_number, video1, video2, is_same[, ...]`` with a 1-based
    split number, video ids like ``Aaron_Eckhart/0`` (a folder of frames) and ``is_same`` 0 or 1; further
    columns are ignored. A first line whose first field is not an integer is the header, which must have the
    five columns of ``YTF_HEADER``. A binary or non-UTF-8 file, a video paired with itself and the same pair
    listed twice are refused (:class:`DataError` naming the lines).
    """
    path = Path(path)
    text = _read_text(path, "video pairs file")
    left, right, same, folds, linenos = [], [], [], [], []
    for lno, raw in enumerate(text.splitlines(), start=1):
        ln = raw.strip()
        if not ln:
            continue
        tok = [t.strip() for t in ln.split(",")]
        if not left and lno == 1 and not tok[0].lstrip("-").isdigit():
            if len(tok) < 5:
                raise DataError(f"{path}:1: expected a header like {YTF_HEADER!r} or a data line "
                                f"'split, pair, video1, video2, is_same', got {ln!r}")
            continue
        split, v1, v2, is_same = _video_pair_line(tok, ln, f"{path}:{lno}")
        left.append(v1)
        right.append(v2)
        same.append(is_same)
        folds.append(split)
        linenos.append(lno)
    if not left:
        raise DataError(f"{path} holds no video pairs")
    _check_distinct(str(path), left, right, linenos)
    return PairList(left, right, np.array(same, dtype=bool), np.array(folds, dtype=np.int64), str(path))


def video_features(
    paths: Sequence[str], features: np.ndarray, videos: Sequence[str] | None = None, normalize_frames: bool = False
) -> tuple[list[str], np.ndarray]:
    """Average frame features per video. A frame belongs to the video named by its parent folder
    (``Name/0/frame.jpg`` -> ``Name/0``).

    Args:
        paths: (N,) frame paths relative to the frames root, ``/``-separated.
        features: (N, D) frame features.
        videos: the video ids wanted (error if one has no frame); ``None``: every video found.
        normalize_frames: L2-normalise frames before averaging (the paper averages raw features; off).

    Returns:
        ``(video_ids, video_features (V, D))``.
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] != len(paths):
        raise DataError(f"features must be (N, D) with N = {len(paths)} paths, got {feats.shape}")
    if normalize_frames:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    parents = [p.rsplit("/", 1)[0] if "/" in p else "" for p in paths]
    ids = sorted(set(parents)) if videos is None else list(dict.fromkeys(videos))
    pos = {v: i for i, v in enumerate(ids)}
    rows = np.array([pos.get(p, -1) for p in parents], dtype=np.int64)  # (N,) video index or -1
    keep = rows >= 0
    counts = np.bincount(rows[keep], minlength=len(ids))
    if (counts == 0).any():
        miss = [v for v, c in zip(ids, counts, strict=True) if c == 0]
        raise DataError(f"{len(miss)} videos have no frames in the features, e.g. {', '.join(miss[:5])}")
    sums = np.zeros((len(ids), feats.shape[1]))
    np.add.at(sums, rows[keep], feats[keep])
    return ids, (sums / counts[:, None]).astype(np.float32)


# ---------------------------------------------------------------- InsightFace .bin


@dataclass
class BinSet:
    """An InsightFace verification set: ``images[2i]`` and ``images[2i+1]`` form pair ``i``."""

    images: list[bytes]  # encoded JPEG/PNG bytes, 2P of them
    issame: np.ndarray  # (P,) bool
    source: str = ""

    def fold_ids(self, n_folds: int = 10) -> np.ndarray:
        """InsightFace's folds: pairs split into ``n_folds`` consecutive, unshuffled blocks (sklearn KFold)."""
        p = self.issame.size
        if not 2 <= n_folds <= p:
            raise ConfigError(f"{self.source or 'the .bin set'} has {p} pairs: the number of folds must be "
                              f"between 2 and {p}, got {n_folds}")
        sizes = np.full(n_folds, p // n_folds)
        sizes[: p % n_folds] += 1
        return np.repeat(np.arange(n_folds), sizes)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 pickles ``bytes`` with protocols 0-2 as
    ``_codecs.encode(text, 'latin1')``. Only that exact call is honoured."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``: protocols 0-2 pickle ``b''`` as ``bytes()``. Only the no-argument call works."""
    if args:
        raise pickle.UnpicklingError("only bytes() with no arguments is allowed")
    return b""


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only the values pickle encodes without a global: bytes, str, int, bool, None, list, tuple,
    dict. Every global lookup is refused except the two that Python 3 uses to pickle ``bytes`` with protocols
    0-2 (``_codecs.encode`` and ``bytes``), each replaced by a stand-in that accepts only that use."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):
            return _empty_bytes
        if module.split(".")[0] == "numpy":
            raise pickle.UnpicklingError(
                f"it stores numpy objects ({module}.{name}); only lists of bytes and bools are accepted. "
                "Convert it with a trusted script: pickle.dump((list_of_bytes, [bool(x) for x in issame]), f)")
        raise pickle.UnpicklingError(f"it asks for the global {module}.{name}, which is refused")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are refused")


def read_bin(path: str | os.PathLike[str]) -> BinSet:
    """Read an InsightFace ``.bin`` (pickle of ``(list of JPEG bytes, issame list)``) without unpickling any
    object: see :class:`_RestrictedUnpickler`. Files written by Python 2 (``str`` images) and Python 3 with
    any protocol are accepted; a file that needs any other global -- including numpy arrays -- is refused
    with a :class:`DataError`, before anything it asks for is called."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f".bin file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise DataError(f"{path} is not an acceptable .bin verification set: {e}") from e
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled pair (images, issame), got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, list | tuple) or not all(isinstance(b, bytes | bytearray) for b in images):
        raise DataError(f"{path}: the first element must be a list of encoded images (bytes)")
    if not isinstance(issame, list | tuple) or not all(isinstance(v, bool) or v in (0, 1) for v in issame):
        raise DataError(f"{path}: the second element must be a list of booleans")
    if len(images) != 2 * len(issame):
        raise DataError(f"{path}: {len(images)} images but issame lists {len(issame)} pairs; expected exactly "
                        "two per pair")
    if not issame:
        raise DataError(f"{path} holds no pairs")
    return BinSet([bytes(b) for b in images], np.array([bool(v) for v in issame], dtype=bool), str(path))
