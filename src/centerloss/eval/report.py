"""Write evaluation results to a folder: ``report.json`` (machine-readable), ``report.md`` (for people),
``scores.npz`` (per-pair pooled scores, labels, folds) and the plots.

All of a report's files are first written to temporary names beside their targets and renamed into place only
once every one of them is complete, ``report.json`` last (:func:`_write_files`). So a failure -- disk full, a
read-only folder, a plotting error -- leaves neither a new ``report.json`` nor a new ``roc.png`` that looks
complete, and no temporary file; a ``report.json`` present means its whole report was written. Without
matplotlib (the ``plots`` extra) the plots are skipped and the report says so.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_path, check_output_dir, os_error
from .identification import IdentificationResult
from .verification import VerificationResult

__all__ = ["write_identification_report", "write_verification_report"]


def _env() -> dict[str, Any]:
    return {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}


def _json_safe(obj: Any) -> Any:
    """Plain JSON: numpy scalars become Python numbers, and a non-finite float (a TAR threshold of -inf
    means "accept every pair") becomes the string "inf", "-inf" or "nan" instead of invalid JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _text(text: str) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        tmp.write_bytes(text.encode("utf-8"))

    return write


def _write_files(out: Path, writers: dict[str, Callable[[Path], None]]) -> None:
    """Run ``writers[name](tmp)`` for every file, then rename them all into ``out``; the first entry is renamed
    last. If any writer fails, every temporary is removed and no file of this report is renamed."""
    with ExitStack() as stack:
        tmps = {name: stack.enter_context(atomic_path(out / name)) for name in writers}
        for name, write in writers.items():
            try:
                write(tmps[name])
            except OSError as e:  # name the file that failed, not the last one to be cleaned up
                raise os_error(e, out / name) from e
    # ExitStack leaves in reverse order: the files after the first are renamed, then the first


def _plot_writers(result: VerificationResult, title: str) -> dict[str, Callable[[Path], None]]:
    from .plots import roc_figure, score_histogram_figure

    return {"roc.png": lambda tmp: roc_figure(result, labels=[title]).savefig(tmp),
            "scores.png": lambda tmp: score_histogram_figure(result).savefig(tmp)}


def _scores_writer(result: VerificationResult) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
            np.savez(f, scores=result.scores, issame=result.issame, fold_ids=result.fold_ids)

    return write


def write_verification_report(result: VerificationResult, out_dir: str | os.PathLike[str], title: str,
                              inputs: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                              plots: bool = True) -> dict[str, Any]:
    """Write report.json, report.md, scores.npz and (``plots``, with matplotlib) roc.png and scores.png, all or
    none (see the module docstring); returns the JSON dict. ``rep["plots"]`` lists the plots written, and
    ``rep["plots_skipped"]`` says why when they were asked for but matplotlib is missing."""
    from .plots import PLOTS_HINT, plots_available

    out = check_output_dir(out_dir)
    rep = {"title": title, **result.to_dict(), **(extra or {}), "inputs": inputs or {}, "env": _env()}
    drawn = plots and plots_available()
    rep["plots"] = ["roc.png", "scores.png"] if drawn else []
    if plots and not drawn:
        rep["plots_skipped"] = PLOTS_HINT
    rep = _json_safe(rep)
    writers = {"report.json": _text(json.dumps(rep, indent=2, allow_nan=False) + "\n"),
               "report.md": _text(_verification_md(rep, result, drawn)),
               "scores.npz": _scores_writer(result)}
    if drawn:
        writers.update(_plot_writers(result, title))
    _write_files(out, writers)
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
    elif rep.get("plots_skipped"):
        lines += ["", f"Plots skipped: {rep['plots_skipped']}."]
    if rep.get("inputs"):
        lines += ["", "Inputs:", ""] + [f"- {k}: `{v}`" for k, v in rep["inputs"].items()]
    lines += ["", f"Command: `{rep['env']['command']}`", ""]
    return "\n".join(lines)


def write_identification_report(result: IdentificationResult, out_dir: str | os.PathLike[str], title: str,
                                inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json and report.md, both or neither; returns the JSON dict."""
    out = check_output_dir(out_dir)
    rep = _json_safe({"title": title, **result.to_dict(), "inputs": inputs or {}, "env": _env()})
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
    _write_files(out, {"report.json": _text(json.dumps(rep, indent=2, allow_nan=False) + "\n"),
                       "report.md": _text("\n".join(lines))})
    return rep
