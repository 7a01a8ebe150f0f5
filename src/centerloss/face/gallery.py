"""A face gallery on disk: enrolled identities, their per-photo features and templates; exact 1:N search.

**Templates.** An identity's template is the L2-normalised mean of its photos' L2-normalised features, so
its cosine with a probe is the probe's mean cosine direction to that person (``docs/METHOD.md``, Sec. 4: the
feature is crop + flip, concatenated). A probe is scored against every template by inner product and the
top ``k`` are kept -- exactly, with :func:`centerloss.eval.identification.search_topk` (faiss's exact
``knn`` when faiss is installed, else chunked torch matmul + top-k; no approximate index), one segment at a
time, so memory stays near one segment's templates even for a million identities (they are memory-mapped).

**Layout** of a gallery folder ``G`` (safe formats only: ``.npy`` without pickle, and JSON)::

    G/gallery.json        the commit point: format, model sha256, feature recipe, segment list, history
    G/seg-<id>/           one segment per build chunk or `add`: names.npy (P,), templates.npy (P, E),
                          features.npy (N, E) float32, labels.npy (N,) int32 (row -> name), paths.npy (N,)
    G/.lock               held (flock) by the one process allowed to change G

**Atomic updates.** A writer takes the lock, writes new segments under temporary names, fsyncs and renames
them, and only then replaces ``gallery.json`` atomically (:func:`centerloss.utils.atomic.write_json`). A
process killed at any moment (even ``kill -9``) leaves either the old ``gallery.json`` with all the segments
it names, or the new one; unreferenced leftovers are swept by the next writer. Readers never take the lock.

**Model check.** ``gallery.json`` records the sha256 of the model's weights; searching with features of
another model is refused with both hashes in the message (an ONNX export of the same weights is accepted:
it records its source's sha256, see :mod:`.onnx_model`).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["FORMAT", "Enrollment", "Gallery", "enroll", "people_in", "templates_of"]

FORMAT = "centerloss-gallery/1"
INFO = "gallery.json"
LOCK = ".lock"
SEGMENT_IDENTITIES = 65536  # identities per segment written at once: bounds what a `remove` rewrites
_HISTORY = 200
_SEG_FILES = ("names.npy", "templates.npy", "features.npy", "labels.npy", "paths.npy")


# ----------------------------------------------------------------------------------------------- enrolment
@dataclass
class Enrollment:
    """Features to enrol: row ``i`` of ``features`` (N, E) is a photo ``paths[i]`` of ``names[labels[i]]``."""

    names: list[str]
    features: np.ndarray  # (N, E) float32
    labels: np.ndarray  # (N,) int
    paths: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)  # photos not enrolled: {"path", "reason"}

    def validate(self) -> None:
        f, lab = np.asarray(self.features), np.asarray(self.labels)
        if f.ndim != 2 or lab.shape != (f.shape[0],) or len(self.paths) != f.shape[0]:
            raise DataError(f"enrolment: features {f.shape}, labels {lab.shape} and {len(self.paths)} paths disagree")
        if len(set(self.names)) != len(self.names):
            raise DataError("enrolment: an identity is listed twice")
        bad = [n for n in self.names if not n or "\n" in n]
        if bad:
            raise DataError(f"enrolment: identity names must be non-empty single lines, got {bad[:3]}")
        if lab.size and (lab.min() < 0 or lab.max() >= len(self.names)):
            raise DataError("enrolment: labels must index names")
        counts = np.bincount(lab, minlength=len(self.names)) if lab.size else np.zeros(len(self.names), int)
        if (counts == 0).any():
            raise DataError(f"enrolment: no photo for {[self.names[i] for i in np.flatnonzero(counts == 0)][:5]}")
        if not np.isfinite(f).all():
            raise DataError("enrolment: features contain NaN or inf")

    @classmethod
    def from_features(cls, by_name: Mapping[str, np.ndarray]) -> Enrollment:
        """From ``{identity: features (n, E)}`` (paths are left empty)."""
        names = list(by_name)
        feats = [np.atleast_2d(np.asarray(by_name[n], np.float32)) for n in names]
        labels = np.concatenate([np.full(len(f), i, np.int32) for i, f in enumerate(feats)]) if feats else \
            np.zeros(0, np.int32)
        f = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
        return cls(names, f, labels, [""] * len(f))


def people_in(root: str | os.PathLike[str]) -> dict[str, list[str]]:
    """``{identity: [photo paths]}`` for a folder of identity folders (``ROOT/NAME/*.jpg``, any depth inside)."""
    from ..utils.images import IMAGE_EXTENSIONS

    r = Path(root)
    if not r.is_dir():
        raise DataError(f"people folder not found: {r}")
    out: dict[str, list[str]] = {}
    for d in sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = sorted(str(p) for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not out:
        raise DataError(f"{r} holds no identity folders (expected {r}/NAME/photo.jpg)")
    return out


def enroll(recognizer: Any, people: Mapping[str, Sequence[Any]], *, aligned: bool = False, fit: str = "error",
           skip_bad: bool = False, workers: int = 0, progress: Any = None) -> Enrollment:
    """Detect, align and embed every photo of every identity.

    A photo that does not decode or has no face raises DataError naming it, unless ``skip_bad``: then it is
    skipped and listed in ``skipped`` (as is an identity left with no photo, which is not enrolled)."""
    names, sources, owners = list(people), [], []
    for i, n in enumerate(names):
        sources += list(people[n])
        owners += [i] * len(people[n])
    labels_of = [str(s) if not isinstance(s, np.ndarray) else f"{names[o]}/array {k}"
                 for k, (s, o) in enumerate(zip(sources, owners))]
    try:
        feats, prep = recognizer.embed_photos(sources, labels_of, aligned=aligned, fit=fit, strict=not skip_bad,
                                              workers=workers, progress=progress)
    except DataError as e:
        raise DataError(f"{e}; nothing was enrolled (skip_bad / --skip-bad enrols the other photos)") from e
    kept = prep.kept
    lab = np.asarray(owners, np.int64)[kept] if kept else np.zeros(0, np.int64)
    skipped = [{"path": r.path, "reason": r.reason} for r in prep.records if not r.ok]
    present = sorted(set(lab.tolist()))
    for i in sorted(set(range(len(names))) - set(present)):
        skipped.append({"path": names[i], "reason": "identity not enrolled: no usable photo"})
    remap = {old: new for new, old in enumerate(present)}
    return Enrollment([names[i] for i in present], feats, np.array([remap[v] for v in lab.tolist()], np.int32),
                      [labels_of[i] for i in kept], skipped)


def templates_of(features: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(n, E) templates: L2-normalised mean of each identity's L2-normalised rows of ``features`` (N, E)."""
    from .recognizer import l2_normalize

    f = l2_normalize(features).astype(np.float64)  # (N, E)
    sums = np.zeros((n, f.shape[1]), np.float64)
    np.add.at(sums, np.asarray(labels, np.int64), f)
    return l2_normalize(sums).astype(np.float32)


# ----------------------------------------------------------------------------------------------- storage
@dataclass
class _Segment:
    entry: dict[str, Any]
    names: np.ndarray  # (P,) str
    templates: np.ndarray  # (P, E) float32, memory-mapped
    features: np.ndarray  # (N, E) float32, memory-mapped
    labels: np.ndarray  # (N,) int32
    paths: np.ndarray  # (N,) str


def _save_npy(path: Path, arr: np.ndarray) -> int:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def _write_segment(root: Path, names: Sequence[str], features: np.ndarray, labels: np.ndarray,
                   paths: Sequence[str], templates: np.ndarray | None = None) -> dict[str, Any]:
    """Write one segment folder completely under a temporary name, then rename it into place."""
    from ..utils.atomic import fsync_dir, os_error

    seg_id = f"seg-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
    tmp = root / f".tmp-{seg_id}"
    feats = np.ascontiguousarray(features, dtype=np.float32)
    labels = np.asarray(labels, np.int32)
    tpl = templates_of(feats, labels, len(names)) if templates is None else np.asarray(templates, np.float32)
    arrays = {"names": np.array(list(names), dtype=np.str_), "templates": tpl, "features": feats,
              "labels": labels, "paths": np.array(list(paths), dtype=np.str_)}
    try:
        tmp.mkdir()
        sizes = {f"{k}.npy": _save_npy(tmp / f"{k}.npy", v) for k, v in arrays.items()}
        fsync_dir(tmp)
        os.rename(tmp, root / seg_id)
        fsync_dir(root)
    except OSError as e:
        with contextlib.suppress(OSError):
            _rmtree(tmp)
        raise os_error(e, root / seg_id) from e
    return {"dir": seg_id, "identities": len(names), "images": int(feats.shape[0]), "bytes": sizes}


def _rmtree(p: Path) -> None:
    import shutil

    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _load_segment(root: Path, entry: dict[str, Any], dim: int) -> _Segment:
    d = root / str(entry.get("dir", ""))
    if not d.is_dir():
        raise FileNotFoundError(d)
    arrays: dict[str, np.ndarray] = {}
    for fname in _SEG_FILES:
        f = d / fname
        want = entry.get("bytes", {}).get(fname)
        size = f.stat().st_size  # FileNotFoundError: swept by a writer (the caller re-reads gallery.json)
        if want is not None and size != want:
            raise DataError(f"{f}: {size} bytes, but {root / INFO} says {want}: the gallery is damaged")
        try:
            big = fname in ("templates.npy", "features.npy")
            arrays[fname[:-4]] = np.load(f, mmap_mode="r" if big else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{f}: unreadable gallery array ({e})") from e
    seg = _Segment(entry, arrays["names"], arrays["templates"], arrays["features"], arrays["labels"], arrays["paths"])
    p, n = len(seg.names), len(seg.labels)
    if (seg.templates.shape != (p, dim) or seg.features.shape != (n, dim) or seg.paths.shape != (n,)
            or p != entry.get("identities") or n != entry.get("images")
            or (n and (seg.labels.min() < 0 or seg.labels.max() >= p))):
        raise DataError(f"{d}: arrays disagree with {root / INFO} (names {seg.names.shape}, templates "
                        f"{seg.templates.shape}, features {seg.features.shape}, dim {dim}): the gallery is damaged")
    return seg


def _read_info(root: Path) -> dict[str, Any]:
    import json

    if not root.is_dir():
        raise DataError(f"gallery not found: {root}")
    f = root / INFO
    if not f.is_file():
        raise DataError(f"{root} is not a gallery (no {INFO}); make one with `centerloss gallery build`")
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{f}: unreadable gallery index ({e})") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DataError(f"{f}: not a {FORMAT} index (format {info.get('format') if isinstance(info, dict) else None!r})")
    for k in ("model_sha256", "feature_dim", "segments"):
        if k not in info:
            raise DataError(f"{f}: lacks {k!r}")
    return info


def _writer_lock(root: Path) -> contextlib.AbstractContextManager[None]:
    """Exclusive right to change ``root`` (released by the OS if the process dies)."""
    from ..utils.lock import folder_lock

    return folder_lock(root / LOCK, f"gallery {root} (another process is changing it)")


def _publish(root: Path, info: dict[str, Any]) -> None:
    """The commit: replace gallery.json atomically, then sweep what no longer belongs to it."""
    from ..utils.atomic import write_json

    write_json(root / INFO, info, indent=1)
    _sweep(root, info)


def _sweep(root: Path, info: dict[str, Any]) -> None:
    """Remove unreferenced segments and temporaries of interrupted writers (call only under the lock)."""
    live = {s["dir"] for s in info["segments"]}
    for p in root.iterdir():
        n = p.name
        if (n.startswith("seg-") and n not in live) or n.startswith((".tmp-seg-", ".gallery.tmp-")):
            _rmtree(p)


def _check_target(root: Path, overwrite: bool) -> None:
    if not root.is_dir():
        return
    is_gallery = (root / INFO).is_file()
    if is_gallery and not overwrite:
        raise DataError(f"{root} is already a gallery; use `centerloss gallery add` or pass --overwrite")
    if not is_gallery and any(p.name != LOCK for p in root.iterdir()):
        raise DataError(f"{root} is not empty and not a gallery; refusing to write into it")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------------------------- the gallery
class Gallery:
    """A gallery folder, loaded (templates and features memory-mapped). Build with :meth:`create` or
    :meth:`build`, open with :meth:`load`; :meth:`add` and :meth:`remove` change it atomically on disk."""

    def __init__(self, path: Path, info: dict[str, Any], segments: list[_Segment]) -> None:
        self.path = path
        self.info = info
        self.segments = segments
        self._names: np.ndarray | None = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Gallery:
        """Open gallery folder ``path``; DataError naming the file if it is missing or damaged."""
        root = Path(path)
        for attempt in range(3):
            info = _read_info(root)
            try:
                return cls(root, info, [_load_segment(root, e, int(info["feature_dim"])) for e in info["segments"]])
            except FileNotFoundError as e:  # a writer committed and swept while we read: read its version
                if attempt == 2:
                    raise DataError(f"{e.args[0] if e.args else root}: gallery segment missing; the gallery "
                                    "is damaged") from None
        raise AssertionError("unreachable")

    @property
    def names(self) -> list[str]:
        """Identity names, in template order."""
        return self._name_array().tolist()

    def _name_array(self) -> np.ndarray:
        if self._names is None:
            parts = [s.names for s in self.segments]
            self._names = np.concatenate(parts) if parts else np.zeros(0, dtype=np.str_)
        return self._names

    def __len__(self) -> int:
        return sum(len(s.names) for s in self.segments)

    def __contains__(self, name: object) -> bool:
        return any(name in s.names for s in self.segments)

    @property
    def n_images(self) -> int:
        return sum(len(s.labels) for s in self.segments)

    @property
    def model_sha256(self) -> str:
        return str(self.info["model_sha256"])

    @property
    def feature_dim(self) -> int:
        return int(self.info["feature_dim"])

    @property
    def threshold(self) -> float | None:
        t = self.info.get("threshold")
        return float(t) if isinstance(t, int | float) else None

    def templates(self) -> np.ndarray:
        """All templates (P, E) float32 in one array (reads every segment into memory)."""
        parts = [np.asarray(s.templates) for s in self.segments]
        return np.concatenate(parts) if parts else np.zeros((0, self.feature_dim), np.float32)

    def features_of(self, name: str) -> tuple[np.ndarray, list[str]]:
        """The enrolled per-photo features (n, E) of ``name`` and their photo paths."""
        for s in self.segments:
            hit = np.flatnonzero(s.names == name)
            if hit.size:
                rows = np.flatnonzero(s.labels == hit[0])
                return np.asarray(s.features[rows]), s.paths[rows].tolist()
        raise DataError(f"{name!r} is not in gallery {self.path}")

    def check_model(self, sha256: str, model: str = "") -> None:
        """Refuse features of other weights: DataError naming both hashes."""
        if sha256 != self.model_sha256:
            raise DataError(f"gallery {self.path} was built with model sha256 {self.model_sha256}, but "
                            f"{model or 'this model'} has sha256 {sha256}; use that model or rebuild the gallery")

    def search(self, queries: np.ndarray, k: int = 5, backend: str = "auto") -> tuple[np.ndarray, list[list[str]]]:
        """Exact top-``k`` identities by cosine: queries (Q, E) -> (scores (Q, k) float32, names Q x k)."""
        from ..eval.identification import search_topk
        from .recognizer import l2_normalize

        q = l2_normalize(np.atleast_2d(queries))  # (Q, E)
        if q.shape[1] != self.feature_dim:
            raise DataError(f"features have {q.shape[1]} dims but gallery {self.path} holds {self.feature_dim}-dim "
                            f"templates (combine mode {self.info.get('combine')!r})")
        if len(self) == 0:
            raise DataError(f"gallery {self.path} has no identities")
        if k < 1:
            raise DataError(f"top-k must be >= 1, got {k}")
        k = min(int(k), len(self))
        got_s, got_i, offset = [], [], 0
        for s in self.segments:
            if len(s.names):
                sc, ix = search_topk(q, s.templates, min(k, len(s.names)), backend=backend)  # (Q, k_s)
                got_s.append(sc)
                got_i.append(ix + offset)
            offset += len(s.names)
        sc, ix = np.concatenate(got_s, axis=1), np.concatenate(got_i, axis=1)
        order = np.lexsort((ix, -sc), axis=1)[:, :k]  # best score first; ties: lower index
        sc, ix = np.take_along_axis(sc, order, 1), np.take_along_axis(ix, order, 1)
        names = self._name_array()
        return sc, [names[row].tolist() for row in ix]

    # ------------------------------------------------------------------ writing
    @classmethod
    def create(cls, path: str | os.PathLike[str], enrollment: Enrollment, *, model_sha256: str,
               combine: str = "concat", input_size: Sequence[int] = (112, 96), model: str = "",
               threshold: float | None = None, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Gallery:
        """Write a new gallery at ``path`` from ``enrollment``. An existing gallery is replaced only with
        ``overwrite`` (atomically: until the new one is committed the old one stays); a folder that is not
        a gallery and not empty is refused."""
        root = Path(path)
        enrollment.validate()
        if not enrollment.names:
            raise DataError(f"nothing to enrol in gallery {root}: no photo gave a face")
        if root.exists() and not root.is_dir():
            raise DataError(f"{root} exists and is not a folder")
        _check_target(root, overwrite)  # before the lock file is made in someone else's folder
        with _writer_lock(root):
            _check_target(root, overwrite)  # again, now that no other writer can change it
            segs = [_write_segment(root, *part) for part in _split(enrollment, SEGMENT_IDENTITIES)]
            info = {"format": FORMAT, "model_sha256": model_sha256, "model": str(model), "combine": combine,
                    "input_size": [int(v) for v in input_size], "feature_dim": int(enrollment.features.shape[1]),
                    "threshold": threshold, "created": _now(), "updated": _now(), "generation": 1,
                    "identities": len(enrollment.names), "images": int(enrollment.features.shape[0]),
                    "template": "L2-normalised mean of the L2-normalised photo features",
                    "search": "exact inner product over the templates (faiss knn if installed, else torch)",
                    **(extra or {}), "segments": segs, "history": [_op("build", enrollment)]}
            _publish(root, info)
        return cls.load(root)

    @classmethod
    def build(cls, path: str | os.PathLike[str], recognizer: Any, people: Mapping[str, Sequence[Any]] | str | os.PathLike[str],
              *, aligned: bool = False, fit: str = "error", skip_bad: bool = False, overwrite: bool = False,
              threshold: float | None = None, workers: int = 0, progress: Any = None) -> Gallery:
        """Enrol ``people`` (``{name: [photos]}`` or a folder of identity folders) with ``recognizer``
        (bad photos: see :func:`enroll`)."""
        people = people_in(people) if isinstance(people, str | os.PathLike) else people
        e = enroll(recognizer, people, aligned=aligned, fit=fit, skip_bad=skip_bad, workers=workers, progress=progress)
        return cls.create(path, e, model_sha256=recognizer.model_sha256, combine=recognizer.combine,
                          input_size=recognizer.input_size, model=recognizer.model_path, threshold=threshold,
                          overwrite=overwrite, extra={"aligned_input": aligned,
                                                      "min_face_size": recognizer.min_face_size})

    def add(self, enrollment: Enrollment, *, model_sha256: str, replace: bool = False) -> Gallery:
        """Enrol more identities (one new segment); with ``replace`` a name already enrolled is re-enrolled,
        else it is refused. Returns the reloaded gallery (``self`` is left as it was)."""
        enrollment.validate()
        if not enrollment.names:
            raise DataError(f"nothing to add to gallery {self.path}: no photo gave a face")
        self.check_model(model_sha256)
        if enrollment.features.shape[0] and enrollment.features.shape[1] != self.feature_dim:
            raise DataError(f"features have {enrollment.features.shape[1]} dims, gallery {self.path} holds "
                            f"{self.feature_dim}")
        with _writer_lock(self.path):
            cur = Gallery.load(self.path)  # the latest commit, not our snapshot
            cur.check_model(model_sha256)
            clash = [n for n in enrollment.names if n in set(cur.names)]
            if clash and not replace:
                raise DataError(f"already in gallery {self.path}: {clash[:5]}{' ...' if len(clash) > 5 else ''}; "
                                "pass --replace to re-enrol them, or remove them first")
            kept = cur._without(set(clash))
            new = [_write_segment(self.path, *part) for part in _split(enrollment, SEGMENT_IDENTITIES)]
            _publish(self.path, cur._next_info(kept + new, _op("add", enrollment, replaced=clash)))
        return Gallery.load(self.path)

    def add_people(self, recognizer: Any, people: Mapping[str, Sequence[Any]], *, aligned: bool = False,
                   fit: str = "error", skip_bad: bool = False, replace: bool = False, workers: int = 0,
                   progress: Any = None) -> Gallery:
        """Embed and :meth:`add` ``{name: [photos]}`` with ``recognizer`` (which must be the gallery's model)."""
        self.check_model(recognizer.model_sha256, recognizer.model_path)
        e = enroll(recognizer, people, aligned=aligned, fit=fit, skip_bad=skip_bad, workers=workers, progress=progress)
        return self.add(e, model_sha256=recognizer.model_sha256, replace=replace)

    def remove(self, names: Sequence[str]) -> Gallery:
        """Remove identities (unknown names are refused, nothing changes). Returns the reloaded gallery."""
        with _writer_lock(self.path):
            cur = Gallery.load(self.path)
            have = set(cur.names)
            missing = [n for n in names if n not in have]
            if missing:
                raise DataError(f"not in gallery {self.path}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            kept = cur._without(set(names))
            op = {"op": "remove", "at": _now(), "removed": list(names)[:100], "n_removed": len(set(names))}
            _publish(self.path, cur._next_info(kept, op))
        return Gallery.load(self.path)

    def _without(self, drop: set[str]) -> list[dict[str, Any]]:
        """Segment entries with the identities ``drop`` gone: untouched segments are kept as they are, touched
        ones rewritten (call under the lock)."""
        out = []
        for s in self.segments:
            hit = np.isin(s.names, list(drop)) if drop else np.zeros(len(s.names), bool)
            if not hit.any():
                out.append(s.entry)
                continue
            keep_ids = np.flatnonzero(~hit)
            if keep_ids.size == 0:
                continue
            remap = np.full(len(s.names), -1, np.int64)
            remap[keep_ids] = np.arange(keep_ids.size)
            rows = np.flatnonzero(remap[s.labels] >= 0)
            out.append(_write_segment(self.path, s.names[keep_ids].tolist(), np.asarray(s.features[rows]),
                                      remap[s.labels[rows]], s.paths[rows].tolist(), np.asarray(s.templates[keep_ids])))
        return out

    def _next_info(self, segments: list[dict[str, Any]], op: dict[str, Any]) -> dict[str, Any]:
        info = dict(self.info)
        info.update(segments=segments, updated=_now(), generation=int(info.get("generation", 0)) + 1,
                    identities=sum(s["identities"] for s in segments), images=sum(s["images"] for s in segments),
                    history=(list(info.get("history", [])) + [op])[-_HISTORY:])
        return info


def _split(e: Enrollment, per: int) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, list[str]]]:
    """The enrolment in chunks of ``per`` identities: (names, features, local labels, paths)."""
    lab = np.asarray(e.labels, np.int64)
    for start in range(0, len(e.names), per):
        stop = min(start + per, len(e.names))
        rows = np.flatnonzero((lab >= start) & (lab < stop))
        yield e.names[start:stop], np.asarray(e.features, np.float32)[rows], lab[rows] - start, [e.paths[i] for i in rows]


def _op(kind: str, e: Enrollment, replaced: Sequence[str] = ()) -> dict[str, Any]:
    return {"op": kind, "at": _now(), "identities": len(e.names), "images": int(e.features.shape[0]),
            "names": e.names[:100], "replaced": list(replaced)[:100], "n_skipped": len(e.skipped),
            "skipped": e.skipped[:100]}
