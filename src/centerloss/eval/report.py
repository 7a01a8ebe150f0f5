"""Write evaluation results to a folder: ``report.json`` (machine-readable), ``report.md`` (for people),
``scores.npz`` (per-pair pooled scores, labels, folds) and the plots."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .identification import IdentificationResult
from .verification import VerificationResult

__all__ = ["write_identification_report", "write_verification_report"]


def _env() -> dict[str, Any]:
    return {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_verification_report(result: VerificationResult, out_dir: str | os.PathLike[str], title: str,
                              inputs: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                              plots: bool = True) -> dict[str, Any]:
    """Write the report files; returns the JSON dict."""
    from .plots import plot_roc, plot_score_histograms

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = {"title": title, **result.to_dict(), **(extra or {}), "inputs": inputs or {}, "env": _env()}
    _atomic_text(out / "report.json", json.dumps(rep, indent=2, sort_keys=False) + "\n")
    np.savez(out / "scores.npz", scores=result.scores, issame=result.issame, fold_ids=result.fold_ids)
    if plots:
        plot_roc(result, out / "roc.png", labels=[title])
        plot_score_histograms(result, out / "scores.png")
    _atomic_text(out / "report.md", _verification_md(rep, result, plots))
    return rep


def _verification_md(rep: dict[str, Any], r: VerificationResult, plots: bool) -> str:
    lines = [
        f"# {rep['title']}",
        "",
        f"Protocol: {r.protocol}; {rep['n_pairs']} pairs ({rep['n_genuine']} matched, {rep['n_impostor']} "
        f"mismatched); mean {'subtracted' if r.center else 'not subtracted'}; "
        f"{'PCA to ' + str(r.pca_dim) + ' dims' if r.pca_dim else 'no PCA'}; cosine similarity.",
        "Mean, PCA and threshold of each fold are fitted on the other folds only.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy (mean ± std over folds) | {100 * r.accuracy_mean:.2f} ± {100 * r.accuracy_std:.2f} % |",
        f"| standard error of the mean | {100 * r.accuracy_sem:.2f} % |",
        f"| ROC AUC | {r.auc:.5f} |",
        f"| EER | {100 * r.eer:.2f} % (threshold {r.eer_threshold:.4f}) |",
    ]
    for far, tar in r.tar_at_far.items():
        note = " (resolution-limited: fewer impostors than 1/FAR)" if far < r.tar_resolution else ""
        lines.append(f"| TAR @ FAR {far:g} | {100 * tar:.2f} %{note} |")
    if "verify_threshold" in rep:
        v = rep["verify_threshold"]
        lines.append(f"| plain-cosine threshold for `centerloss verify` | {v['value']:.4f} "
                     f"(10-fold accuracy {100 * v['accuracy_mean']:.2f} %) |")
    lines += ["", "AUC, EER and TAR@FAR pool every pair's held-out score (each scored while its own fold was held "
              f"out). With {rep['n_impostor']} impostor pairs the smallest FAR step is {r.tar_resolution:.2g}.",
              "", "| fold | accuracy | threshold |", "|---|---|---|"]
    for f, a, t in zip(r.folds, r.fold_accuracies, r.fold_thresholds, strict=True):
        lines.append(f"| {int(f) + 1} | {100 * a:.2f} % | {t:.4f} |")
    if plots:
        lines += ["", "![ROC](roc.png)", "", "![scores](scores.png)"]
    if rep.get("inputs"):
        lines += ["", "Inputs:", ""] + [f"- {k}: `{v}`" for k, v in rep["inputs"].items()]
    lines += ["", f"Command: `{rep['env']['command']}`", ""]
    return "\n".join(lines)


def write_identification_report(result: IdentificationResult, out_dir: str | os.PathLike[str], title: str,
                                inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = {"title": title, **result.to_dict(), "inputs": inputs or {}, "env": _env()}
    _atomic_text(out / "report.json", json.dumps(rep, indent=2) + "\n")
    lines = [
        f"# {title}", "",
        f"{result.n_probes} probes, {result.n_gallery} gallery images, {result.n_distractors} distractors; "
        f"{result.n_genuine} genuine trials, {result.n_impostor} impostor pairs; search backend {result.backend}.",
        "", "| metric | value |", "|---|---|",
        f"| rank-1 (MegaFace: mate vs all distractors) | {100 * result.rank1:.2f} % |",
        f"| closed-set rank-1 (nearest of gallery + distractors) | {100 * result.closed_set_rank1:.2f} % |",
    ]
    lines += [f"| CMC rank {k} | {100 * v:.2f} % |" for k, v in result.cmc.items()]
    lines += [f"| TAR @ FAR {f:g} | {100 * v:.2f} % |" for f, v in result.tar_at_far.items()]
    lines += ["", "Timing (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()), ""]
    _atomic_text(out / "report.md", "\n".join(lines))
    return rep
