"""The MNIST experiment's report: ``report.json`` (the record), ``report.md`` (rendered from it) and figures."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import write_json, write_text
from ..utils.machine import machine_info


def _label(r: dict[str, Any]) -> str:
    name = "softmax" if r["lam"] == 0 else f"lambda={r['lam']:g}"
    return name if r["update"] == "paper" else f"{name} ({r['update']})"


def _figures(cfg, runs: list[dict[str, Any]], out_dir: Path, data) -> dict[str, str]:
    """Fig. 2 / Fig. 3 analogues, compactness vs lambda and center trajectories; {} without matplotlib."""
    try:
        from ..viz import features2d as viz
    except ImportError:
        print("note: matplotlib is not installed (pip install 'centerloss[plots]'): figures skipped")
        return {}
    train, test = data
    y_tr, y_te = train.labels[: cfg.train_eval_images].numpy(), test.labels.numpy()
    figs: dict[str, str] = {}
    soft = [r for r in runs if r["result"].lam == 0 and r["result"].update == "paper"]
    if soft:
        viz.plot_softmax_features((soft[0]["f_train"], y_tr), (soft[0]["f_test"], y_te), out_dir / "fig2_softmax.png",
                                  cfg.plot_points)
        figs["fig2"] = "fig2_softmax.png"
    panels = [{"feats": r["f_test"], "labels": y_te, "centers": r["centers"] if r["result"].lam > 0 else None,
               "title": f"{_label(asdict(r['result']))}: acc {r['result'].test_accuracy * 100:.2f}%, "
                        f"compact. {r['result'].compactness:.3f}"} for r in runs]
    viz.plot_lambda_panels(panels, out_dir / "fig3_lambdas.png", cfg.plot_points, cols=len(cfg.lambdas))
    figs["fig3"] = "fig3_lambdas.png"
    paper = [r["result"] for r in runs if r["result"].update == "paper"]
    if len(paper) > 1:
        viz.plot_compactness([r.lam for r in paper], [r.compactness for r in paper], [r.test_accuracy for r in paper],
                             out_dir / "compactness.png")
        figs["compactness"] = "compactness.png"
    traj = [(f"{_label(asdict(r['result']))}", r["trajectory"]) for r in runs if r["trajectory"]["centers"] is not None]
    if traj:
        viz.plot_center_trajectories(traj, out_dir / "center_trajectories.png", cols=len(cfg.lambdas))
        figs["trajectories"] = "center_trajectories.png"
    return figs


def _trajectory_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run: how far the centers travelled in total, and how far they still moved in the last 10% of steps
    (scale-free: divided by the mean distance between the final centers)."""
    out = {}
    for r in runs:
        t = r["trajectory"]
        if t["centers"] is None or len(t["steps"]) < 2:
            continue
        c = t["centers"]  # (T, 10, d)
        step = np.linalg.norm(np.diff(c, axis=0), axis=2)  # (T-1, 10)
        final = c[-1]
        spread = np.linalg.norm(final[:, None] - final[None], axis=2)[np.triu_indices(final.shape[0], 1)].mean()
        tail = max(1, len(step) // 10)
        out[run_key(r)] = {"path_length_mean": float(step.sum(0).mean()),
                           "last10pct_motion_mean": float(step[-tail:].sum(0).mean()),
                           "final_center_spread": float(spread),
                           "last10pct_motion_rel": float(step[-tail:].sum(0).mean() / max(spread, 1e-12))}
    return out


def run_key(r: dict[str, Any]) -> str:
    res = r["result"]
    return f"{res.lam:g}/{res.update}"


def summarize(results: list[Any]) -> dict[str, Any]:
    """For the paper update: the compactness fall from softmax to the tightest lambda, and monotonicity."""
    paper = [r for r in results if r.update == "paper"]
    soft = [r for r in paper if r.lam == 0]
    joint = sorted((r for r in paper if r.lam > 0), key=lambda r: r.lam)
    out: dict[str, Any] = {}
    if joint:
        best = max(joint, key=lambda r: r.test_accuracy)
        tightest = min(joint, key=lambda r: r.compactness)
        c = [r.compactness for r in joint]
        out.update(best_lambda_by_accuracy=best.lam, best_joint_accuracy=best.test_accuracy,
                   tightest_lambda=tightest.lam, compactness_non_increasing_in_lambda=all(b <= a for a, b in zip(c, c[1:])))
        if soft:
            out["compactness_fall_softmax_to_tightest"] = soft[0].compactness / tightest.compactness
    if soft:
        out["softmax_accuracy"] = soft[0].test_accuracy
    return out


def _reused(out_dir: Path, results: list[Any]) -> dict[str, str]:
    """``{run name: the folder its finished run was copied from}`` for the runs ``reuse`` supplied."""
    import json

    from .mnist import run_name

    out = {}
    for r in results:
        marker = out_dir / run_name(r.lam, r.update) / "reused_from.json"
        if marker.is_file():
            out[run_name(r.lam, r.update)] = json.loads(marker.read_text(encoding="utf-8"))["source"]
    return out


def write_report(cfg, runs: list[dict[str, Any]], out_dir: Path, preset: str, data) -> dict[str, Any]:
    from ..utils.device import resolve_device
    from .mnist import describe

    results = [r["result"] for r in runs]
    train = describe(cfg)
    report = {"experiment": "mnist-2d", "preset": preset, "config": asdict(cfg), "train": train,
              "machine": machine_info(resolve_device(train["runtime"]["device"])),
              "runs": [asdict(r) for r in results], "figures": _figures(cfg, runs, out_dir, data),
              "summary": summarize(results), "trajectories": _trajectory_stats(runs),
              "reused": _reused(out_dir, results)}
    write_text(out_dir / "report.md", render_markdown(report))
    write_json(out_dir / "report.json", report)  # last: its presence means the report is complete
    return report


def render_markdown(report: dict[str, Any]) -> str:
    t, m = report["train"], report["machine"]
    sch, opt = t["schedule"], t["optimizer"]
    lines = [
        f"# MNIST 2-D features: softmax vs softmax + center loss ({report['preset']} preset)", "",
        f"LeNets++ (2-D feature), {sch['max_steps']} iterations of batch {t['data']['batch_size']}, lr {opt['lr']} "
        f"(x{sch['kwargs'].get('gamma')} at {sch['kwargs'].get('milestones')}), momentum "
        f"{opt['kwargs'].get('momentum')}, weight decay {opt['weight_decay']}, alpha {t['aux']['kwargs'].get('alpha')}, "
        f"seed {t['runtime']['seed']}. Machine: {m['cpu']} ({m['cpu_count']} CPUs), torch {m['torch']}, "
        f"{m['torch_threads']} threads, load average at the end {m['load_average']}.", "",
        "Compactness = mean distance of a test feature to its class mean / mean distance between class means "
        "(scale-free; lower is tighter).", "",
        "| lambda | update | test acc. | intra (mean) | inter (mean) | inter (min) | compactness | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lam = "0 (softmax)" if r["lam"] == 0 else f"{r['lam']:g}"
        lines.append(f"| {lam} | {r['update']} | {r['test_accuracy'] * 100:.2f}% | {r['intra_mean']:.4g} | "
                     f"{r['inter_mean']:.4g} | {r['inter_min']:.4g} | {r['compactness']:.4f} | {r['seconds']:.0f} s |")
    s = report["summary"]
    lines.append("")
    if "compactness_fall_softmax_to_tightest" in s:
        lines += [f"Compactness falls {s['compactness_fall_softmax_to_tightest']:.1f}x from softmax alone to lambda = "
                  f"{s['tightest_lambda']:g}. Non-increasing in lambda: "
                  f"{'yes' if s['compactness_non_increasing_in_lambda'] else 'no (see table)'}.", ""]
    if report["trajectories"]:
        lines += ["Center motion (mean over the 10 centers): total path length, and motion over the last 10% of "
                  "the steps relative to the spread of the final centers.", "",
                  "| run | path length | last 10% motion | relative |", "|---|---|---|---|"]
        for k, v in report["trajectories"].items():
            lines.append(f"| {k} | {v['path_length_mean']:.4g} | {v['last10pct_motion_mean']:.4g} | "
                         f"{v['last10pct_motion_rel']:.4f} |")
        lines.append("")
    if report.get("reused"):
        lines += ["Runs copied from earlier finished runs of the same setup (`reuse`), not trained here: "
                  + ", ".join(f"{k} from `{v}`" for k, v in report["reused"].items()) + ".", ""]
    f = report["figures"]
    for key, title in (("fig2", "Softmax only (Fig. 2 analogue): (a) training set, (b) test set"),
                       ("fig3", "Joint supervision across lambda (Fig. 3 analogue, test set; white dots: centers)"),
                       ("compactness", "Compactness and accuracy vs lambda"),
                       ("trajectories", "Center trajectories (start: open circle, end: dot)")):
        if key in f:
            lines += [f"## {title}", "", f"![{key}]({f[key]})", ""]
    return "\n".join(lines)
