"""Regenerate every results table in README.md from the committed report and benchmark JSON files.

Tables live between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers; nothing between them is
typed by hand. ``python docs/make_readme.py`` rewrites them, ``--check`` exits 1 if README.md is stale
(``tests/test_readme.py`` runs it). A table whose source has not been produced yet says so, with the command
that produces it, instead of showing any figure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
BENCH = ROOT / "benchmarks" / "results"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _pct(x: float, nd: int = 2) -> str:
    return f"{100 * x:.{nd}f}%"


# ---------------------------------------------------------------- MNIST


def mnist_table(rep: dict, with_update: bool = False) -> str:
    head = "| lambda | " + ("update | " if with_update else "") + "test accuracy | intra (mean) | inter (mean) | compactness | train time |"
    rows = [head, "|---|" + ("---|" if with_update else "") + "---:|---:|---:|---:|---:|"]
    best = max((r for r in rep["runs"] if r["lam"] > 0), key=lambda r: r["test_accuracy"], default=None)
    for r in rep["runs"]:
        lam = "0 (softmax only)" if r["lam"] == 0 else f"{r['lam']:g}"
        acc = _pct(r["test_accuracy"])
        acc = f"**{acc}**" if r is best and not with_update else acc
        upd = f"{r['update']} | " if with_update else ""
        rows.append(f"| {lam} | {upd}{acc} | {r['intra_mean']:.4g} | {r['inter_mean']:.4g} | {r['compactness']:.3f} | "
                    f"{r['seconds'] / 60:.1f} min |")
    s = rep.get("summary", {})
    if "compactness_fall_softmax_to_tightest" in s and not with_update:
        rows.append("")
        rows.append(f"Compactness falls **{s['compactness_fall_softmax_to_tightest']:.1f}x** from softmax alone to "
                    f"lambda = {s['tightest_lambda']:g}; monotone in lambda: "
                    f"{'yes' if s['compactness_non_increasing_in_lambda'] else 'no'}.")
    return "\n".join(rows)


def _mean_images_per_s(log: Path) -> float:
    import csv

    with open(log, newline="", encoding="utf-8") as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f)]
    return sum(rates) / len(rates)


def mnist_sweep_summary(folder: Path, older: Path) -> str:
    """The accuracy spread of a sweep against an older sweep's, and each run's mean speed (its train_log.csv)."""
    rep, old = _load(folder / "report.json"), _load(older / "report.json")
    accs, old_accs = [r["test_accuracy"] for r in rep["runs"]], [r["test_accuracy"] for r in old["runs"]]
    n_test = rep["config"]["test_subset"] or 10000
    lams = [f"{r['lam']:g}" for r in rep["runs"]]
    speeds = ", ".join(f"{lam}: {_mean_images_per_s(folder / f'lambda_{lam}' / 'train_log.csv'):.0f}" for lam in lams)
    return (f"- Test accuracy across lambda: {_pct(min(accs))} to {_pct(max(accs))}, a spread of "
            f"{round((max(accs) - min(accs)) * n_test)} of the {n_test:,} test digits. `{older.relative_to(ROOT)}` "
            f"(lr {old['config']['lr']}): {_pct(min(old_accs))} to {_pct(max(old_accs))}, compactness "
            f"{old['summary']['compactness_fall_softmax_to_tightest']:.1f}x tighter at lambda = "
            f"{old['summary']['tightest_lambda']:g}.\n"
            f"- Mean training speed per lambda (images/s, the `images_per_s` column of each run's `train_log.csv`): "
            f"{speeds}.")


def mnist_trajectories(rep: dict) -> str:
    rows = ["| lambda / update | center path length | motion in the last 10% of steps (relative to center spread) |",
            "|---|---:|---:|"]
    for k, v in rep["trajectories"].items():
        rows.append(f"| {k} | {v['path_length_mean']:.3g} | {v['last10pct_motion_rel']:.4f} |")
    return "\n".join(rows)


# ---------------------------------------------------------------- LFW


def _lfw_row(rep: dict, name: str, label: str | None = None) -> str:
    r = rep["runs"][name]
    s = r["summary"]
    d = rep["paired_vs_baseline"].get(name)
    fars = list(s["tar_at_far"])
    diff = f"{100 * d['mean']:+.2f} +- {100 * d['std']:.2f} ({d['wins']}/{d['ties']}/{d['losses']})" if d else "-"
    seeds = " / ".join(f"{100 * a:.2f}" for a in s["accuracy_per_seed"])
    tars = " | ".join(_pct(s["tar_at_far"][f], 1) for f in fars)
    return (f"| {label or r['label']} | {100 * s['accuracy_mean']:.2f} +- {100 * s['accuracy_std_folds_seeds']:.2f}% | "
            f"{seeds} | {s['auc']:.4f} | {_pct(s['eer'])} | {tars} | {diff} | {s['train_min']:.1f} |")


def _lfw_head(rep: dict, first: str = "run") -> list[str]:
    fars = list(next(iter(rep["runs"].values()))["summary"]["tar_at_far"])
    base = rep["runs"].get(rep["baseline"], {}).get("label", rep["baseline"])
    return [f"| {first} | accuracy (mean +- std over folds x seeds) | per seed | AUC | EER | "
            + " | ".join(f"TAR@FAR={f}" for f in fars) + f" | paired vs {base} (W/T/L) | train min |",
            "|---|---:|---|---:|---:|" + "---:|" * len(fars) + "---|---:|"]


def lfw_runs(rep: dict, names: list[str]) -> str:
    return "\n".join(_lfw_head(rep) + [_lfw_row(rep, n) for n in names if n in rep["runs"]])


def lfw_grid(rep: dict, grid: str) -> str:
    names = [n for n in rep["runs"] if n.startswith(f"{grid}=")]
    return "\n".join(_lfw_head(rep, grid) + [_lfw_row(rep, n, n.split("=", 1)[1]) for n in names])


def lfw_margins(rep: dict) -> str:
    chosen = rep.get("chosen", {})
    rows = _lfw_head(rep, "method (chosen setting)")
    for group, name in chosen.items():
        rows.append(_lfw_row(rep, name, f"{group} ({rep['runs'][name]['label'].split(', ', 1)[-1]})"))
    rows += ["", "| method | grid (seed 0 accuracy) |", "|---|---|"]
    for group, g in rep["groups"].items():
        accs = ", ".join(f"{rep['runs'][m]['label'].split(', ', 1)[-1]}: "
                         f"{100 * rep['runs'][m]['summary']['accuracy_per_seed'][0]:.2f}" for m in g["members"])
        rows.append(f"| {group} | {accs} |")
    return "\n".join(rows)


def _acc(rep: dict, name: str) -> float:
    return rep["runs"][name]["summary"]["accuracy_mean"]


def fig5_summary(rep: dict) -> str:
    """The shape of the Fig. 5 curves in numbers, generated (best lambda, its paired gain, the flat alpha range)."""
    lam = [n for n in rep["runs"] if n.startswith("lambda=")]
    alp = [n for n in rep["runs"] if n.startswith("alpha=")]
    best = max(lam, key=lambda n: _acc(rep, n))
    d = rep["paired_vs_baseline"][best]
    top = max(_acc(rep, n) for n in alp)
    near = [n.split("=", 1)[1] for n in alp if top - _acc(rep, n) <= 0.005]
    far = [n.split("=", 1)[1] for n in alp if top - _acc(rep, n) > 0.005]
    largest = max(lam, key=lambda n: float(n.split("=", 1)[1]))
    lines = [f"- **lambda:** the best lambda is {best.split('=', 1)[1]} ({100 * _acc(rep, best):.2f}%), "
             f"{100 * d['mean']:+.2f} +- {100 * d['std']:.2f} points over softmax alone, paired over "
             f"{d['n']} (fold, seed) pairs ({d['wins']} wins, {d['ties']} ties, {d['losses']} losses); at the "
             f"largest lambda, {largest.split('=', 1)[1]}, accuracy is {100 * _acc(rep, largest):.2f}%.",
             f"- **alpha** (lambda 3e-3): accuracy is within 0.5 points of the best alpha for alpha in "
             f"{{{', '.join(near)}}}" + (f", and further below it for {{{', '.join(far)}}}." if far else ".")]
    return "\n".join(lines)


def updates_summary(rep: dict) -> str:
    from centerloss.experiments.lfw_report import paired

    rows = []
    for n, r in rep["runs"].items():
        d = rep["paired_vs_baseline"].get(n)
        if d:
            rows.append(f"- {r['label']}: {100 * d['mean']:+.2f} +- {100 * d['std']:.2f} points over A "
                        f"({d['wins']}/{d['ties']}/{d['losses']} over {d['n']} (fold, seed) pairs).")
    runs = rep["runs"]
    for other in ("C_learnable", "C_caffe"):  # the rules against each other, paired the same way
        d = paired(runs["C_paper"]["seeds"], runs[other]["seeds"]) if {"C_paper", other} <= set(runs) else None
        if d:
            rows.append(f"- paper minus {runs[other]['label'].split(', ', 1)[-1]}: {100 * d['mean']:+.2f} +- "
                        f"{100 * d['std']:.2f} points ({d['wins']}/{d['ties']}/{d['losses']} over {d['n']} pairs).")
    return "\n".join(rows)


def margins_summary(rep: dict) -> str:
    base = rep["baseline"]
    rows = []
    for group, name in rep.get("chosen", {}).items():
        if name == base:
            continue
        d = rep["paired_vs_baseline"].get(name)
        s1 = d["per_seed_mean"].get("1") if d else None
        if d:
            rows.append(f"- {group} minus C: {100 * d['mean']:+.2f} +- {100 * d['std']:.2f} points over both seeds "
                        f"({d['wins']}/{d['ties']}/{d['losses']})" + (f"; on seed 1 alone (no selection) "
                                                                       f"{100 * s1:+.2f}." if s1 is not None else "."))
    return "\n".join(rows)


# ---------------------------------------------------------------- benchmarks


def center_loss_cpu(res: dict) -> str:
    rows = ["| C | CenterLoss ms/step | dense B x C ms/step | speed-up | CenterLoss extra MiB | dense extra MiB |",
            "|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"] if "rows" in res else res["results"]:
        rows.append(f"| {r['num_classes']:,} | {r['center_ms']:.2f} | {r['dense_ms']:.2f} | {r['dense_ms'] / r['center_ms']:,.0f}x | "
                    f"{r['center_extra_mib']:.2f} | {r['dense_extra_mib']:.1f} |")
    return "\n".join(rows)


def md_file(path: Path) -> Callable[[], str]:
    """A benchmark's own markdown tables (rendered from its JSON by the benchmark), each after the first with
    the line that introduces it, separated by blank lines."""
    def get() -> str:
        lines, blocks, i = path.read_text(encoding="utf-8").splitlines(), [], 0
        while i < len(lines):
            if not lines[i].startswith("|"):
                i += 1
                continue
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            caption = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            lead = [caption, ""] if blocks and not caption.startswith(("#", "|")) else []
            blocks.append("\n".join(lead + lines[i:j]))
            i = j
        return "\n\n".join(blocks)
    return get


def section(path: Path, start: str, stop: str | None = None) -> Callable[[], str]:
    """The lines of a rendered markdown file from the line starting with ``start`` up to ``stop``."""
    def get() -> str:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = next(k for k, ln in enumerate(lines) if ln.startswith(start))
        j = next((k for k, ln in enumerate(lines[i + 1:], i + 1) if stop and ln.startswith(stop)), len(lines))
        return "\n".join(lines[i:j]).strip()
    return get


def tables() -> dict[str, tuple[Path, Callable[[], str]]]:
    fig5 = RESULTS / "lfw_fig5" / "report.json"
    return {
        "mnist_quick": (RESULTS / "mnist_quick" / "report.json", lambda: mnist_table(_load(RESULTS / "mnist_quick" / "report.json"))),
        "mnist_paper": (RESULTS / "mnist_paper" / "report.json", lambda: mnist_table(_load(RESULTS / "mnist_paper" / "report.json"))),
        "mnist_paper_summary": (RESULTS / "mnist_paper" / "report.json",
                                lambda: mnist_sweep_summary(RESULTS / "mnist_paper", RESULTS / "v0.1" / "mnist_paper_lr001_h200")),
        "mnist_updates": (RESULTS / "mnist_updates" / "report.json",
                          lambda: mnist_table(_load(RESULTS / "mnist_updates" / "report.json"), with_update=True)),
        "mnist_trajectories": (RESULTS / "mnist_updates" / "report.json",
                               lambda: mnist_trajectories(_load(RESULTS / "mnist_updates" / "report.json"))),
        "lfw_ac": (fig5, lambda: lfw_runs(_load(fig5), ["A", "lambda=0.003"])),
        "lfw_fig5_lambda": (fig5, lambda: lfw_grid(_load(fig5), "lambda")),
        "lfw_fig5_alpha": (fig5, lambda: lfw_grid(_load(fig5), "alpha")),
        "lfw_fig5_summary": (fig5, lambda: fig5_summary(_load(fig5))),
        "lfw_updates_summary": (RESULTS / "lfw_updates" / "report.json",
                                lambda: updates_summary(_load(RESULTS / "lfw_updates" / "report.json"))),
        "lfw_margins_summary": (RESULTS / "lfw_margins" / "report.json",
                                lambda: margins_summary(_load(RESULTS / "lfw_margins" / "report.json"))),
        "lfw_updates": (RESULTS / "lfw_updates" / "report.json",
                        lambda: lfw_runs(_load(RESULTS / "lfw_updates" / "report.json"),
                                         list(_load(RESULTS / "lfw_updates" / "report.json")["runs"]))),
        "lfw_margins": (RESULTS / "lfw_margins" / "report.json", lambda: lfw_margins(_load(RESULTS / "lfw_margins" / "report.json"))),
        "center_loss_cpu": (BENCH / "center_loss_cpu.md", md_file(BENCH / "center_loss_cpu.md")),
        "sharded_head": (BENCH / "sharded_head_cpu.md", section(BENCH / "sharded_head_cpu.md", "| head", "## Model")),
        "sharded_model": (BENCH / "sharded_head_cpu.md", section(BENCH / "sharded_head_cpu.md", "| GPUs")),
        "sharded_lfw": (BENCH / "sharded_lfw.md", md_file(BENCH / "sharded_lfw.md")),
        "engine_syncs": (BENCH / "engine_syncs.md", md_file(BENCH / "engine_syncs.md")),
        "onnx": (BENCH / "onnx_cpu.md", md_file(BENCH / "onnx_cpu.md")),
        "gallery": (BENCH / "gallery_lfw.md", md_file(BENCH / "gallery_lfw.md")),
    }


# what produces each source (the results folders are copied from the run folders these commands write)
MAKERS = {
    "mnist_quick": "make demo",
    "mnist_paper": "centerloss mnist --preset paper",
    "mnist_updates": "centerloss mnist --preset updates",
    "lfw_fig5": "centerloss lfw-experiment --preset fig5",
    "lfw_updates": "centerloss lfw-experiment --preset updates",
    "lfw_margins": "centerloss lfw-experiment --preset margins",
    "center_loss_cpu.md": "python benchmarks/bench_center_loss.py",
    "sharded_head_cpu.md": "python benchmarks/bench_sharded_head.py",
    "sharded_lfw.md": "python benchmarks/bench_sharded_lfw.py --aligned DIR",
    "engine_syncs.md": "python benchmarks/bench_engine_syncs.py",
    "onnx_cpu.md": "python benchmarks/bench_onnx.py --model M",
    "gallery_lfw.md": "python benchmarks/bench_gallery_lfw.py --model M --heldout FILE",
}


def not_yet(src: Path) -> str:
    maker = MAKERS.get(src.name) or MAKERS.get(src.parent.name, "?")
    return f"*Not measured yet: `{src.relative_to(ROOT)}` does not exist (`{maker}` produces it).*"


_BLOCK = re.compile(r"(<!-- BEGIN (\w+) -->\n)(.*?)(<!-- END \2 -->)", re.S)


def render(readme: str) -> tuple[str, list[str]]:
    known, missing = tables(), []

    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in known:
            raise SystemExit(f"README.md names an unknown table {name!r}")
        src, make = known[name]
        if not src.is_file():
            missing.append(f"{name} ({src.relative_to(ROOT)})")
            return f"{m.group(1)}{not_yet(src)}\n{m.group(4)}"
        return f"{m.group(1)}{make().rstrip()}\n{m.group(4)}"

    return _BLOCK.sub(fill, readme), missing


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is not what the JSON gives")
    args = p.parse_args()
    path = ROOT / "README.md"
    old = path.read_text(encoding="utf-8")
    new, missing = render(old)
    for m in missing:
        print(f"not measured yet (the README says so): {m}", file=sys.stderr)
    if args.check:
        if new != old:
            print("README.md is stale: run python docs/make_readme.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
