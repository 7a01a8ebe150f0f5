"""Sharded softmax + center-loss head against the replicated dense head under DDP: memory, time, traffic.

For each number of gloo processes W, classes C and width d, with a global batch of 256 (256 / W per rank):

* ``dense``: ``JointLoss(d, C, aux=CenterLoss(C, d), lam)`` (replicated classifier and centers) inside
  ``DistributedDataParallel`` together with a tiny linear "backbone" (d -> d), so DDP all-reduces the whole
  (C, d) classifier gradient every step (``gradient_as_bucket_view=True``, its cheapest setting);
* ``sharded r=1`` and ``sharded r=0.1``: ``ShardedJointLoss`` (rows and centers split over the ranks, Partial
  FC sampling at r < 1) outside DDP; only the backbone is in DDP.

Both run in the engine's mode (``validate=False``), SGD with momentum 0.9 over backbone and head. Each
configuration runs in fresh processes. Per rank it records: the median forward, backward and optimizer-update
time over ``--steps`` steps after ``--warmup``; the head's persistent state measured from its tensors
(weights, gradient, momentum, centers); the peak resident set size over the steps minus the RSS before the head
was built (``/proc/self/clear_refs`` resets the high-water mark); and the bytes each collective call carries
(the wrappers around ``torch.distributed``'s functions count the gathered output, the reduced input), plus
DDP's all-reduce, counted as the size of the gradients DDP holds. A memory and communication model
(:func:`head_model`) is printed beside every measurement and tabulated for 8 and 64 GPUs at 2M, 10M and 100M
classes. A configuration whose modelled memory exceeds ``--mem-fraction`` of MemAvailable is skipped with a
note instead of being run into swap.

    python benchmarks/bench_sharded_head.py --classes 20000 --worlds 1 2 --big-classes 0 --steps 3   # smoke
    python benchmarks/bench_sharded_head.py                       # the full grid (about 20 GB, see --help)
    python benchmarks/bench_sharded_head.py --render               # redraw the .md from the saved .json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from centerloss.utils.atomic import check_output_dir, write_json, write_text  # noqa: E402
from centerloss.utils.machine import machine_info, uptime  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
NAME = "sharded_head_cpu"
LAM, ALPHA = 0.01, 0.5
PROCESS_OVERHEAD = 400 * 2**20  # RSS of a process that imported torch and joined a gloo group (measured ~330 MB)
GiB, MiB = 2**30, 2**20


# ---------------------------------------------------------------- the model


def head_model(head: str, num_classes: int, world: int, dim: int = 512, batch_per_rank: int = 256,
               sample_rate: float = 1.0, elem: int = 4, initialised: bool = True) -> dict:
    """Per-rank bytes of the head (memory) and per-step bytes of its collectives (communication).

    ``head`` is ``"dense"`` (replicated JointLoss + CenterLoss under DDP) or ``"sharded"``. The rank holding the
    most classes (rank 0, ``ceil(C / W)``) is modelled. Memory: weights + gradient + momentum (``elem`` bytes
    each) + float32 centers, plus the logits: the sharded head keeps the (N, k) logits and its float32
    softmax buffer at the forward's peak (2 buffers) and, when sampling, the (k, d) sampled rows and their
    gradient; the dense one the (b, C) logits, log-softmax and gradient (3 buffers). Communication ("payload",
    what this benchmark counts): the gathered output of an all-gather, the input of an all-reduce or
    reduce-scatter, the tensor of a broadcast. "wire" is what a ring algorithm sends per rank:
    (W-1)/W x payload for gathers and reduce-scatters, 2(W-1)/W x payload for all-reduces, 1 x for a broadcast.
    """
    n_glob = world * batch_per_rank  # N, the global batch
    f = (world - 1) / world
    if head == "dense":
        n = num_classes
        state = 3 * n * dim * elem + n * dim * 4
        logits = 3 * batch_per_rank * n * elem
        sampled = 0
        ddp = n * dim * elem  # the classifier's gradient (the backbone's is added by the caller)
        gathers = (n_glob * dim * 4 + n_glob * 8) if initialised else 0  # CenterLoss's global batch
        bcast = n_glob * dim * 4 if initialised else 0  # CenterLoss broadcasts rank 0's Eq. 4 step
        payload = ddp + gathers + bcast
        wire = 2 * f * ddp + f * gathers + (bcast if world > 1 else 0)
        k = n
    elif head == "sharded":
        n = -(-num_classes // world)
        k = n if sample_rate >= 1 else min(n, max(math.ceil(sample_rate * n), n_glob))
        state = 3 * n * dim * elem + n * dim * 4
        logits = 2 * n_glob * k * 4
        sampled = 2 * k * dim * elem if k < n else 0
        ddp = 0
        if world == 1:
            gathers = reduce = 0
        else:  # features + labels gathered; max, (sum-exp, target) and the center-loss scalar all-reduced
            gathers = n_glob * dim * elem + n_glob * 8
            reduce = n_glob * 4 + n_glob * 8 + 4
        scatter = n_glob * dim * elem if world > 1 else 0  # the features' gradient, reduce-scattered
        payload = gathers + reduce + scatter
        wire = f * gathers + 2 * f * reduce + f * scatter
    else:
        raise ValueError(f"head must be 'dense' or 'sharded', got {head!r}")
    small = 3 * n_glob * dim * 4  # gathered features, their gradient, the center differences
    return {"local_classes": n, "sampled_rows": k, "state_bytes": state, "logits_bytes": logits,
            "sampled_bytes": sampled, "peak_bytes": state + logits + sampled + small,
            "comm_payload_bytes": payload, "comm_wire_bytes": wire, "ddp_head_bytes": ddp}


def model_tables(dim: int = 512, batch_per_rank: int = 256) -> list[dict]:
    """The model at the scales of interest: 8 and 64 GPUs, 2M / 10M / 100M classes, fp32."""
    rows = []
    for world in (8, 64):
        for c in (2_000_000, 10_000_000, 100_000_000):
            for head, rate in (("dense", 1.0), ("sharded", 1.0), ("sharded", 0.1)):
                m = head_model(head, c, world, dim, batch_per_rank, rate)
                rows.append({"world": world, "classes": c, "head": head, "sample_rate": rate, **m})
    return rows


# ---------------------------------------------------------------- counting collectives


class CommCounter:
    """Wraps torch.distributed's collectives to count bytes per call (nested calls count once)."""

    NAMES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "reduce_scatter_single",
             "reduce_scatter_tensor", "all_reduce", "broadcast")

    def __init__(self) -> None:
        self.bytes, self.calls, self._depth = 0, 0, 0

    @staticmethod
    def _size(name: str, args: tuple) -> int:
        def nbytes(t) -> int:
            return t.numel() * t.element_size()
        if name == "all_gather":
            return sum(nbytes(t) for t in args[0])
        if name.startswith("reduce_scatter"):
            return nbytes(args[1])
        return nbytes(args[0])  # gathers: the output; all_reduce / broadcast: the tensor

    def install(self) -> None:
        import torch.distributed as dist

        for name in self.NAMES:
            orig = getattr(dist, name, None)
            if orig is None:
                continue

            def wrapped(*args, _orig=orig, _name=name, **kwargs):
                if self._depth == 0:
                    self.bytes += self._size(_name, args)
                    self.calls += 1
                self._depth += 1
                try:
                    return _orig(*args, **kwargs)
                finally:
                    self._depth -= 1
            setattr(dist, name, wrapped)


# ---------------------------------------------------------------- one rank


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _build(cfg: dict):
    """(step module, optimizer, head module, DDP-held gradient bytes) for one configuration."""
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from centerloss import CenterLoss
    from centerloss.losses import JointLoss
    from centerloss.losses.sharded import ShardedJointLoss

    c, d = cfg["classes"], cfg["dim"]
    torch.manual_seed(0)
    backbone = nn.Linear(d, d)
    if cfg["head"] == "dense":
        class Dense(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.backbone = backbone
                self.objective = JointLoss(d, c, aux=CenterLoss(c, d, ALPHA, validate=False), lam=LAM,
                                           bias=False, validate=False)

            def forward(self, x, y):
                return self.objective(self.backbone(x), y)

        inner = Dense()
        model = DDP(inner, gradient_as_bucket_view=True, **_no_buffer_sync())  # CenterLoss syncs itself
        head = inner.objective
        step = model
    else:
        head = ShardedJointLoss(d, c, lam=LAM, alpha=ALPHA, sample_rate=cfg["sample_rate"], validate=False)
        ddp_backbone = DDP(backbone)

        def step(x, y):
            return head(ddp_backbone(x), y)
        model = ddp_backbone
    ddp_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    return step, opt, head, ddp_bytes


def _no_buffer_sync() -> dict[str, bool]:
    """No per-forward buffer broadcast (the engine's choice); newer PyTorch renamed the argument."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    params = inspect.signature(DDP.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _warm_up_backbone(dim: int, batch: int) -> None:
    """One DDP step of a throwaway backbone, so that gloo's, autograd's and the BLAS's one-time buffers are
    already in the baseline RSS and not counted as the head's."""
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    net = DDP(nn.Linear(dim, dim))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net(torch.randn(batch, dim)).square().mean().backward()
    opt.step()


def _head_state_bytes(head, opt) -> int:
    """Weights, gradients, momentum buffers and centers of the head, from the tensors themselves."""
    total = 0
    for p in head.parameters():
        total += p.numel() * p.element_size()
        if p.grad is not None:
            total += p.grad.numel() * p.grad.element_size()
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            total += buf.numel() * buf.element_size()
    for name, b in head.named_buffers():
        if name.endswith("centers"):
            total += b.numel() * b.element_size()
    return total


def _rank_main(rank: int, world: int, port: int, cfg: dict, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(cfg["threads"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(minutes=30))
    try:
        b = cfg["batch"] // world
        g = torch.Generator().manual_seed(1000 + rank)
        batches = [(torch.randn(b, cfg["dim"], generator=g), torch.randint(0, cfg["classes"], (b,), generator=g))
                   for _ in range(4)]
        counter = CommCounter()
        counter.install()
        _warm_up_backbone(cfg["dim"], b)
        base_rss = _status_kib("VmRSS") * 1024
        peak_ok = _reset_peak()
        step, opt, head, ddp_bytes = _build(cfg)
        times: dict[str, list[float]] = {"forward": [], "backward": [], "update": []}
        comm, state = [], 0
        for i in range(cfg["warmup"] + cfg["steps"]):
            x, y = batches[i % len(batches)]
            counter.bytes = counter.calls = 0
            t0 = time.perf_counter()
            out = step(x, y)
            t1 = time.perf_counter()
            out.loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            state = _head_state_bytes(head, opt)  # not timed
            t4 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            t5 = time.perf_counter()
            if i >= cfg["warmup"]:
                for key, dt in zip(times, (t1 - t0, t2 - t1, (t3 - t2) + (t5 - t4))):
                    times[key].append(1000 * dt)
                comm.append((counter.bytes, counter.calls))
        peak = _status_kib("VmHWM") * 1024 if peak_ok else 0
        rec = {"rank": rank, **{f"{k}_ms": statistics.median(v) for k, v in times.items()},
               "state_bytes": state, "peak_rss_delta_bytes": max(0, peak - base_rss) if peak_ok else None,
               "base_rss_bytes": base_rss, "collective_bytes": comm[-1][0], "collective_calls": comm[-1][1],
               "ddp_allreduce_bytes": ddp_bytes, "loss": float(out.loss.detach())}
        write_json(Path(out_dir) / f"rank{rank}.json", rec)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- the grid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _plan(cfg: dict, args: argparse.Namespace) -> dict:
    """The configuration with its modelled memory, and why it is skipped (the model says it would not fit)."""
    w = cfg["world"]
    model = head_model(cfg["head"], cfg["classes"], w, cfg["dim"], cfg["batch"] // w, cfg["sample_rate"])
    model["ddp_backbone_bytes"] = (cfg["dim"] * cfg["dim"] + cfg["dim"]) * 4
    need = w * (model["peak_bytes"] + PROCESS_OVERHEAD)
    avail = _mem_available()
    row = {**cfg, "model": model, "estimated_total_bytes": need, "mem_available_bytes": avail}
    if need > args.mem_fraction * avail:
        row["skipped"] = (f"needs ~{need / GiB:.1f} GiB for {w} process(es), {avail / GiB:.1f} GiB available "
                          f"(limit {args.mem_fraction:.0%})")
    return row


def _print_plan(cfg: dict, args: argparse.Namespace) -> None:
    row = _plan(cfg, args)
    verdict = f"skip ({row['skipped']})" if "skipped" in row else "run"
    print(f"{_describe(row)}: model peak/rank {row['model']['peak_bytes'] / GiB:6.2f} GiB, all processes "
          f"~{row['estimated_total_bytes'] / GiB:6.2f} GiB -> {verdict}")


def run_config(cfg: dict, args: argparse.Namespace) -> dict:
    """Run one configuration in W fresh processes (or skip it when the model says it would not fit)."""
    import torch.multiprocessing as mp

    row = _plan(cfg, args)
    if "skipped" in row:
        return row
    w = cfg["world"]
    row["load_at_start"] = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mp.spawn(_rank_main, args=(w, _free_port(), cfg, tmp), nprocs=w, join=True)
        row["wall_s"] = time.perf_counter() - t0
        row["ranks"] = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(w)]
    return row


def grid(args: argparse.Namespace) -> list[dict]:
    points = [(c, args.dim) for c in args.classes]
    if args.big_classes:
        points.append((args.big_classes, args.big_dim))
    cfgs = []
    for c, d in points:
        for w in args.worlds:
            for head, rate in [("dense", 1.0)] + [("sharded", r) for r in args.rates]:
                cfgs.append({"head": head, "sample_rate": rate, "classes": c, "dim": d, "world": w,
                             "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                             "threads": args.threads or max(1, (os.cpu_count() or 1) // w)})
    return cfgs


def _describe(row: dict) -> str:
    head = _head_label(row["head"], row["sample_rate"])
    return f"{head:>16} C={row['classes']:>10,} d={row['dim']:<4} W={row['world']}"


def _print_row(row: dict) -> None:
    if "skipped" in row:
        print(f"{_describe(row)}: skipped, {row['skipped']}", flush=True)
        return
    r0, m = row["ranks"][0], row["model"]
    peak = max((r["peak_rss_delta_bytes"] or 0) for r in row["ranks"])
    comm = r0["collective_bytes"] + r0["ddp_allreduce_bytes"]
    print(f"{_describe(row)}: fwd {r0['forward_ms']:8.1f} bwd {r0['backward_ms']:8.1f} upd {r0['update_ms']:7.1f} ms"
          f" | state {r0['state_bytes'] / MiB:8.1f} MiB (model {m['state_bytes'] / MiB:8.1f}) | peak RSS +"
          f"{peak / MiB:8.1f} MiB (model {m['peak_bytes'] / MiB:8.1f}) | comm {comm / MiB:8.2f} MiB "
          f"(model {(m['comm_payload_bytes'] + m['ddp_backbone_bytes']) / MiB:8.2f})", flush=True)


# ---------------------------------------------------------------- markdown


def _head_label(head: str, rate: float | None) -> str:
    return head if head == "dense" else f"sharded r={rate:g}"


def _measured_lines(rows: list[dict]) -> list[str]:
    lines = ["| head | C | d | W | fwd ms | bwd ms | update ms | slowest rank step ms | state MiB (model) "
             "| peak RSS + MiB, max rank (model) | comm MiB/step/rank (model) | DDP share MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        head = _head_label(row["head"], row["sample_rate"])
        lead = f"| {head} | {row['classes']:,} | {row['dim']} | {row['world']} |"
        if "skipped" in row:
            lines.append(f"{lead} skipped: {row['skipped']} |" + " - |" * 7)
            continue
        m, r0 = row["model"], row["ranks"][0]
        slow = max(r["forward_ms"] + r["backward_ms"] + r["update_ms"] for r in row["ranks"])
        peaks = [r["peak_rss_delta_bytes"] for r in row["ranks"] if r["peak_rss_delta_bytes"] is not None]
        peak = f"{max(peaks) / MiB:,.0f}" if peaks else "n/a"
        comm = r0["collective_bytes"] + r0["ddp_allreduce_bytes"]
        model_comm = m["comm_payload_bytes"] + m["ddp_backbone_bytes"]
        lines.append(f"{lead} {r0['forward_ms']:,.1f} | {r0['backward_ms']:,.1f} | {r0['update_ms']:,.1f} | "
                     f"{slow:,.1f} | {r0['state_bytes'] / MiB:,.1f} ({m['state_bytes'] / MiB:,.1f}) | "
                     f"{peak} ({m['peak_bytes'] / MiB:,.0f}) | {comm / MiB:,.3f} ({model_comm / MiB:,.3f}) | "
                     f"{r0['ddp_allreduce_bytes'] / MiB:,.3f} |")
    return lines


def _model_lines(rows: list[dict]) -> list[str]:
    lines = ["| GPUs | C | head | rows/GPU | sampled k | state GiB | logits GiB | peak GiB | payload MiB/step "
             "| ring wire MiB/step |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = _head_label(r["head"], r["sample_rate"])
        lines.append(f"| {r['world']} | {r['classes'] / 1e6:g}M | {head} | {r['local_classes']:,} | "
                     f"{r['sampled_rows']:,} | {r['state_bytes'] / GiB:,.1f} | {r['logits_bytes'] / GiB:,.1f} | "
                     f"{r['peak_bytes'] / GiB:,.1f} | {r['comm_payload_bytes'] / MiB:,.1f} | "
                     f"{r['comm_wire_bytes'] / MiB:,.1f} |")
    return lines


def _key(row: dict) -> tuple:
    return row["head"], row.get("sample_rate"), row["classes"], row["dim"], row["world"]


def _row_name(key: list) -> str:
    head, rate, c, d, w = key
    return f"{_head_label(head, rate)} C={c:,} d={d} W={w}"


def _merged(old: dict, new: dict) -> dict:
    """``old``'s rows with those of the same configuration replaced by ``new``'s (each row keeps the command and
    load it was measured under in ``setup.merged``)."""
    fresh = {_key(r): r for r in new["rows"]}
    rows = [fresh.pop(_key(r), r) for r in old["rows"]] + list(fresh.values())
    merged = {**old, "rows": rows}
    merged["setup"] = {**old["setup"], "merged": old["setup"].get("merged", []) + [
        {"command": new["setup"]["command"], "mem_fraction": new["setup"]["mem_fraction"],
         "uptime_before": new["uptime_before"], "uptime_after": new["uptime_after"],
         "rows": [list(_key(r)) for r in new["rows"]]}]}
    return merged


def render(saved: dict) -> str:
    s = saved["setup"]
    mach = saved["machine"]
    lines = [
        "# Sharded softmax + center-loss head vs the replicated dense head under DDP (CPU, gloo)", "",
        f"Machine: {mach.get('cpu')}, {mach.get('cpu_count')} cores, {mach.get('memory_gb')} GB RAM, torch "
        f"{mach.get('torch')}; shared with other users. Load before: `{saved['uptime_before']}`; after: "
        f"`{saved['uptime_after']}`." + "".join(
            f" Rows {'; '.join(_row_name(k) for k in m['rows'])} rerun by `{m['command']}` (load before "
            f"`{m['uptime_before']}`, after "
            f"`{m['uptime_after']}`)." for m in saved["setup"].get("merged", [])), "",
        f"Global batch {s['batch']} (batch/W per rank), SGD momentum 0.9, lambda {LAM}, alpha {ALPHA}, "
        f"validate=False; median of {s['steps']} steps after {s['warmup']} warm-up; W gloo processes on this "
        f"CPU, {s['threads']} torch threads each (cores/W unless set). Times are rank 0's; with W > cores the "
        "processes share cores, so times at W = 4 on 2 cores measure contention, not scaling.", "",
        "Memory: *state* is the head's weights + gradient + momentum + centers measured from its tensors "
        "(model in brackets); *peak RSS +* is the peak resident set over the steps minus the RSS before the "
        "head was built (includes DDP's buckets and the logits). Communication: bytes per step per rank that "
        "the collectives carry (gathered output, reduced input), counted by wrapping torch.distributed, plus "
        "DDP's all-reduce counted as the gradient size it holds (its share in the last column).", "",
        *_measured_lines(saved["rows"]), "",
        "## Model at scale (d=512, fp32, 256 per GPU)", "",
        "From `head_model()` in this script (validated against the rows above). *payload* is what the "
        "collectives carry per GPU and step; *ring wire* what a ring algorithm sends (2(W-1)/W x for "
        "all-reduce). The dense head cannot hold 100M classes on any GPU; the sharded head's logits at r = 1 "
        "are b x C x 8 bytes per GPU whatever W is (N = W b rows times C/W columns), which is why Partial FC "
        "samples.", "",
        *_model_lines(saved["model"]), "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--big-classes", type=int, default=10_000_000, help="one more C at --big-dim (0: none)")
    ap.add_argument("--big-dim", type=int, default=128)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1], help="sample rates of the sharded head")
    ap.add_argument("--batch", type=int, default=256, help="global batch")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cores // W)")
    ap.add_argument("--mem-fraction", type=float, default=0.8, help="skip configs needing more of MemAvailable")
    ap.add_argument("--plan", action="store_true", help="only list the configurations, the modelled memory and "
                    "which would be skipped")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--merge", action="store_true", help="add these rows to the saved JSON in --out (replacing "
                    "rows of the same configuration), e.g. to rerun the skipped ones with a larger --mem-fraction")
    ap.add_argument("--render", nargs="?", const=str(OUT / f"{NAME}.json"), metavar="JSON",
                    help="only regenerate the .md from a saved .json")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        write_text(Path(args.render).with_suffix(".md"), render(saved) + "\n")
        print(f"wrote {Path(args.render).with_suffix('.md')}")
        return 0
    if args.plan:
        for cfg in grid(args):
            _print_plan(cfg, args)
        return 0
    out = check_output_dir(args.out)
    before = uptime()
    rows = []
    for cfg in grid(args):
        row = run_config(cfg, args)
        _print_row(row)
        rows.append(row)
    saved = {"setup": {"batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                       "threads": args.threads or "cores // W", "mem_fraction": args.mem_fraction,
                       "command": " ".join(sys.argv)},
             "machine": machine_info("cpu"), "uptime_before": before, "uptime_after": uptime(),
             "rows": rows, "model": model_tables()}
    if args.merge:
        saved = _merged(json.loads((out / f"{NAME}.json").read_text()), saved)
    write_json(out / f"{NAME}.json", saved)
    write_text(out / f"{NAME}.md", render(saved) + "\n")
    print(f"wrote {out / (NAME + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
