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

from .features import extract_bin_features, extract_features, load_features, save_features
from .identification import evaluate_identification, search_topk
from .protocols import PairList, read_bin, read_lfw_pairs, read_video_pairs, video_features
from .verification import VerificationResult, evaluate_pairs, stratified_subfolds

__all__ = [
    "PairList",
    "VerificationResult",
    "evaluate_identification",
    "evaluate_pairs",
    "extract_bin_features",
    "extract_features",
    "load_features",
    "read_bin",
    "read_lfw_pairs",
    "read_video_pairs",
    "save_features",
    "search_topk",
    "stratified_subfolds",
    "video_features",
]
