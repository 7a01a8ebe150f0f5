"""MNIST data loading and a short real run of the toy experiment: center loss tightens the classes."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from conftest import DATA

from centerloss.data.mnist import FILES, load_mnist, resolve_mnist_dir
from centerloss.errors import DataError
from centerloss.eval.compactness import class_compactness
from centerloss.experiments.mnist import load_config, run_experiment

MNIST = DATA / "mnist"
needs_mnist = pytest.mark.usefixtures("mnist_dir")


def test_missing_dir_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError, match="--download") as e:
        resolve_mnist_dir(tmp_path / "nowhere")
    assert "train-images-idx3-ubyte.gz" in str(e.value) and str(tmp_path / "nowhere") in str(e.value)


def _write_fake(d: Path, n: int = 3, magic_img: int = 2051, truncate: bool = False) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        px = bytes(n * 28 * 28 - (10 if truncate else 0))
        (d / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", magic_img, n, 28, 28) + px))
        (d / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, n) + bytes(n)))


def test_reads_idx_and_rejects_bad_files(tmp_path):
    _write_fake(tmp_path / "ok")
    tr, te = load_mnist(tmp_path / "ok")
    assert tr.images.shape == (3, 28, 28) and tr.labels.dtype == torch.int64
    _write_fake(tmp_path / "magic", magic_img=1234)
    with pytest.raises(DataError, match="magic"):
        load_mnist(tmp_path / "magic")
    _write_fake(tmp_path / "short", truncate=True)
    with pytest.raises(DataError, match="truncated"):
        load_mnist(tmp_path / "short")
    _write_fake(tmp_path / "notgz")
    (tmp_path / "notgz" / next(iter(FILES))).write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="gzip"):
        load_mnist(tmp_path / "notgz")


def test_compactness_metric_on_known_clusters():
    f = torch.tensor([[0.0, 1], [0, -1], [10, 1], [10, -1]]).numpy()
    m = class_compactness(f, [0, 0, 1, 1])
    assert m["intra_mean"] == pytest.approx(1.0) and m["inter_mean"] == pytest.approx(10.0)
    assert m["compactness"] == pytest.approx(0.1)
    # scale-free: shrinking every feature does not make classes "tighter"
    assert class_compactness(f * 1e-3, [0, 0, 1, 1])["compactness"] == pytest.approx(0.1)


def test_idx_header_cut_short_wrong_size_and_bad_labels(tmp_path):
    _write_fake(tmp_path / "hdr")
    (tmp_path / "hdr" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 2051, 3)))
    with pytest.raises(DataError, match="too short for an IDX header"):
        load_mnist(tmp_path / "hdr")
    d = tmp_path / "size"
    _write_fake(d)
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, 3, 20, 20) + bytes(1200)))
    with pytest.raises(DataError, match="20x20, MNIST's are 28x28"):
        load_mnist(d)
    d = tmp_path / "labels"
    _write_fake(d)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, 3) + bytes([1, 12, 3])))
    with pytest.raises(DataError, match="label 12 at index 1 is outside 0..9"):
        load_mnist(d)


def test_download_offline_is_one_clear_error(tmp_path):
    from centerloss.data.mnist import download_mnist

    with pytest.raises(DataError, match="cannot download .*offline"):
        download_mnist(tmp_path / "dl", mirror="http://127.0.0.1:9/")


@needs_mnist
def test_real_data_shapes():
    tr, te = load_mnist(MNIST)
    assert tr.images.shape == (60000, 28, 28) and te.images.shape == (10000, 28, 28)
    assert set(te.labels.unique().tolist()) == set(range(10))


def _small(**train) -> dict:
    """A short run on a subset, through the engine (overrides of the mnist preset)."""
    t = {"schedule": {"max_steps": 300, "kwargs": {"milestones": [240], "gamma": 0.2}}, "optimizer": {"lr": 0.01},
         "data": {"batch_size": 64}, "runtime": {"device": "cpu", "progress": False}}
    for k, v in train.items():
        t[k] = {**t.get(k, {}), **v}
    return {"train": t, "train_subset": 4000, "test_subset": 1000, "train_eval_images": 1000, "plot_points": 500,
            "data_dir": str(MNIST)}


@needs_mnist
def test_center_loss_tightens_classes_on_real_mnist(tmp_path):
    """Paper Sec. 3 claim on a short real run (subset): joint supervision gives tighter classes than softmax."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = load_config("quick", extra={**_small(), "lambdas": [0.0, 0.1]})
    report = run_experiment(cfg, tmp_path, preset="test")
    soft, joint = report["runs"]
    assert soft["lam"] == 0.0 and joint["lam"] == 0.1
    assert soft["test_accuracy"] > 0.5 and joint["test_accuracy"] > 0.5  # both actually learned
    assert joint["compactness"] < 0.8 * soft["compactness"], (soft["compactness"], joint["compactness"])
    for name in ("report.json", "report.md", "config.yaml", "fig2_softmax.png", "fig3_lambdas.png"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "report.json").read_text())["runs"][1]["compactness"] == joint["compactness"]
    assert "![fig2](fig2_softmax.png)" in (tmp_path / "report.md").read_text()
    # every run trained through the engine: its run folder, log and checkpoint; a rerun resumes (no new steps)
    assert (tmp_path / "lambda_0.1" / "train_log.csv").is_file()
    again = run_experiment(cfg, tmp_path, preset="test")
    for a, b in zip(again["runs"], report["runs"], strict=True):
        assert (a["test_accuracy"], a["compactness"]) == (b["test_accuracy"], b["compactness"])


@needs_mnist
def test_update_rules_and_center_trajectories(tmp_path):
    cfg = load_config("updates", extra={**_small(schedule={"max_steps": 60}), "lambdas": [0.1],
                                        "trajectory_every": 20})
    report = run_experiment(cfg, tmp_path, preset="updates")
    assert [r["update"] for r in report["runs"]] == ["paper", "learnable", "caffe"]
    assert set(report["trajectories"]) == {"0.1/paper", "0.1/learnable", "0.1/caffe"}
    moved = {k: v["path_length_mean"] for k, v in report["trajectories"].items()}
    assert all(v > 0 for v in moved.values()), moved
    assert (tmp_path / "center_trajectories.png").is_file() and (tmp_path / "lambda_0.1_caffe").is_dir()


@needs_mnist
def test_finished_runs_are_read_back_and_identical_ones_reused_from_another_folder(tmp_path, monkeypatch):
    import centerloss.experiments.mnist as mnist
    from centerloss.errors import ConfigError

    small = {**_small(schedule={"max_steps": 30}), "train_subset": 1000, "test_subset": 500, "train_eval_images": 500}
    first = run_experiment(load_config("quick", extra={**small, "lambdas": [0.0, 0.1]}), tmp_path / "a", preset="t")
    assert {"mnist_result.json", "measured.npz"} <= {p.name for p in (tmp_path / "a" / "lambda_0.1").iterdir()}
    trained, real = [], mnist._train_and_measure
    monkeypatch.setattr(mnist, "_train_and_measure", lambda c, t, lam, u, d: trained.append(lam) or real(c, t, lam, u, d))
    again = run_experiment(load_config("quick", extra={**small, "lambdas": [0.0, 0.1]}), tmp_path / "a", preset="t")
    assert trained == [] and again["runs"] == first["runs"]  # read back, nothing trained or measured again
    # another folder: the identical runs are copied (record, features, log; no checkpoints), the new lambda trained
    cfg = load_config("quick", extra={**small, "lambdas": [0.0, 0.1, 0.01], "reuse": [str(tmp_path / "a")]})
    b = run_experiment(cfg, tmp_path / "b", preset="t")
    assert trained == [0.01] and b["runs"][:2] == first["runs"]
    assert b["reused"] == {"lambda_0": str(tmp_path / "a" / "lambda_0"), "lambda_0.1": str(tmp_path / "a" / "lambda_0.1")}
    assert not (tmp_path / "b" / "lambda_0" / "checkpoints").exists()
    assert "lambda_0 from" in (tmp_path / "b" / "report.md").read_text()
    # a different setup is not reused, and a folder's own record of another setup is refused, not read back
    other = {**small, "train": {**small["train"], "optimizer": {"lr": 0.02}}, "lambdas": [0.0]}
    run_experiment(load_config("quick", extra={**other, "reuse": [str(tmp_path / "a")]}), tmp_path / "c", preset="t")
    assert trained == [0.01, 0.0] and not (tmp_path / "c" / "lambda_0" / "reused_from.json").exists()
    with pytest.raises(ConfigError, match="lambda_0 holds a finished run of a different setup: optimizer.lr"):
        run_experiment(load_config("quick", extra=other), tmp_path / "b", preset="t")
    # a longer schedule trains the copied run on (from scratch here: no checkpoints came with it) and measures again
    longer = {**small, "train": {**small["train"], "schedule": {**small["train"]["schedule"], "max_steps": 35}}, "lambdas": [0.0]}
    assert run_experiment(load_config("quick", extra=longer), tmp_path / "b", preset="t")["reused"] == {}
    assert trained == [0.01, 0.0, 0.0] and json.loads((tmp_path / "b" / "lambda_0" / "mnist_result.json").read_text(
        ))["train_config"]["schedule"]["max_steps"] == 35
    with pytest.raises(DataError, match="reuse: .*nowhere is not a folder"):
        run_experiment(load_config("quick", extra={**other, "reuse": [str(tmp_path / "nowhere")]}), tmp_path / "d")


@needs_mnist
def test_divergence_is_reported_as_non_finite(tmp_path):
    from centerloss.errors import NonFiniteLossError

    cfg = load_config("quick", extra={**_small(optimizer={"lr": 50.0}, schedule={"max_steps": 30}),
                                      "lambdas": [0.0], "train_subset": 256, "test_subset": 64})
    with pytest.raises(NonFiniteLossError, match="Lower optimizer.lr"):
        run_experiment(cfg, tmp_path, preset="test")


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from centerloss.cli import main

    assert main(["mnist", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "centerloss mnist: error: MNIST not found" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["mnist", "--preset", "nope"]) == 2
    assert "shipped" in capsys.readouterr().err
    assert main(["mnist", "--set", "no_such_key=1"]) == 2
    assert "unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [{"lambdas": [-1.0]}, {"updates": ["sgd"]}, {"train": {"optimizer": {"lr": 0}}},
                                 {"train": {"aux": {"kwargs": {"alpha": 2.0}}}}, {"workers": 0},
                                 {"train": {"aux": {"kwargs": {"update": "caffe"}}}}])
def test_config_rejects_bad_values_before_loading_data(bad):
    from centerloss.errors import ConfigError

    with pytest.raises(ConfigError):
        load_config("quick", extra=bad)
