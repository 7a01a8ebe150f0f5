"""1:N identification, MegaFace-style (docs/METHOD.md; paper Sec. 5-6): pure array maths, no image I/O.

Inputs are features of *probes* and of a labelled *gallery* (the probes' mates), plus unlabelled
*distractors* (up to a million or more; a ``np.memmap`` works and is read in chunks). Scores are cosine
similarities (rows are L2-normalised unless ``normalize=False``).

* **Genuine trials** are the (probe, gallery item) pairs with the same label -- with ``same_set=True`` the
  gallery is the probe set itself and a probe is never its own mate (MegaFace Challenge 1 with FaceScrub).
* **Rank-1 (MegaFace protocol)**: a genuine trial succeeds when the mate scores *strictly* higher than every
  distractor (each mate is enrolled alone among the distractors; ties count against the probe). ``cmc[r]``:
  fewer than ``r`` distractors score at least as high as the mate.
* **Closed-set rank-1**: the single nearest neighbour of the probe in gallery + distractors has its label.
* **TAR@FAR** (verification): genuine trials against impostor pairs = every (probe, distractor) pair, with
  the rule of :mod:`.metrics` (``k = floor(FAR * n_impostor)`` false accepts allowed). Only each probe's top
  ``k + 1`` distractor scores are needed, because the global top ``k + 1`` impostor scores are among them.

The exact inner-product top-k search uses faiss (``pip install centerloss[faiss]``) when it can be imported,
otherwise torch matmul + topk over chunks of the distractors; memory stays near
``chunk_rows x n_probes`` scores plus the top-k lists.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from . import metrics

__all__ = ["IdentificationResult", "available_backends", "evaluate_identification", "search_topk"]

_MAX_TOPK_ENTRIES = 50_000_000  # n_probes x k kept in memory by the search (600 MB of scores + ids)


def available_backends() -> list[str]:
    """Search backends usable here, preferred first."""
    out = []
    try:
        import faiss  # noqa: F401

        out.append("faiss")
    except ImportError:
        pass
    return [*out, "torch"]


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _merge(s0: np.ndarray, i0: np.ndarray, s1: np.ndarray, i1: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k largest of two (Q, *) candidate lists (unsorted)."""
    s = np.concatenate([s0, s1], axis=1)
    i = np.concatenate([i0, i1], axis=1)
    if s.shape[1] <= k:
        return s, i
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]  # (Q, k)
    return np.take_along_axis(s, part, 1), np.take_along_axis(i, part, 1)


def search_topk(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    *,
    backend: str = "auto",
    chunk_rows: int | None = None,
    normalize: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of each query against the database rows.

    Args:
        queries: (Q, D) float32.
        database: (N, D), read ``chunk_rows`` rows at a time (works on a ``np.memmap``).
        k: neighbours per query (clipped to N).
        backend: ``"faiss"``, ``"torch"`` or ``"auto"`` (faiss if importable).
        chunk_rows: database rows per block (default: about 64M scores per block).
        normalize: L2-normalise each database block (a copy) before scoring.

    Returns:
        ``(scores (Q, k) float32, indices (Q, k) int64)``, each row sorted by decreasing score.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or database.ndim != 2 or q.shape[1] != database.shape[1]:
        raise DataError(f"queries (Q, D) and database (N, D) must share D; got {q.shape} and {database.shape}")
    n = database.shape[0]
    k = min(int(k), n)
    if k < 1:
        raise DataError("k must be >= 1 and the database must not be empty")
    if backend == "auto":
        backend = available_backends()[0]
    if backend not in ("faiss", "torch"):
        raise ConfigError(f"unknown search backend {backend!r}; choose faiss, torch or auto")
    if backend == "faiss" and "faiss" not in available_backends():
        raise ConfigError("search backend faiss is not installed: install centerloss[faiss], or use the torch "
                          "backend (--backend torch or auto)")
    if chunk_rows is None:
        chunk_rows = max(4 * k, min(n, (1 << 26) // max(1, q.shape[0])))
    from tqdm import tqdm

    best_s = np.empty((q.shape[0], 0), np.float32)
    best_i = np.empty((q.shape[0], 0), np.int64)
    if backend == "faiss":
        import faiss

        for start in tqdm(range(0, n, chunk_rows), desc="search (faiss)", unit="blk", disable=not progress):
            block = np.ascontiguousarray(database[start:start + chunk_rows], dtype=np.float32)  # (C, D)
            if normalize:
                block = _l2n(block)
            s, i = faiss.knn(q, block, min(k, block.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
            best_s, best_i = _merge(best_s, best_i, s, i.astype(np.int64) + start, k)
    else:
        import torch

        tq = torch.from_numpy(q)
        for start in tqdm(range(0, n, chunk_rows), desc="search (torch)", unit="blk", disable=not progress):
            block = np.asarray(database[start:start + chunk_rows], dtype=np.float32)
            if normalize:
                block = _l2n(block)
            elif not block.flags.writeable or not block.flags.c_contiguous:
                block = np.ascontiguousarray(block).copy()
            scores = tq @ torch.from_numpy(block).T  # (Q, C)
            s, i = torch.topk(scores, min(k, block.shape[0]), dim=1)
            best_s, best_i = _merge(best_s, best_i, s.numpy(), i.numpy().astype(np.int64) + start, k)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


@dataclass
class IdentificationResult:
    rank1: float  # MegaFace protocol (mate vs all distractors)
    cmc: dict[int, float]
    closed_set_rank1: float  # nearest neighbour over gallery + distractors
    tar_at_far: dict[float, float]
    tar_threshold: dict[float, float]
    n_probes: int
    n_gallery: int
    n_distractors: int
    n_genuine: int
    n_impostor: int
    backend: str
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank1": self.rank1,
            "cmc": {str(r): v for r, v in self.cmc.items()},
            "closed_set_rank1": self.closed_set_rank1,
            "tar_at_far": {f"{f:g}": v for f, v in self.tar_at_far.items()},
            "tar_threshold": {f"{f:g}": v for f, v in self.tar_threshold.items()},
            "n_probes": self.n_probes,
            "n_gallery": self.n_gallery,
            "n_distractors": self.n_distractors,
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "backend": self.backend,
            "seconds": self.seconds,
        }


def evaluate_identification(
    probes: np.ndarray,
    probe_labels: np.ndarray | Sequence[int],
    gallery: np.ndarray,
    gallery_labels: np.ndarray | Sequence[int],
    distractors: np.ndarray,
    *,
    fars: Sequence[float] = (1e-6,),
    ranks: Sequence[int] = (1, 5, 10),
    same_set: bool = False,
    normalize: bool = True,
    backend: str = "auto",
    chunk_rows: int | None = None,
    progress: bool = True,
) -> IdentificationResult:
    """Rank-1 / CMC identification and TAR@FAR against distractors (definitions in the module docstring).

    Args:
        probes: (Q, D) probe features; probe_labels: (Q,) identity labels.
        gallery: (G, D) enrolled features; gallery_labels: (G,). With ``same_set=True`` pass the probes again.
        distractors: (N, D) features of people in neither set (may be a ``np.memmap``).
        fars: FARs for TAR; ranks: CMC ranks.
        normalize: L2-normalise all rows (cosine scores).
        backend, chunk_rows: see :func:`search_topk`.
    """
    t0 = time.perf_counter()
    pl = np.asarray(probe_labels)
    gl = np.asarray(gallery_labels)
    if probes.ndim != 2 or gallery.ndim != 2 or distractors.ndim != 2:
        raise DataError("probes, gallery and distractors must be 2-D (rows are features)")
    if not probes.shape[1] == gallery.shape[1] == distractors.shape[1]:
        raise DataError(f"feature sizes differ: probes {probes.shape}, gallery {gallery.shape}, "
                        f"distractors {distractors.shape}")
    if pl.shape != (probes.shape[0],) or gl.shape != (gallery.shape[0],):
        raise DataError("probe_labels / gallery_labels must have one label per row")
    if same_set and gallery.shape != probes.shape:
        raise DataError("same_set=True expects the gallery to be the probe set itself")
    if distractors.shape[0] == 0:
        raise DataError("no distractors")
    ranks = sorted({int(r) for r in ranks})
    if not ranks or ranks[0] < 1:
        raise DataError("ranks must be >= 1")
    q, n_d = probes.shape[0], distractors.shape[0]
    p = _l2n(probes) if normalize else np.asarray(probes, np.float32)
    g = _l2n(gallery) if normalize else np.asarray(gallery, np.float32)

    sg = p @ g.T  # (Q, G) probe-vs-gallery scores
    mate = pl[:, None] == gl[None, :]  # (Q, G)
    if same_set:
        np.fill_diagonal(mate, False)
        np.fill_diagonal(sg, -np.inf)  # a probe is not its own neighbour
    gen_q, gen_g = np.nonzero(mate)
    if gen_q.size == 0:
        raise DataError("no genuine trials: no probe has a mate in the gallery")
    genuine = sg[gen_q, gen_g].astype(np.float64)  # (T,)

    n_imp = q * n_d
    k_far = [int(np.floor(f * n_imp * (1 + 1e-12))) for f in fars]
    k = min(n_d, max([ranks[-1], *[kf + 1 for kf in k_far]]))
    if q * k > _MAX_TOPK_ENTRIES:
        raise DataError(f"FAR {max(fars):g} over {n_imp} impostor pairs needs the top {k} distractors of each of "
                        f"{q} probes ({q * k} scores); use a lower FAR or fewer probes per call")
    if backend == "auto":
        backend = available_backends()[0]
    t1 = time.perf_counter()
    top_s, _ = search_topk(p, distractors, k, backend=backend, chunk_rows=chunk_rows, normalize=normalize,
                           progress=progress)  # (Q, k) descending
    t2 = time.perf_counter()

    # rank of each genuine trial among the distractors: #distractors scoring >= the mate (exact below k)
    ahead = (top_s[gen_q].astype(np.float64) >= genuine[:, None]).sum(1)  # (T,)
    cmc = {r: float(np.mean(ahead < r)) for r in ranks}
    best_g = np.argmax(sg, axis=1)  # (Q,)
    closed = (sg[np.arange(q), best_g] > top_s[:, 0]) & (gl[best_g] == pl)
    closed = closed[mate.any(1)]  # only probes that have a mate can be identified
    neg_desc = np.sort(top_s.ravel().astype(np.float64))[::-1]
    pos_asc = np.sort(genuine)
    tars = [metrics.tar_from_sorted(pos_asc, neg_desc, f, n_impostor=n_imp) for f in fars]
    t3 = time.perf_counter()
    return IdentificationResult(
        rank1=float(np.mean(ahead < 1)),
        cmc=cmc,
        closed_set_rank1=float(np.mean(closed)),
        tar_at_far={t.far: t.tar for t in tars},
        tar_threshold={t.far: t.threshold for t in tars},
        n_probes=q,
        n_gallery=gallery.shape[0],
        n_distractors=n_d,
        n_genuine=int(gen_q.size),
        n_impostor=n_imp,
        backend=backend,
        seconds={"prepare": t1 - t0, "search": t2 - t1, "score": t3 - t2},
    )
