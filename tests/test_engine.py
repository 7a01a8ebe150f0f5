"""Training engine: exact resume, the NaN guard, verified atomic checkpoints, presets and overrides, data order,
parameter groups, the run lock, zero host syncs per step, and the cv2-then-fork deadlock."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_cfg, tiny_overrides
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from centerloss.config import PRESET_DIR
from centerloss.engine import checkpoint as ck
from centerloss.engine.config import TrainConfig, apply, load_train_config, resume_conflicts
from centerloss.engine.data import EpochSampler
from centerloss.engine.logs import read_csv
from centerloss.engine.parts import build_objective, build_optimizer, build_schedule
from centerloss.engine.syncs import SyncCounter
from centerloss.engine.trainer import Trainer
from centerloss.errors import ConfigError, DataError, LockedError, NonFiniteLossError
from centerloss.models import create_model
from centerloss.models.io import load_model

METRICS = ["step", "epoch", "lr", "loss", "softmax", "aux", "accuracy"]


def _metrics(run: Path) -> list[dict[str, str]]:
    return [{k: r[k] for k in METRICS} for r in read_csv(run / "train_log.csv")]


class Crash(RuntimeError):
    pass


def _crash_at(step: int):
    def cb(trainer, row):
        if trainer.step == step:
            raise Crash(f"simulated kill after step {step}")
    return cb


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.mark.parametrize("aux, channels_last", [("center", False), ("none", False), ("center", True)])
def test_exact_resume_after_a_mid_epoch_crash(faces, tmp_path, aux, channels_last) -> None:
    over = {"aux.name": aux, "aux.kwargs": {"alpha": 0.5} if aux == "center" else {},
            "runtime.channels_last": channels_last}  # channels_last: momentum must come back in that layout
    Trainer(tiny_cfg(faces, tmp_path / "ref", **over)).fit()
    run = tmp_path / "crashed"
    cfg = tiny_cfg(faces, run, **over)
    with pytest.raises(Crash):
        Trainer(cfg, callbacks=[_crash_at(5)]).fit()  # step 5 = epoch 1, batch 2; last checkpoint: step 4
    last = ck.read_checkpoint(run)
    assert last.step == 4
    assert last.state["sampler"] == {"seed": 0, "epoch": 1, "consumed_batches": 1, "num_samples": 24}
    assert len(_metrics(run)) == 5  # the crashed run had logged step 5 already
    # resume with a different worker count (forkserver workers): the data order must not depend on it
    summary = Trainer(apply(cfg, {"runtime.resume": "auto", "data.workers": 2})).fit()
    assert summary["steps"] == 9 and summary["steps_this_session"] == 5
    for name in ("model.safetensors", "checkpoints/step_00000009/objective.safetensors",
                 "checkpoints/step_00000009/optimizer.safetensors"):
        _assert_same_tensors(load_file(str(tmp_path / "ref" / name)), load_file(str(run / name)))
    if aux == "center":
        centers = load_file(str(run / "checkpoints/step_00000009/objective.safetensors"))["aux.centers"]
        assert centers.abs().sum() > 0  # the centers did move
    assert _metrics(run) == _metrics(tmp_path / "ref")


def test_nan_guard_takes_no_step_and_keeps_the_last_good_checkpoint(faces, tmp_path) -> None:
    run = tmp_path / "nan"
    seen = {}

    def poison(trainer, row):
        if trainer.step == 3:  # after the checkpoint at step 2: every later step sees NaN features
            with torch.no_grad():
                p = next(trainer.net.parameters())
                p.fill_(float("nan"))
            seen["centers"] = trainer.objective.aux.centers.clone()
            seen["head"] = trainer.objective.head.weight.detach().clone()

    cfg = tiny_cfg(faces, run, **{"runtime.log_every": 3, "runtime.ckpt_every": 2})
    with pytest.raises(NonFiniteLossError, match=r"at step 3 \(epoch 1, batch 0\).*step_00000002"):
        Trainer(cfg, callbacks=[poison]).fit()
    last = ck.read_checkpoint(run)
    assert last.step == 2  # no checkpoint at step 4 (the next checkpoint step) from the bad state
    for t in load_file(str(last.path / "objective.safetensors")).values():
        assert torch.isfinite(t).all()
    # steps 3..5 were skipped on the device: neither the classifier nor the centers moved
    t = Trainer(cfg)
    assert seen["centers"].isfinite().all() and seen["head"].isfinite().all()
    net, meta = load_model(last.path / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in net.parameters()) and meta["step"] == 2
    del t


def test_nan_gradients_skip_the_optimizer_step(faces, tmp_path) -> None:
    run = tmp_path / "nangrad"
    snap = {}

    def poison_grads(trainer, row):  # finite loss, NaN gradients from the next backward on
        if trainer.step == 2:  # just after the checkpoint at step 2
            next(trainer.net.parameters()).register_hook(lambda g: g * float("nan"))
        if trainer.step in (2, 3):
            snap[trainer.step] = trainer.objective.head.weight.detach().clone()

    cfg = tiny_cfg(faces, run, **{"runtime.log_every": 100, "runtime.ckpt_every": 2})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradients at step 2 .*step_00000002"):
        Trainer(cfg, callbacks=[poison_grads]).fit()
    assert torch.equal(snap[2], snap[3])  # the bad step moved nothing
    assert ck.read_checkpoint(run).step == 2  # and no checkpoint was written at step 4
    net, _ = load_model(ck.read_checkpoint(run).path / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_no_host_sync_in_the_steady_state_step(faces, tmp_path) -> None:
    for aux, kw in (("center", {"alpha": 0.5}), ("center", {"update": "caffe"}), ("none", {}),
                    ("contrastive", {"margin": 1.0, "reduction": "balanced"}), ("triplet", {"margin": 0.2})):
        cfg = tiny_cfg(faces, tmp_path / f"sync_{aux}_{kw.get('update', kw.get('reduction', 'x'))}", **{
            "aux.name": aux, "aux.kwargs": kw, "runtime.log_every": 100, "runtime.ckpt_every": 100,
            "schedule.epochs": 1})
        t = Trainer(cfg)
        counts = []
        orig = t.train_step

        def counted(x, y, _orig=orig, _counts=counts):
            with SyncCounter() as s:
                _orig(x, y)
            _counts.append(s.ops)

        t.train_step = counted
        t.fit()
        assert len(counts) == 3
        assert all(sum(c.values()) == 0 for c in counts), (aux, kw, counts)


def test_sync_counter_counts_the_usual_culprits() -> None:
    x = torch.randn(5)
    with SyncCounter() as s:
        x.sum().item()
        bool(x.max() > 0)
        x.tolist()
        _ = x[x > 0]
        torch.unique(x)
    assert s.count == 5, s.ops


def test_checkpoint_contents_hashes_and_corruption(faces, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = tiny_cfg(faces, run, **{"schedule.epochs": 1, "runtime.keep_last": 1})
    Trainer(cfg).fit()
    kept = ck.list_checkpoints(run / "checkpoints")
    assert [p.name for p in kept] == ["step_00000003"]  # keep_last=1 pruned step 2
    state = json.loads((kept[0] / "state.json").read_text())
    assert state["classes"] == ["id0", "id1", "id2", "id3"] and state["step"] == 3
    assert {"torch_cpu", "numpy", "python"} <= set(state["rng"][0])
    assert state["config"]["aux"]["name"] == "center"
    assert set(state["files"]) == {"model.safetensors", "objective.safetensors", "optimizer.safetensors"}
    assert all(len(h) == 64 for h in state["files"].values())
    net, meta = load_model(kept[0] / "model.safetensors")  # the eval CLI loads exactly this
    assert meta["classes"] == state["classes"] and net.embed_dim == 8
    assert (run / "config.yaml").is_file() and (run / "model.safetensors").is_file()
    # a crash while writing leaves a hidden temp folder and maybe a stale pointer: both are ignored
    (run / "checkpoints" / ".tmp-step_00000004").mkdir()
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    assert ck.latest_checkpoint(run / "checkpoints") == kept[0]
    # flipped bytes inside the centers table: refused on resume, not resumed silently
    f = kept[0] / "objective.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="objective.safetensors is corrupt"):
        Trainer(apply(cfg, {"runtime.resume": "auto", "schedule.epochs": 2})).fit()
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt"):
        Trainer(apply(cfg, {"runtime.resume": "auto", "schedule.epochs": 2})).fit()


def test_rng_states_round_trip() -> None:
    torch.manual_seed(1)
    s = ck.rng_state()
    a = (torch.rand(3), np.random.rand(), __import__("random").random())
    ck.set_rng_state(s)
    b = (torch.rand(3), np.random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_resume_rules(faces, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = tiny_cfg(faces, run, **{"schedule.epochs": 1})
    first = Trainer(cfg).fit()
    again = Trainer(apply(cfg, {"runtime.resume": "auto"})).fit()  # finished: nothing to do, same final row
    assert again["steps_this_session"] == 0 and again["final"] == first["final"] and first["final"]["step"] == 3
    with pytest.raises(DataError, match="already holds checkpoints"):
        Trainer(cfg).fit()
    with pytest.raises(ConfigError, match="aux.lam"):
        Trainer(apply(cfg, {"runtime.resume": "auto", "aux.lam": 0.5})).fit()
    # extending a finished run is allowed (max_steps/epochs are free keys) and continues from its step; the data
    # folder need not be given again (it comes from the checkpoint)
    summary = Trainer(apply(cfg, {"runtime.resume": "auto", "schedule.epochs": 2, "data.root": ""})).fit()
    assert summary["steps"] == 6 and summary["steps_this_session"] == 3
    for st in (run / "checkpoints").glob("step_*/state.json"):  # every checkpoint unusable
        st.unlink()
    with pytest.raises(DataError, match="refusing to restart from step 0"):
        Trainer(apply(cfg, {"runtime.resume": "auto", "schedule.epochs": 3})).fit()
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(DataError, match="no checkpoint"):
        Trainer(apply(cfg, {"runtime.resume": str(run / "checkpoints")})).fit()


def test_resume_refuses_a_changed_dataset(faces, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = tiny_cfg(faces, run, **{"schedule.epochs": 1})
    Trainer(cfg).fit()
    grown = tmp_path / "grown"
    shutil.copytree(faces, grown)
    shutil.copy(grown / "id0" / "id0_0001.png", grown / "id0" / "id0_0099.png")  # same identities, one more image
    with pytest.raises(DataError, match="trained on 24 images"):
        Trainer(apply(cfg, {"runtime.resume": "auto", "schedule.epochs": 2, "data.root": str(grown)})).fit()


def test_a_second_training_on_the_same_folder_is_refused(faces, tmp_path) -> None:
    run = tmp_path / "locked"
    cfg = tiny_cfg(faces, run, **{"schedule.epochs": 1})
    errors = []

    def try_second(trainer, row):
        if trainer.step == 1:
            try:
                Trainer(cfg).fit()
            except LockedError as e:
                errors.append(str(e))

    Trainer(cfg, callbacks=[try_second]).fit()
    import os

    assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0]
    # the lock died with the run: resuming the finished folder is fine
    assert Trainer(apply(cfg, {"runtime.resume": "auto"})).fit()["steps"] == 3


def test_presets_and_overrides() -> None:
    names = sorted(p.stem for p in (PRESET_DIR / "train").glob("*.yaml"))
    assert {"paper_A", "paper_B", "paper_C", "lfw_cpu_A", "lfw_cpu_B", "lfw_cpu_C"} <= set(names)
    for n in names:
        load_train_config(n)
    a, c = load_train_config("paper_A"), load_train_config("paper_C")
    assert (a.aux.name, c.aux.name, c.aux.lam, c.aux.kwargs["alpha"]) == ("none", "center", 0.003, 0.5)
    diff = {x.split(":")[0] for x in resume_conflicts(dataclasses.asdict(a), c)}
    assert diff and all(k.startswith(("aux.", "runtime.out_dir")) for k in diff)  # A and C differ only in aux
    assert c.model.name == "face_resnet27" and c.schedule.kwargs["milestones"] == [16000, 24000]
    b = load_train_config("paper_B")
    assert b.schedule.kwargs == {"milestones": [24000, 36000], "gamma": 0.1} and b.schedule.max_steps == 42000
    o = load_train_config("paper_C", ["optimizer.lr=0.05", "model.kwargs.embed_dim=256", "verify.folds=[0, 1]"])
    assert o.optimizer.lr == 0.05 and o.model.kwargs == {"embed_dim": 256} and o.verify.folds == [0, 1]


@pytest.mark.parametrize("override, message", [
    (["aux.name=centr"], "unknown aux loss 'centr'"),
    (["runtime.amp=fp32"], "'fp32' is not one of"),
    (["head.name=arcfac"], "unknown head 'arcfac'"),
    (["head.kwargs.margn=0.5"], "unknown argument"),
    (["model.kwargs={width: 8}", "model.kwargs.width=4"], "conflicting overrides"),
    (["optimizer.lr=0.1", "optimizer.lr=0.2"], "given twice"),
    (["optimizer.nope=1"], "unknown key"),
    (["schedule.unit=epochs"], "is not one of"),
    (["data.batch_size=0"], "batch_size"),
    (["optimizer.lr=-1"], "optimizer.lr must be > 0"),
    (["aux.kwargs.update=caffe", "runtime.amp=fp16"], "caffe cannot be used with runtime.amp=fp16"),
    (["aux.kwargs.alpha=2"], r"alpha must lie in \[0, 1\]"),
    (["head.name=arcface", "head.kwargs={m: -1}"], "m"),
    (["head.name=sharded", "aux.name=contrastive", "aux.kwargs={margin: 1.0}"], "shards the center loss only"),
])
def test_bad_config_values_fail_when_loaded(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config("lfw_cpu_C", override)


def test_cli_resolves_flags_and_saves_config(faces, tmp_path, capsys) -> None:
    from centerloss.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--preset", "paper_C", "--data", str(faces), "--out", str(out),
               "--set", "model.name=face_small", "model.kwargs={width: 4, embed_dim: 8}", "data.workers=0",
               "runtime.progress=false", "runtime.channels_last=false", "aux.lam=0.02",
               "--batch-size", "8", "--max-steps", "2", "--device", "cpu", "--amp", "none"])
    assert rc == 0
    saved = load_train_config(str(out / "config.yaml"))
    assert (saved.aux.name, saved.aux.lam, saved.data.batch_size, saved.schedule.max_steps) == ("center", 0.02, 8, 2)
    assert saved.schedule.epochs == 0 and saved.model.name == "face_small"
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:  # on by default when installed (an extra)
        assert list((out / "tb").glob("events.out.tfevents.*"))
    capsys.readouterr()
    assert main(["train", "--preset", "no_such_preset"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_preset" in err[0]
    assert main(["train", "--preset", "lfw_cpu_C", "--set", "aux.name=centr", "--print-config"]) == 2


def test_global_batches_do_not_depend_on_world_size() -> None:
    n, b = 50, 8
    one = [i for i, _ in EpochSampler(n, 1, 0, seed=3)]
    assert one == list(DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True))
    for world in (2, 4):
        ranks = [[i for i, _ in EpochSampler(n, world, r, seed=3)] for r in range(world)]
        lb = b // world
        for k in range(n // b):
            union = sorted(i for r in ranks for i in r[k * lb:(k + 1) * lb])
            assert union == sorted(one[k * b:(k + 1) * b])
    s = EpochSampler(n, 1, 0, seed=3)
    s.set_epoch(2, skip=16)
    keys = list(s)
    assert keys[0][1] == 2 and len(keys) == n - 16 and [i for i, _ in keys] == [i for i, _ in _epoch(n, 2)][16:]


def _epoch(n: int, epoch: int):
    s = EpochSampler(n, 1, 0, seed=3)
    s.set_epoch(epoch)
    return list(s)


def test_param_groups_follow_caffe_face() -> None:
    net = create_model("face_small", width=4, embed_dim=8)
    cfg = apply(TrainConfig(), {"aux.name": "center"})
    obj = build_objective(cfg, 8, 5)
    opt = build_optimizer(cfg.optimizer, net, obj)
    w, bias = opt.param_groups
    assert (w["weight_decay"], w["lr_mult"], bias["weight_decay"], bias["lr_mult"]) == (5e-4, 1.0, 0.0, 2.0)
    assert any(p is obj.head.weight for p in w["params"]) and any(p is obj.head.bias for p in bias["params"])
    assert not any(p is obj.aux.centers for g in opt.param_groups for p in g["params"])  # Eq. 4 moves them
    learn = build_objective(apply(cfg, {"aux.kwargs": {"update": "learnable"}}), 8, 5)
    g = build_optimizer(cfg.optimizer, net, learn).param_groups[-1]
    assert g["params"] == [learn.aux.centers] and g["weight_decay"] == 0.0
    caffe = build_objective(apply(cfg, {"aux.kwargs": {"update": "caffe"}}), 8, 5)
    g = build_optimizer(cfg.optimizer, net, caffe).param_groups[-1]  # caffe-face: lr_mult 1, decay_mult 2
    assert g["params"] == [caffe.aux.centers] and (g["lr_mult"], g["weight_decay"]) == (1.0, 1e-3)


def test_schedules_and_warmup() -> None:
    cfg = load_train_config("lfw_cpu_A").schedule  # epochs 20, milestones [12, 17] epochs, 100 warm-up steps
    f = build_schedule(cfg, 20 * 50, 50)
    assert f(0) == pytest.approx(0.01) and f(99) == 1.0 and f(599) == 1.0
    assert f(600) == pytest.approx(0.1) and f(850) == pytest.approx(0.01)
    cos = build_schedule(apply(TrainConfig(), {"schedule.name": "cosine", "schedule.kwargs": {"final": 0.1}}).schedule,
                         100, 10)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.55) and cos(100) == pytest.approx(0.1)


def test_recordio_and_identity_filters_through_the_engine(faces, tmp_path) -> None:
    from centerloss.data.recordio import IRHeader, RecordIOWriter, pack
    from centerloss.engine.setup import build_dataset

    files = sorted(faces.rglob("*.png"))  # the same 24 crops as an InsightFace-style .rec/.idx
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        for k, f in enumerate(files):
            w.write(pack(IRHeader(0, float(int(f.parent.name[2:])), k, 0), f.read_bytes()), key=k)
    cfg = tiny_cfg(tmp_path / "train.rec", tmp_path / "rec_run", **{"data.kind": "recordio", "schedule.epochs": 1})
    summary = Trainer(cfg).fit()
    assert summary["steps"] == 3 and summary["num_classes"] == 4
    assert json.loads((tmp_path / "rec_run" / "classes.json").read_text()) == ["0", "1", "2", "3"]
    (tmp_path / "drop.txt").write_text("id1\nid3\n")
    ds = build_dataset(tiny_cfg(faces, tmp_path / "x", **{"data.exclude_identities": str(tmp_path / "drop.txt")}))
    assert ds.classes == ["id0", "id2"] and len(ds) == 12
    ds = build_dataset(tiny_cfg(faces, tmp_path / "x", **{"data.identities": str(tmp_path / "drop.txt")}))
    assert ds.classes == ["id1", "id3"]
    (tmp_path / "list.txt").write_text("id2/id2_0001.png\nid2/id2_0002.png\nid0/id0_0003.png\n")
    ds = build_dataset(tiny_cfg(faces, tmp_path / "x", **{"data.file_list": str(tmp_path / "list.txt"),
                                                          "data.min_images": 2}))
    assert ds.classes == ["id2"] and len(ds) == 2 and ds.index.dropped == {"id0": 1}


def test_dropped_identities_and_single_identity(faces, tmp_path) -> None:
    (faces.parent / "lists").mkdir(exist_ok=True)
    lst = faces.parent / "lists" / "files.txt"
    lst.write_text("\n".join([f"id0/id0_{i:04d}.png" for i in range(1, 7)] + [f"id1/id1_{i:04d}.png" for i in (1, 2)]
                             + ["id2/id2_0001.png"]))
    run = tmp_path / "dropped"
    Trainer(tiny_cfg(faces, run, **{"data.file_list": str(lst), "schedule.epochs": 1})).fit()
    rep = json.loads((run / "data_report.json").read_text())
    assert rep["identities"] == 2 and rep["dropped_identities"]["names"] == {"id2": 1}
    lst.write_text("\n".join(f"id0/id0_{i:04d}.png" for i in range(1, 7)))
    with pytest.raises(DataError, match=re.escape(f"{faces}: the training set has 1 identity (with >= 2 images); "
                                                  "a classifier needs at least 2")):
        Trainer(tiny_cfg(faces, tmp_path / "one", **{"data.file_list": str(lst)})).fit()


def test_truncated_image_stops_training_naming_the_file(faces, tmp_path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(faces, bad)
    victim = bad / "id2" / "id2_0003.png"
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(DataError, match=r"id2_0003.png: (truncated|corrupt) image"):
        Trainer(tiny_cfg(bad, tmp_path / "run", **{"schedule.epochs": 1})).fit()


@pytest.mark.timeout(240)
def test_dataloader_workers_survive_a_parent_that_used_cv2_threads(faces, tmp_path) -> None:
    """Regression: forked workers of a process whose OpenCV thread pool had run hung in cv2.setNumThreads."""
    pytest.importorskip("cv2", reason="the regression needs OpenCV (centerloss[align])")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import cv2, numpy as np
        cv2.setNumThreads(2)
        big = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
        for _ in range(5):
            cv2.resize(big, (1500, 1500)); cv2.GaussianBlur(big, (9, 9), 0)
        from pathlib import Path
        from conftest import tiny_cfg
        from centerloss.engine.trainer import Trainer
        s = Trainer(tiny_cfg(Path({str(faces)!r}), Path({str(tmp_path / 'cv2run')!r}),
                             **{{"data.workers": 2, "schedule.epochs": 2}})).fit()
        print("steps", s["steps"])
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "steps 6" in r.stdout


def test_overrides_reach_the_run(faces, tmp_path) -> None:
    over = tiny_overrides(faces, tmp_path / "o", **{"optimizer.name": "adamw", "optimizer.kwargs": {},
                                                     "optimizer.lr": 1e-3, "schedule.name": "cosine",
                                                     "schedule.kwargs": {}, "schedule.epochs": 1})
    t = Trainer(apply(TrainConfig(), over))
    t.fit()
    assert isinstance(t.optimizer, torch.optim.AdamW) and t.lr < 1e-3


def test_a_held_ctrl_c_that_reaches_another_thread_is_raised_once_after_the_block() -> None:
    """A terminal's Ctrl-C is process-wide: the kernel may hand it to any thread that does not block it (torch's
    and OpenMP's threads, say), and Python then raises it in the main thread wherever that is. Held, it must
    wait for the end of the block, and be raised there exactly once."""
    code = textwrap.dedent("""
        import signal, threading, time
        from centerloss.utils.signals import ctrl_c_held
        ready, done = threading.Event(), threading.Event()
        t = threading.Thread(target=lambda: (ready.set(), done.wait()))
        t.start(); ready.wait()
        steps = []
        try:
            with ctrl_c_held():
                signal.pthread_kill(t.ident, signal.SIGINT)  # to the thread that does not block it
                for i in range(50):
                    time.sleep(0.002)
                steps.append("went on")
        except KeyboardInterrupt:
            steps.append("raised")
        done.set(); t.join()
        time.sleep(0.05)  # nothing further is raised later
        print(steps, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "['went on', 'raised'] True", r.stdout + r.stderr


def test_ctrl_c_while_the_worker_server_starts_is_kept_and_raised_once_it_has_started() -> None:
    """The server must start with Ctrl-C blocked (so it never prints a traceback), and the main process must
    not lose a Ctrl-C that lands in that window (the run would go on): it is raised when the mask is restored.
    The resource tracker's own start unblocks SIGINT, so it must come first."""
    code = textwrap.dedent("""
        import os, signal, multiprocessing.forkserver as fs
        from multiprocessing import resource_tracker
        from centerloss.engine import data
        seen = {}
        def start():  # what the real one does first, then the moment the server would be spawned
            resource_tracker.ensure_running()
            seen["blocked"] = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            os.kill(os.getpid(), signal.SIGINT)
            seen["went on"] = True
        fs.ensure_running = start
        try:
            data._start_forkserver()
        except KeyboardInterrupt:
            print("raised after", sorted(seen.items()))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "raised after [('blocked', True), ('went on', True)]", r.stdout + r.stderr
