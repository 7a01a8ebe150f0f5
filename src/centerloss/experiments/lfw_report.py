"""The LFW experiment's report: ``report.json`` (the record), ``report.md`` (rendered from it; ``centerloss
lfw-experiment --render report.json`` redoes it) and the plots (ROC, and the Fig. 5 analogues for sweeps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import write_json, write_text
from ..utils.machine import machine_info


def _fold_acc(v: dict[str, Any]) -> np.ndarray:
    return np.asarray(v["fold_accuracies"], dtype=float)


def summarize_run(all_seeds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds, and the spread over every (fold, seed) accuracy: the error bar of Fig. 5. Seeds whose
    training diverged are listed, not averaged."""
    seeds = {k: v for k, v in all_seeds.items() if v.get("verification")}
    failed = {str(k): v["train"].get("failed") for k, v in all_seeds.items() if not v.get("verification")}
    if not seeds:
        return {"seeds": [], "failed_seeds": failed}
    accs = np.concatenate([_fold_acc(s["verification"]) for s in seeds.values()])
    per_seed = [s["verification"]["accuracy_mean"] for s in seeds.values()]
    mean = lambda k: float(np.mean([s["verification"][k] for s in seeds.values()]))  # noqa: E731
    fars = next(iter(seeds.values()))["verification"]["tar_at_far"]
    train = [s["train"] for s in seeds.values()]
    return {"seeds": sorted(seeds), "failed_seeds": failed, "accuracy_mean": float(np.mean(per_seed)),
            "accuracy_std_folds_seeds": float(accs.std(ddof=1)) if accs.size > 1 else 0.0,
            "accuracy_per_seed": [float(a) for a in per_seed], "auc": mean("auc"), "eer": mean("eer"),
            "tar_at_far": {f: float(np.mean([s["verification"]["tar_at_far"][f] for s in seeds.values()])) for f in fars},
            "train_min": float(np.mean([t.get("seconds_total", t.get("wall_s", 0.0)) for t in train]) / 60),
            "epochs": float(train[0].get("epochs", 0.0)), "images_per_s": float(np.mean([t.get("images_per_s_total",
                                                                                             0.0) for t in train]))}


def paired(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """Run ``a`` minus run ``b`` fold by fold, pooled over the seeds both have (the same folds and seeds)."""
    common = sorted(s for s in set(a) & set(b) if a[s].get("verification") and b[s].get("verification"))
    if not common:
        return None
    d = np.concatenate([_fold_acc(a[s]["verification"]) - _fold_acc(b[s]["verification"]) for s in common])
    return {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if d.size > 1 else 0.0, "n": int(d.size),
            "seeds": common, "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum()),
            "per_seed_mean": {str(s): float((_fold_acc(a[s]["verification"]) - _fold_acc(b[s]["verification"])).mean())
                              for s in common}}


def _by_run(results: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        out.setdefault(r["name"], {})[r["seed"]] = {"verification": r["verification"], "train": r["train"],
                                                    "shared_with": r.get("shared_with")}
    return out


def write_report(cfg, results: list[dict[str, Any]], info: dict[str, Any], out: Path, preset: str) -> dict[str, Any]:
    from dataclasses import asdict

    runs = _by_run(results)
    specs = cfg.run_specs()
    base = info.get("chosen", {}).get(cfg.baseline, cfg.baseline)
    report = {
        "preset": preset, "config": asdict(cfg), **info, "baseline": base,
        "runs": {n: {"label": specs[n].label or n, "preset": specs[n].preset, "set": specs[n].set,
                     "summary": summarize_run(runs[n]), "seeds": {str(s): v for s, v in sorted(runs[n].items())}}
                 for n in cfg.run_names() if n in runs},
        "paired_vs_baseline": {n: paired(runs[n], runs[base]) for n in runs if base in runs and n != base},
        "groups": {g: {"members": m, "chosen": info.get("chosen", {}).get(g)} for g, m in cfg.select.items()},
        "machine": machine_info(),
    }
    report["figures"] = _plots(cfg, report, out)
    write_text(out / "report.md", render_markdown(report))
    write_json(out / "report.json", report)  # last: its presence means the report is complete
    return report


# ---------------------------------------------------------------- plots


def _plots(cfg, report: dict[str, Any], out: Path) -> dict[str, str]:
    from ..eval.plots import PLOTS_HINT, plots_available

    if not plots_available():
        print(f"plots skipped: {PLOTS_HINT}")
        return {}
    figs = {}
    wanted = cfg.roc or list(report.get("chosen", {}).values()) or list(cfg.runs)
    main = [n for n in wanted if report["runs"].get(n, {}).get("summary", {}).get("seeds", [None])[:1] == [cfg.seeds[0]]]
    if main:
        _roc(cfg, main, out)
        figs["roc"] = "roc.png"
    for g, spec in cfg.grids.items():
        if len(spec.values) > 1:
            _sweep_plot(report, g, spec, out / f"fig5_{g}.png")
            figs[f"fig5_{g}"] = f"fig5_{g}.png"
    return figs


def _roc(cfg, names: list[str], out: Path) -> None:
    """ROC of the named runs (first seed), re-scored from their saved features."""
    from ..eval.features import load_features
    from ..eval.plots import plot_roc
    from ..eval.verification import evaluate_pairs
    from .lfw import _folders, _heldout

    test, _ = _heldout(cfg)
    folders, seed, results = _folders(cfg, out), cfg.seeds[0], []
    for n in names:
        t = load_features(out / "runs" / folders[n] / f"seed{seed}" / "features.npz")
        fa, fb = test.gather(t.paths, t.features)
        results.append(evaluate_pairs(fa, fb, test.issame, test.fold_ids, cfg.pca_dim, seed=seed, fars=cfg.fars,
                                      subfolds=cfg.subfolds if len(cfg.holdout_folds) == 1 else None))
    plot_roc(results, out / "roc.png", labels=[cfg.run_specs()[n].label or n for n in names],
             title=f"LFW folds {cfg.holdout_folds}, identities unseen in training (seed {seed})")


def _sweep_plot(report: dict[str, Any], grid: str, spec, path: Path) -> None:
    """Fig. 5 analogue: held-out accuracy against one hyper-parameter (log x), error bars = std over folds and
    seeds, with the baseline (softmax only) as a horizontal band."""
    from matplotlib.figure import Figure

    from ..eval.plots import save_figure

    xs, ys, es = [], [], []
    for v in spec.values:
        s = report["runs"].get(f"{grid}={v:g}", {}).get("summary")
        if s and s["seeds"]:
            xs.append(v)
            ys.append(100 * s["accuracy_mean"])
            es.append(100 * s["accuracy_std_folds_seeds"])
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(xs, ys, yerr=es, fmt="o-", capsize=3, color="tab:blue", label=f"softmax + center, {grid} varies")
    b = report["runs"].get(report["baseline"], {}).get("summary")
    if b and b["seeds"]:
        m, e = 100 * b["accuracy_mean"], 100 * b["accuracy_std_folds_seeds"]
        ax.axhline(m, color="tab:red", ls="--", label=f"softmax only ({m:.2f}%)")
        ax.axhspan(m - e, m + e, color="tab:red", alpha=0.1)
    ax.set_xscale("log")
    ax.set_xlabel(f"{grid} ({spec.key}; fixed: {spec.set or 'preset values'})")
    ax.set_ylabel("held-out LFW accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- markdown


def _row(name: str, r: dict[str, Any], fars: list[str], d: dict[str, Any] | None, bold: bool = False) -> str:
    s = r["summary"]
    label = f"**{r['label']}**" if bold else r["label"]
    if not s["seeds"]:
        return f"| {label} | diverged: {'; '.join(sorted(set(s['failed_seeds'].values())))[:120]} |"
    tars = " | ".join(f"{100 * s['tar_at_far'][f]:.1f}%" for f in fars)
    diff = f"{100 * d['mean']:+.2f} +- {100 * d['std']:.2f} ({d['wins']}/{d['ties']}/{d['losses']})" if d else "-"
    seeds = ", ".join(f"{100 * a:.2f}" for a in s["accuracy_per_seed"])
    return (f"| {label} | {100 * s['accuracy_mean']:.2f} +- {100 * s['accuracy_std_folds_seeds']:.2f}% | {seeds} | "
            f"{s['auc']:.4f} | {100 * s['eer']:.2f}% | {tars} | {diff} | {s['train_min']:.1f} min |")


def render_markdown(rep: dict[str, Any]) -> str:
    """The human summary, from ``report.json`` alone."""
    split, ho, cfg = rep["train_split"], rep["heldout"], rep["config"]
    fars = list(next(r for r in rep["runs"].values() if r["summary"]["seeds"])["summary"]["tar_at_far"])
    unit = "sub-fold" if len(ho["folds"]) == 1 else "fold"
    base = rep["runs"].get(rep["baseline"], {}).get("label", rep["baseline"])
    chosen = set(rep.get("chosen", {}).values())  # a select group's choice, bold
    lines = [f"# LFW experiment (preset `{rep['preset']}`)", "",
             f"Held out: LFW fold(s) {ho['folds']}, {ho['pairs']} pairs of {ho['identities']} identities, none of whom "
             f"appear in training. Training: {split['identities']} other LFW identities with >= {cfg['min_images']} "
             f"detected crops, {split['images']} crops. Seeds {cfg['seeds']}.", "",
             f"Accuracy is the mean over seeds of the {unit}-mean; +- is the std over every ({unit}, seed) accuracy. "
             f"The paired difference against {base} is taken {unit} by {unit} on the same seeds "
             "(mean +- std, wins/ties/losses).", "",
             "| run | accuracy | per seed | AUC | EER | " + " | ".join(f"TAR@FAR={f}" for f in fars)
             + f" | vs {base} | train time |", "|---|---:|---|---:|---:|" + "---:|" * len(fars) + "---|---:|"]
    for name, r in rep["runs"].items():
        lines.append(_row(name, r, fars, rep["paired_vs_baseline"].get(name), name in chosen))
    if rep.get("groups"):
        lines += ["", "Tuning: each group's members ran on the first seed; the best of each (in bold above) was "
                  "rerun on the other seeds, which measure it without the selection's optimism.", "",
                  "| group | members | chosen |", "|---|---|---|"]
        for g, v in rep["groups"].items():
            lines.append(f"| {g} | {', '.join(v['members'])} | {v['chosen']} |")
    reused = [f"{r['label']} seed {k} ({v['train']['reused_from']})" for r in rep["runs"].values()
              for k, v in r["seeds"].items() if v.get("train", {}).get("reused_from")]
    if reused:
        lines += ["", "Reused, not retrained (the same seed, train config and training files as a finished training of "
                  "an earlier experiment; evaluated again here): " + "; ".join(reused) + "."]
    for key, fig in rep.get("figures", {}).items():
        lines += ["", f"![{key}]({fig})"]
    m = rep["machine"]
    lines += ["", f"Machine: {m['cpu']} ({m['cpu_count']} CPUs, shared), torch {m['torch']}; this invocation took "
              f"{rep['total_s'] / 60:.1f} min (training still to do + evaluation)."]
    return "\n".join(lines) + "\n"

