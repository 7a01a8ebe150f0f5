"""Evaluation: the paper's test protocols as pure array maths, fed by a separate image I/O layer.

Pure (numpy, no image I/O):
  :mod:`.metrics`         ROC, AUC, EER, TAR@FAR, accuracy-optimal threshold
  :mod:`.verification`    k-fold pair verification, mean/PCA fitted on training folds (:func:`evaluate_pairs`)
  :mod:`.identification`  1:N MegaFace-style search and metrics (:func:`evaluate_identification`)
  :mod:`.protocols`       pairs.txt, YTF video pairs and InsightFace .bin readers (parse only)
I/O:
  :mod:`.features`        model + crops -> features (flip-concat, batched, cached); features files
  :mod:`.report`, :mod:`.plots`, :mod:`.cli`

Typical use::

    from centerloss.eval import read_lfw_pairs, load_features, evaluate_pairs
    pairs = read_lfw_pairs("pairs.txt")
    table = load_features("feats.npz")
    fa, fb = pairs.gather(table.paths, table.features)
    result = evaluate_pairs(fa, fb, pairs.issame, pairs.fold_ids)
"""

from __future__ import annotations

from .._lazy import lazy_attributes

# Lazy attributes (PEP 562): `centerloss eval --help` imports this package and must not pay for numpy.
_WHERE = {
    "extract_bin_features": "features", "extract_features": "features", "load_features": "features",
    "save_features": "features", "evaluate_identification": "identification", "search_topk": "identification",
    "PairList": "protocols", "read_bin": "protocols", "read_lfw_pairs": "protocols",
    "read_video_pairs": "protocols", "video_features": "protocols", "VerificationResult": "verification",
    "evaluate_pairs": "verification", "stratified_subfolds": "verification",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())
