"""The paper's toy experiment (Sec. 3, Figs. 2-3): LeNets++ with 2-D features on MNIST.

For each lambda in the preset it trains LeNets++ under ``L = L_S + lambda * L_C`` (lambda = 0 is softmax alone)
with the paper's center update (Eq. 4, alpha), then measures test accuracy and how compact the classes are,
and draws the feature distributions. Everything is seeded; on CPU the runs are bit-for-bit repeatable.

Run folder: ``config.yaml`` (resolved), ``report.json``, ``report.md``, ``fig2_softmax.png``,
``fig3_lambdas.png``, ``compactness.png`` and one ``lambda_<x>/model.safetensors`` per run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .. import config as cfgmod
from ..errors import NonFiniteLossError


@dataclass
class MnistConfig:
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.01])  # 0 = softmax only
    alpha: float = 0.5  # Eq. 4 center learning rate
    center_update: str = "paper"  # "paper" (Eq. 4) or "learnable" (an SGD-trained parameter)
    iterations: int = 1400  # SGD steps per run
    batch_size: int = 128
    lr: float = 0.01
    lr_steps: list[int] = field(default_factory=lambda: [900, 1200])  # iterations where lr *= lr_gamma
    lr_gamma: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    embed_dim: int = 2
    seed: int = 0
    train_subset: int = 0  # use only the first N training images (0 = all 60k)
    test_subset: int = 0  # evaluate on the first N test images (0 = all 10k)
    plot_points: int = 10000  # points drawn per panel
    train_eval_images: int = 10000  # training images whose features are extracted (train accuracy, Fig. 2a)
    device: str = "auto"  # "auto" = cuda if available, else cpu
    workers: int = 1  # run this many lambdas at once in separate processes
    data_dir: str | None = None  # None: see centerloss.data.mnist.candidate_dirs()


    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError(f"iterations and batch_size must be >= 1, got {self.iterations}, {self.batch_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (Eq. 4), got {self.alpha}")
        if not self.lambdas or any(not lam >= 0 for lam in self.lambdas):
            raise ValueError(f"lambdas must be a non-empty list of numbers >= 0, got {self.lambdas}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.center_update not in ("paper", "learnable"):
            raise ValueError(f"center_update must be 'paper' or 'learnable', got {self.center_update!r}")


@dataclass
class RunResult:
    lam: float
    test_accuracy: float
    train_accuracy: float
    intra_mean: float
    inter_mean: float
    inter_min: float
    compactness: float
    compactness_min: float
    seconds: float
    final_softmax_loss: float
    final_center_loss: float


def _lr_at(cfg: MnistConfig, it: int) -> float:
    return cfg.lr * cfg.lr_gamma ** sum(it >= s for s in cfg.lr_steps)


@torch.no_grad()
def extract(model: torch.nn.Module, images: Tensor, batch: int = 1000) -> Tensor:
    """2-D features (N, d) of uint8 images (N, 28, 28), in eval mode."""
    from ..data.mnist import normalize

    model.eval()
    dev = next(model.parameters()).device
    out = [model(normalize(images[i : i + batch]).to(dev)).float().cpu() for i in range(0, len(images), batch)]
    return torch.cat(out)


def train_one(cfg: MnistConfig, lam: float, train, device: torch.device, desc: str = ""):
    """Train LeNets++ with ``L_S + lam * L_C``; returns ``(model, objective, last losses)``."""
    from tqdm.auto import tqdm

    from ..data.mnist import normalize
    from ..losses import CenterLoss, JointLoss
    from ..models import create_model

    torch.manual_seed(cfg.seed)
    model = create_model("lenetpp", embed_dim=cfg.embed_dim).to(device)
    center = CenterLoss(10, cfg.embed_dim, alpha=cfg.alpha, update=cfg.center_update)  # type: ignore[arg-type]
    objective = JointLoss(cfg.embed_dim, 10, aux=center, lam=lam, bias=False).to(device)
    params = list(model.parameters()) + list(objective.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    images, labels = train.images.to(device), train.labels.to(device)
    n = images.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)  # data order: a pure function of the seed
    perm, pos = torch.randperm(n, generator=gen), 0
    model.train()
    objective.train()
    last = (float("nan"), float("nan"))
    bar = tqdm(range(cfg.iterations), desc=desc, unit="it", dynamic_ncols=True)
    for it in bar:
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + cfg.batch_size].to(device)
        pos += cfg.batch_size
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, it)
        x, y = normalize(images[idx]), labels[idx]
        feats = model(x)
        try:
            out = objective(feats, y)  # CenterLoss refuses NaN/Inf features before moving its centers
        except ValueError as e:
            if not bool(torch.isfinite(feats).all()):
                raise NonFiniteLossError(f"lambda={lam}: features became NaN/Inf at iteration {it}; "
                                         "lower lr or lambda") from e
            raise
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if it % 50 == 0 or it == cfg.iterations - 1:  # host sync only every 50 steps
            last = (out.softmax.item(), out.aux.item())
            if not all(math.isfinite(v) for v in last):
                raise NonFiniteLossError(f"lambda={lam}: loss became {last} at iteration {it}; lower lr or lambda")
            bar.set_postfix(L_s=f"{last[0]:.3f}", L_c=f"{last[1]:.3f}", lr=f"{_lr_at(cfg, it):.4g}")
    return model, objective, last


def _accuracy(objective, feats: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        w = objective.classifier.weight.detach().float().cpu()
        pred = (feats @ w.t()).argmax(1)
    return float((pred == labels).float().mean())


def _resolve_device(cfg: MnistConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _load_data(cfg: MnistConfig):
    from ..data.mnist import load_mnist

    train, test = load_mnist(cfg.data_dir)
    if cfg.train_subset:
        train.images, train.labels = train.images[: cfg.train_subset], train.labels[: cfg.train_subset]
    if cfg.test_subset:
        test.images, test.labels = test.images[: cfg.test_subset], test.labels[: cfg.test_subset]
    return train, test


def run_lambda(cfg: MnistConfig, lam: float, out_dir: Path) -> dict:
    """Train and measure one lambda; saves ``lambda_<x>/model.safetensors``. Safe to call in a subprocess."""
    from ..eval.compactness import class_compactness
    from ..models.io import save_model

    device = _resolve_device(cfg)
    det_before = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    train, test = _load_data(cfg)
    name = "softmax" if lam == 0 else f"lambda={lam:g}"
    t0 = time.perf_counter()
    try:
        model, objective, last = train_one(cfg, lam, train, device, desc=name)
    finally:
        torch.use_deterministic_algorithms(det_before)
    secs = time.perf_counter() - t0
    f_test = extract(model, test.images)
    f_train = extract(model, train.images[: cfg.train_eval_images])
    comp = class_compactness(f_test.numpy(), test.labels.numpy())
    res = RunResult(lam=lam, test_accuracy=_accuracy(objective, f_test, test.labels),
                    train_accuracy=_accuracy(objective, f_train, train.labels[: cfg.train_eval_images]), seconds=round(secs, 2),
                    final_softmax_loss=last[0], final_center_loss=last[1], **comp)
    run_dir = out_dir / f"lambda_{lam:g}"
    run_dir.mkdir(parents=True, exist_ok=True)
    save_model(run_dir / "model.safetensors", model, "lenetpp", {"embed_dim": cfg.embed_dim},
               extra={"lambda": lam, "test_accuracy": res.test_accuracy})
    print(f"[{name}] test acc {res.test_accuracy * 100:.2f}%  compactness {res.compactness:.4f}  "
          f"({secs:.0f} s)", flush=True)
    return {"result": res, "f_test": f_test.numpy(), "f_train": f_train.numpy(),
            "centers": objective.aux.centers.detach().float().cpu().numpy()}


def run_experiment(cfg: MnistConfig, out_dir: Path, preset: str = "custom") -> dict:
    from ..viz.features2d import plot_compactness, plot_lambda_panels, plot_softmax_features

    out_dir.mkdir(parents=True, exist_ok=True)
    cfgmod.save(cfg, out_dir / "config.yaml")
    device = _resolve_device(cfg)
    if cfg.workers > 1:  # independent lambdas in parallel processes (useful on a GPU with room to spare)
        import torch.multiprocessing as mp

        with mp.get_context("spawn").Pool(min(cfg.workers, len(cfg.lambdas))) as pool:
            runs = pool.starmap(run_lambda, [(cfg, lam, out_dir) for lam in cfg.lambdas])
    else:
        runs = [run_lambda(cfg, lam, out_dir) for lam in cfg.lambdas]
    train, test = _load_data(cfg)
    results: list[RunResult] = [r["result"] for r in runs]
    panels = []
    fig2 = None
    for r in runs:
        res, lam = r["result"], r["result"].lam
        name = "softmax" if lam == 0 else f"lambda={lam:g}"
        if lam == 0:
            fig2 = ((r["f_train"], train.labels[: cfg.train_eval_images].numpy()), (r["f_test"], test.labels.numpy()))
        panels.append({"feats": r["f_test"], "labels": test.labels.numpy(),
                       "centers": r["centers"] if lam > 0 else None,
                       "title": f"{name}: acc {res.test_accuracy * 100:.2f}%, compact. {res.compactness:.3f}"})

    figures = {}
    if fig2 is not None:
        plot_softmax_features(fig2[0], fig2[1], out_dir / "fig2_softmax.png", cfg.plot_points)
        figures["fig2"] = "fig2_softmax.png"
    plot_lambda_panels(panels, out_dir / "fig3_lambdas.png", cfg.plot_points)
    figures["fig3"] = "fig3_lambdas.png"
    if len(results) > 1:
        plot_compactness([r.lam for r in results], [r.compactness for r in results],
                         [r.test_accuracy for r in results], out_dir / "compactness.png")
        figures["compactness"] = "compactness.png"

    report = {
        "experiment": "mnist-2d",
        "preset": preset,
        "config": asdict(cfg),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "runs": [asdict(r) for r in results],
        "figures": figures,
    }
    report["summary"] = summarize(results)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(render_markdown(report))
    return report


def summarize(results: list[RunResult]) -> dict:
    """Compactness fall from softmax to the best lambda, and whether it is monotone over lambda > 0."""
    soft = [r for r in results if r.lam == 0]
    joint = sorted((r for r in results if r.lam > 0), key=lambda r: r.lam)
    out: dict = {}
    if joint:
        best = max(joint, key=lambda r: r.test_accuracy)
        out["best_lambda_by_accuracy"] = best.lam
        out["best_joint_accuracy"] = best.test_accuracy
        tightest = min(joint, key=lambda r: r.compactness)
        out["tightest_lambda"] = tightest.lam
        c = [r.compactness for r in joint]
        out["compactness_non_increasing_in_lambda"] = all(b <= a for a, b in zip(c, c[1:]))
        if soft:
            out["compactness_fall_softmax_to_tightest"] = soft[0].compactness / tightest.compactness
    if soft:
        out["softmax_accuracy"] = soft[0].test_accuracy
    return out


def render_markdown(report: dict) -> str:
    cfg = report["config"]
    m = report["machine"]
    lines = [
        f"# MNIST 2-D features: softmax vs softmax + center loss ({report['preset']} preset)",
        "",
        f"LeNets++ (2-D feature), {cfg['iterations']} iterations of batch {cfg['batch_size']}, "
        f"lr {cfg['lr']} (x{cfg['lr_gamma']} at {cfg['lr_steps']}), momentum {cfg['momentum']}, "
        f"weight decay {cfg['weight_decay']}, alpha {cfg['alpha']}, center update `{cfg['center_update']}`, "
        f"seed {cfg['seed']}. Machine: {m['device']} {m['device_name'] or m['processor'] or m['platform']}, "
        f"torch {m['torch']}, {m['threads']} threads.",
        "",
        "Compactness = mean distance of a test feature to its class mean / mean distance between class means "
        "(scale-free; lower is tighter).",
        "",
        "| lambda | test acc. | intra (mean) | inter (mean) | inter (min) | compactness | train time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lam = "0 (softmax)" if r["lam"] == 0 else f"{r['lam']:g}"
        lines.append(f"| {lam} | {r['test_accuracy'] * 100:.2f}% | {r['intra_mean']:.4g} | {r['inter_mean']:.4g} | "
                     f"{r['inter_min']:.4g} | {r['compactness']:.4f} | {r['seconds']:.0f} s |")
    s = report["summary"]
    lines.append("")
    if "compactness_fall_softmax_to_tightest" in s:
        lines.append(f"Compactness falls {s['compactness_fall_softmax_to_tightest']:.1f}x from softmax alone to "
                     f"lambda = {s['tightest_lambda']:g}. Non-increasing in lambda: "
                     f"{'yes' if s['compactness_non_increasing_in_lambda'] else 'no (see table)'}.")
        lines.append("")
    f = report["figures"]
    if "fig2" in f:
        lines += ["## Softmax only (Fig. 2 analogue): (a) training set, (b) test set", "",
                  f"![softmax features]({f['fig2']})", ""]
    lines += ["## Joint supervision across lambda (Fig. 3 analogue, test set; white dots: learned centers)", "",
              f"![lambda panels]({f['fig3']})", ""]
    if "compactness" in f:
        lines += ["## Compactness and accuracy vs lambda", "", f"![compactness]({f['compactness']})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI

HELP = """\
Reproduce the paper's toy experiment (Sec. 3, Figs. 2-3): LeNets++ with 2-D features on MNIST, softmax
alone vs softmax + center loss for several lambda (alpha = 0.5, Eq. 4 center update).

Presets (YAML, shipped in centerloss/configs/mnist/):
  quick   softmax + one lambda, ~3 epochs each: about 10 minutes on a 2-core CPU
  paper   the lambda sweep 1e-4..1e-1, long enough to converge (use a GPU or be patient)

Examples:
  centerloss mnist --preset quick
  centerloss mnist --preset paper --out runs/mnist-paper --device cuda
  centerloss mnist --preset quick --set lambdas=[0,0.003,0.03] --set iterations=2000

MNIST is read from --data-dir, else $CENTERLOSS_MNIST_DIR, else ../shared/data/mnist; --download fetches it.
Writes OUT/config.yaml, report.json, report.md and the figures.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mnist", help="MNIST 2-D toy experiment (paper Figs. 2-3)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help="preset name (quick, paper) or a YAML file [quick]")
    p.add_argument("--out", default=None, help="run folder [runs/mnist-<preset>]")
    p.add_argument("--data-dir", default=None, help="folder with the four MNIST .gz files")
    p.add_argument("--download", action="store_true", help="download MNIST into --data-dir (md5-checked)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... [auto]")
    p.add_argument("--lambdas", default=None, help="comma-separated lambdas, 0 = softmax only, e.g. 0,0.01")
    p.add_argument("--iterations", type=int, default=None, help="SGD steps per run")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (repeatable), e.g. --set lr=0.02")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    path = cfgmod.preset_path("mnist", args.preset)
    overrides: dict = {}
    for key in ("device", "iterations", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.lambdas is not None:
        overrides["lambdas"] = [float(x) for x in args.lambdas.split(",") if x]
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    cfg = cfgmod.load(MnistConfig, path, overrides)
    if args.overrides:
        cfg = cfgmod.apply_overrides(cfg, args.overrides)
    if args.download:
        from ..data.mnist import download_mnist

        if not cfg.data_dir:
            raise SystemExit("--download needs --data-dir (where to put the files)")
        download_mnist(cfg.data_dir)
    preset = Path(args.preset).stem
    out = Path(args.out or f"runs/mnist-{preset}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    report = run_experiment(cfg, out, preset)
    print(f"\nwrote {out}/report.md and report.json")
    for r in report["runs"]:
        print(f"  lambda={r['lam']:<8g} test acc {r['test_accuracy'] * 100:6.2f}%  compactness {r['compactness']:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m centerloss.experiments.mnist ...``: the same as ``centerloss mnist ...``."""
    parser = argparse.ArgumentParser(prog="centerloss")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["mnist", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
