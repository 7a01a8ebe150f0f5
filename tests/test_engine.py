"""Training engine: exact resume, NaN guard, atomic checkpoints, presets/overrides, data order, param groups."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from centerloss.config import PRESET_DIR
from centerloss.engine import checkpoint as ck
from centerloss.engine.config import TrainConfig, apply, load_train_config, resume_conflicts
from centerloss.engine.logs import read_csv
from centerloss.engine.trainer import Trainer, build_objective, build_optimizer
from centerloss.errors import DataError, NonFiniteLossError
from centerloss.models import create_model
from centerloss.models.io import load_model

METRICS = ["step", "epoch", "lr", "loss", "softmax", "aux", "accuracy"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """4 synthetic identities x 6 crops of 112x96 (each identity a noisy copy of its own template)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"id{c}").mkdir()
        base = rng.integers(0, 256, (112, 96, 3))
        for i in range(6):
            img = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"id{c}" / f"id{c}_{i + 1:04d}.png"), img)
    return root


def tiny_cfg(data: Path, out: Path, **over) -> TrainConfig:
    """A tiny CPU run: face_small at width 4, global batch 8 -> 3 steps per epoch on 24 images."""
    base = {
        "model.name": "face_small", "model.kwargs": {"width": 4, "embed_dim": 8},
        "data.root": str(data), "data.batch_size": 8, "data.workers": 0,
        "loss.type": "center", "loss.lam": 0.01, "optim.lr": 0.02, "optim.milestones": [5],
        "optim.epochs": 3, "runtime.out_dir": str(out), "runtime.device": "cpu", "runtime.amp": "none",
        "runtime.ckpt_every": 2, "runtime.log_every": 1, "runtime.progress": False, "runtime.tensorboard": False,
    }
    base.update(over)
    return apply(TrainConfig(), base)


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


@pytest.mark.parametrize("loss_type", ["center", "softmax"])
def test_exact_resume_after_a_mid_epoch_crash(faces, tmp_path, loss_type) -> None:
    ref = tiny_cfg(faces, tmp_path / "ref", **{"loss.type": loss_type})
    Trainer(ref).fit()
    run = tmp_path / "crashed"
    cfg = tiny_cfg(faces, run, **{"loss.type": loss_type})
    with pytest.raises(Crash):
        Trainer(cfg, callbacks=[_crash_at(5)]).fit()  # step 5 = epoch 1, batch 2; last checkpoint: step 4
    last = ck.read_checkpoint(run)
    assert last.step == 4
    assert last.state["sampler"] == {"seed": 0, "epoch": 1, "consumed_batches": 1, "num_samples": 24}
    assert len(_metrics(run)) == 5  # the crashed run had logged step 5 already
    # resume with different worker count: the data order must not depend on it
    resumed = apply(cfg, {"runtime.resume": "auto", "data.workers": 2})
    summary = Trainer(resumed).fit()
    assert summary["steps"] == 9 and summary["steps_this_session"] == 5
    for name in ("model.safetensors", "checkpoints/step_00000009/objective.safetensors",
                 "checkpoints/step_00000009/optimizer.safetensors"):
        _assert_same_tensors(load_file(str(tmp_path / "ref" / name)), load_file(str(run / name)))
    if loss_type == "center":
        centers = load_file(str(run / "checkpoints/step_00000009/objective.safetensors"))["aux.centers"]
        assert centers.abs().sum() > 0  # the centers did move
    assert _metrics(run) == _metrics(tmp_path / "ref")


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(faces, tmp_path) -> None:
    run = tmp_path / "nan"

    def poison(trainer, row):
        if trainer.step == 3:  # after the checkpoint at step 2
            with torch.no_grad():
                next(trainer.net.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"NaN/Inf features at step 3.*step_00000002"):
        Trainer(tiny_cfg(faces, run), callbacks=[poison]).fit()
    last = ck.read_checkpoint(run)
    assert last.step == 2
    for t in load_file(str(last.path / "objective.safetensors")).values():
        assert torch.isfinite(t).all()
    net, meta = load_model(last.path / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in net.parameters()) and meta["step"] == 2

    def poison_classifier(trainer, row):  # finite features, non-finite logits -> non-finite loss
        if trainer.step == 3:
            with torch.no_grad():
                trainer.objective.classifier.weight.fill_(float("inf"))

    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3"):
        Trainer(tiny_cfg(faces, tmp_path / "nan2"), callbacks=[poison_classifier]).fit()


def test_checkpoint_contents_and_atomicity(faces, tmp_path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_cfg(faces, run, **{"optim.epochs": 1, "runtime.keep_last": 1})).fit()
    kept = ck.list_checkpoints(run / "checkpoints")
    assert [p.name for p in kept] == ["step_00000003"]  # keep_last=1 pruned step 2
    state = json.loads((kept[0] / "state.json").read_text())
    assert state["classes"] == ["id0", "id1", "id2", "id3"]
    assert {"torch_cpu", "numpy", "python"} <= set(state["rng"][0])
    assert state["config"]["loss"]["type"] == "center" and state["step"] == 3
    net, meta = load_model(kept[0] / "model.safetensors")  # colleagues' eval CLI loads exactly this
    assert meta["classes"] == state["classes"] and net.embed_dim == 8
    assert (run / "config.yaml").is_file() and (run / "model.safetensors").is_file()
    # a crash while writing leaves a hidden temp folder and maybe a stale pointer: both are ignored
    (run / "checkpoints" / ".tmp-step_00000004-1").mkdir()
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    assert ck.latest_checkpoint(run / "checkpoints") == kept[0]
    # the RNG states round-trip
    torch.manual_seed(1)
    s = ck.rng_state()
    a = (torch.rand(3), np.random.rand(), __import__("random").random())
    ck.set_rng_state(s)
    b = (torch.rand(3), np.random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_resume_rules(faces, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = tiny_cfg(faces, run, **{"optim.epochs": 1})
    Trainer(cfg).fit()
    with pytest.raises(DataError, match="already holds checkpoints"):
        Trainer(cfg).fit()
    with pytest.raises(DataError, match="loss.lam"):
        Trainer(apply(cfg, {"runtime.resume": "auto", "loss.lam": 0.5})).fit()
    # extending a finished run is allowed (max_steps/epochs are free keys) and continues from its step
    summary = Trainer(apply(cfg, {"runtime.resume": "auto", "optim.epochs": 2})).fit()
    assert summary["steps"] == 6 and summary["steps_this_session"] == 3
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(DataError, match="no checkpoint"):
        Trainer(apply(cfg, {"runtime.resume": str(run / "checkpoints")})).fit()


def test_presets_and_overrides() -> None:
    names = sorted(p.stem for p in (PRESET_DIR / "face").glob("*.yaml"))
    assert {"paper_A", "paper_B", "paper_C", "lfw_cpu_A", "lfw_cpu_B", "lfw_cpu_C"} <= set(names)
    for n in names:
        load_train_config(n)
    a, c = load_train_config("paper_A"), load_train_config("paper_C")
    assert (a.loss.type, c.loss.type, c.loss.lam, c.loss.alpha) == ("softmax", "center", 0.003, 0.5)
    diff = {x.split(":")[0] for x in resume_conflicts(dataclasses.asdict(a), c)}
    assert diff and all(k.startswith("loss.") for k in diff)  # A and C differ only in the loss
    assert c.model.name == "face_resnet27" and c.optim.milestones == [16000, 24000] and c.optim.max_steps == 28000
    b = load_train_config("paper_B")
    assert b.optim.milestones == [24000, 36000] and b.optim.max_steps == 42000
    o = load_train_config("paper_C", ["optim.lr=0.05", "model.kwargs.embed_dim=256", "verify.folds=[0, 1]"])
    assert o.optim.lr == 0.05 and o.model.kwargs == {"embed_dim": 256} and o.verify.folds == [0, 1]
    with pytest.raises(KeyError):
        load_train_config("paper_C", ["optim.nope=1"])


def test_cli_resolves_flags_and_saves_config(faces, tmp_path) -> None:
    from centerloss.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--preset", "paper_A", "--model-type", "C", "--data", str(faces), "--out", str(out),
               "--model", "face_small", "--set", "model.kwargs={width: 4, embed_dim: 8}", "data.workers=0",
               "runtime.progress=false", "--batch-size", "8", "--max-steps", "2", "--device", "cpu", "--amp", "none",
               "--no-channels-last", "--lam", "0.02"])
    assert rc == 0
    saved = load_train_config(str(out / "config.yaml"))
    assert (saved.loss.type, saved.loss.lam, saved.data.batch_size, saved.optim.max_steps) == ("center", 0.02, 8, 2)
    assert saved.optim.epochs == 0 and saved.model.name == "face_small"
    assert list((out / "tb").glob("events.out.tfevents.*"))  # TensorBoard is on by default when installed
    assert main(["train", "--preset", "no_such_preset"]) == 2


def test_global_batches_do_not_depend_on_world_size() -> None:
    ds = list(range(50))
    b = 8
    one = list(DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True))
    for world in (2, 4):
        ranks = [list(DistributedSampler(ds, num_replicas=world, rank=r, shuffle=True, seed=3, drop_last=True))
                 for r in range(world)]
        lb = b // world
        for k in range(len(ds) // b):
            union = sorted(i for r in ranks for i in r[k * lb:(k + 1) * lb])
            assert union == sorted(one[k * b:(k + 1) * b])


def test_param_groups_follow_caffe_face() -> None:
    cfg = apply(TrainConfig(), {"loss.type": "center"})
    net = create_model("face_small", width=4, embed_dim=8)
    obj = build_objective(cfg, 8, 5)
    opt = build_optimizer(cfg, net, obj)
    w, bias = opt.param_groups
    assert (w["weight_decay"], w["lr_mult"]) == (5e-4, 1.0)
    assert (bias["weight_decay"], bias["lr_mult"]) == (0.0, 2.0)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(obj.classifier.weight) in {id(p) for p in w["params"]} and id(obj.classifier.bias) in {
        id(p) for p in bias["params"]}
    assert id(obj.aux.centers) not in in_opt  # Eq. 4 moves them, not SGD
    learn = build_objective(apply(cfg, {"loss.center_update": "learnable"}), 8, 5)
    assert len(build_optimizer(cfg, net, learn).param_groups) == 3


def test_recordio_and_identity_filters_through_the_engine(faces, tmp_path) -> None:
    from centerloss.data.recordio import IRHeader, RecordIOWriter, pack
    from centerloss.engine.trainer import build_dataset

    # the same 24 crops as an InsightFace-style .rec/.idx (no header record: labels straight from the records)
    files = sorted(faces.rglob("*.png"))
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        for k, f in enumerate(files):
            w.write(pack(IRHeader(0, float(int(f.parent.name[2:])), k, 0), f.read_bytes()), key=k)
    cfg = tiny_cfg(tmp_path / "train.rec", tmp_path / "rec_run", **{"data.kind": "recordio", "optim.epochs": 1})
    summary = Trainer(cfg).fit()
    assert summary["steps"] == 3 and summary["num_classes"] == 4
    assert json.loads((tmp_path / "rec_run" / "classes.json").read_text()) == ["0", "1", "2", "3"]
    # identity lists: keep / exclude
    (tmp_path / "drop.txt").write_text("id1\nid3\n")
    ds = build_dataset(tiny_cfg(faces, tmp_path / "x", **{"data.exclude_identities": str(tmp_path / "drop.txt")}))
    assert ds.classes == ["id0", "id2"] and len(ds) == 12
    ds = build_dataset(tiny_cfg(faces, tmp_path / "x", **{"data.identities": str(tmp_path / "drop.txt")}))
    assert ds.classes == ["id1", "id3"]
    (tmp_path / "list.txt").write_text("id2/id2_0001.png\nid2/id2_0002.png\nid0/id0_0003.png\n")
    ds = build_dataset(tiny_cfg(faces, tmp_path / "x", **{"data.file_list": str(tmp_path / "list.txt"),
                                                          "data.min_images": 2}))
    assert ds.classes == ["id2"] and len(ds) == 2


def test_nan_gradients_stop_before_the_optimizer_step(faces, tmp_path) -> None:
    run = tmp_path / "nangrad"

    def poison_grads(trainer, row):  # finite loss, NaN gradients from the next backward on
        if trainer.step == 3:
            next(trainer.net.parameters()).register_hook(lambda g: g * float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"non-finite gradients at step 3.*step_00000002"):
        Trainer(tiny_cfg(faces, run), callbacks=[poison_grads]).fit()
    net, _ = load_model(ck.read_checkpoint(run).path / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_resume_refuses_a_changed_dataset(faces, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = tiny_cfg(faces, run, **{"optim.epochs": 1})
    Trainer(cfg).fit()
    grown = tmp_path / "grown"
    shutil.copytree(faces, grown)
    shutil.copy(grown / "id0" / "id0_0001.png", grown / "id0" / "id0_0099.png")  # same identities, one more image
    with pytest.raises(DataError, match="trained on 24 images"):
        Trainer(apply(cfg, {"runtime.resume": "auto", "optim.epochs": 2, "data.root": str(grown)})).fit()


def test_truncated_checkpoint_file_gives_a_clear_error(faces, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = tiny_cfg(faces, run, **{"optim.epochs": 1})
    Trainer(cfg).fit()
    last = ck.read_checkpoint(run).path / "optimizer.safetensors"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(DataError, match="unreadable"):
        Trainer(apply(cfg, {"runtime.resume": "auto", "optim.epochs": 2})).fit()
