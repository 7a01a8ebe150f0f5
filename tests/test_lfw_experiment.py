"""A tiny end-to-end LFW experiment: real LFW photos of a few identities, person-disjoint split, models A and C
trained for a few steps, verified on held-out pairs, report written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA, need

from centerloss.errors import DataError
from centerloss.experiments.lfw import _crop_paths, training_split

LFW = DATA / "lfw" / "images"


def _pseudo_align(src: Path, dst: Path) -> None:
    """A stand-in for `centerloss align` (tested elsewhere): the deep-funneled face sits near the centre."""
    img = cv2.imread(str(src))
    crop = img[55:195, 65:185]  # 140x120, the 112x96 aspect ratio
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), cv2.resize(crop, (96, 112), interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="module")
def mini_lfw(tmp_path_factory):
    need(LFW, "LFW images")
    people = sorted(p.name for p in LFW.iterdir() if p.is_dir() and len(os.listdir(p)) >= 5)[:8]
    root = tmp_path_factory.mktemp("lfw_aligned")
    rows = ["path,detected,score,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5,reason"]
    for person in people:
        for k in range(1, 6):
            rel = f"{person}/{person}_{k:04d}.jpg"
            _pseudo_align(LFW / rel, root / rel)
            undetected = person == people[7] and k == 5  # one training crop the detector "missed"
            rows.append(f"{rel},{0 if undetected else 1},0.99,,,,,,,,,,,{'no face' if undetected else ''}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    # two person-disjoint folds of 3 matched + 3 mismatched pairs: fold 1 uses people 0-2, fold 2 people 3-5
    lines = ["2\t3"]
    for f in range(2):
        p = people[3 * f: 3 * f + 3]
        lines += [f"{p[i]}\t1\t{i + 2}" for i in range(3)]
        lines += [f"{p[i]}\t{i + 3}\t{p[(i + 1) % 3]}\t4" for i in range(3)]
    pairs = root.parent / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return root, pairs, people


def test_training_split_is_person_disjoint(mini_lfw) -> None:
    root, _, people = mini_lfw
    files, stats = training_split(root, set(people[:3]), min_images=2, detected_only=True)
    used = {f.split("/")[0] for f in files}
    assert used == set(people[3:]) and stats["identities"] == 5
    assert stats["images"] == 5 * 5 - 1 and stats["dropped_undetected"] == 1
    files, stats = training_split(root, set(people[:3]), min_images=5, detected_only=True)
    assert {f.split("/")[0] for f in files} == set(people[3:7])  # people[7] now has 4 usable crops
    assert len(training_split(root, set(people[:3]), 2, detected_only=False)[0]) == 25
    with pytest.raises(DataError, match="no crop"):
        _crop_paths(root, ["Nobody/Nobody_0001.jpg"])


TINY = ["train.model.kwargs={embed_dim: 8, width: 4, units: [1, 1, 1]}", "train.data.batch_size=8",
        "train.data.workers=0", "train.schedule.epochs=2", "train.schedule.kwargs.milestones=[1]",
        "train.runtime.progress=false", "train.runtime.tensorboard=false", "subfolds=3", "fars=[0.34]"]


def test_tiny_end_to_end_experiment(mini_lfw, tmp_path) -> None:
    from centerloss.cli import main

    root, pairs, people = mini_lfw
    out = tmp_path / "run"
    argv = ["lfw-experiment", "--preset", "tiny", "--aligned", str(root), "--pairs", str(pairs), "--out", str(out),
            "--set", *TINY]
    assert main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["heldout"] == {"folds": [1], "pairs": 6, "identities": 3}
    assert rep["train_split"]["identities"] == 5 and rep["train_split"]["dropped_undetected"] == 1
    train_people = {ln.split("/")[0] for ln in (out / "train_files.txt").read_text().split()}
    assert not train_people & set((out / "heldout_identities.txt").read_text().split())
    for m in ("A", "C"):
        v = rep["runs"][m]["seeds"]["0"]["verification"]
        assert 0.0 <= v["accuracy_mean"] <= 1.0 and 0.0 <= v["auc"] <= 1.0 and v["n_pairs"] == 6
        assert v["n_folds"] == 3 and "sub-folds" in v["protocol"]
        t = rep["runs"][m]["seeds"]["0"]["train"]
        assert t["steps"] == 2 * (24 // 8) and t["num_classes"] == 5
        assert (out / "runs" / m / "seed0" / "model.safetensors").is_file()
        assert (out / "runs" / m / "seed0" / "features.npz").is_file()
    assert rep["runs"]["C"]["seeds"]["0"]["train"]["config"]["aux"]["name"] == "center"
    assert rep["runs"]["A"]["seeds"]["0"]["train"]["config"]["aux"]["name"] == "none"
    d = rep["paired_vs_baseline"]["C"]
    assert d["n"] == 3 and d["wins"] + d["ties"] + d["losses"] == 3
    c, a = (rep["runs"][m]["seeds"]["0"]["verification"]["accuracy_mean"] for m in ("C", "A"))
    assert np.isclose(d["mean"], c - a)
    md = (out / "report.md").read_text()
    assert "| A softmax |" in md and "| C softmax + center |" in md and "roc.png" in md
    assert (out / "roc.png").stat().st_size > 1000
    # a rerun resumes the finished trainings instead of retraining them, and keeps their records
    n_rows = len((out / "runs" / "A" / "seed0" / "train_log.csv").read_text().splitlines())
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["runs"]["A"]["seeds"]["0"]["train"] == rep["runs"]["A"]["seeds"]["0"]["train"]
    assert again["runs"]["C"]["summary"] == rep["runs"]["C"]["summary"]
    assert len((out / "runs" / "A" / "seed0" / "train_log.csv").read_text().splitlines()) == n_rows
    # the markdown is regenerated from the JSON alone
    md = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["lfw-experiment", "--render", str(out / "report.json")]) == 0
    assert (out / "report.md").read_text() == md


def test_grids_seeds_and_selection(mini_lfw, tmp_path) -> None:
    """A sweep (shared points trained once) and a select group (tuned on seed 0, the best rerun on seed 1)."""
    from centerloss.experiments.lfw import load_config, run_experiment

    root, pairs, _ = mini_lfw
    extra = {"aligned": str(root), "pairs": str(pairs), "out_dir": str(tmp_path / "g"), "seeds": [0, 1],
             "runs": {"A": {"preset": "lfw_cpu_A"}, "C01": {"preset": "lfw_cpu_C", "set": {"aux.lam": 0.01}},
                      "boom": {"preset": "lfw_cpu_C", "set": {"optimizer.lr": 1.0e6, "schedule.warmup_steps": 0}}},
             "grids": {"lambda": {"preset": "lfw_cpu_C", "key": "aux.lam", "values": [0.001, 0.003]},
                       "alpha": {"preset": "lfw_cpu_C", "key": "aux.kwargs.alpha", "values": [0.5, 1.0],
                                 "set": {"aux.lam": 0.01}}},
             "select": {"arc": ["lambda=0.001", "lambda=0.003", "boom"]}, "baseline": "A"}
    cfg = load_config("tiny", [t for t in TINY if not t.startswith(("subfolds", "fars"))] + ["subfolds=3",
                                                                                             "fars=[0.34]"], extra)
    rep = run_experiment(cfg, "test")
    chosen = rep["chosen"]["arc"]
    assert chosen in ("lambda=0.001", "lambda=0.003")
    other = "lambda=0.003" if chosen == "lambda=0.001" else "lambda=0.001"
    assert rep["runs"][chosen]["summary"]["seeds"] == [0, 1] and rep["runs"][other]["summary"]["seeds"] == [0]
    folders = {p.name for p in (tmp_path / "g" / "runs").iterdir()}
    assert "C01" in folders and "alpha=0.5" not in folders  # the same config as C01: trained once, shared
    assert rep["runs"]["alpha=0.5"]["summary"] == rep["runs"]["C01"]["summary"]
    assert rep["runs"]["alpha=1"]["summary"]["seeds"] == [0, 1]  # not in a select group: every seed
    assert (tmp_path / "g" / "fig5_lambda.png").is_file() and (tmp_path / "g" / "fig5_alpha.png").is_file()
    md = (tmp_path / "g" / "report.md").read_text()
    assert "| arc |" in md
    label = rep["runs"][chosen]["label"]
    assert f"| **{label}** |" in md and f"| {rep['runs'][other]['label']} |" in md  # the choice is bold
    # a setting that diverges is reported as such, never chosen, and does not stop the sweep
    assert rep["runs"]["boom"]["summary"]["seeds"] == [] and "non-finite" in rep["runs"]["boom"]["summary"]["failed_seeds"]["0"]
    assert "| boom | diverged:" in md


def test_reuse_copies_identical_finished_trainings_only(mini_lfw, tmp_path) -> None:
    """`reuse`: a (run, seed) identical to a finished training of an earlier experiment is copied, not retrained,
    and scores the same; a run that differs in one result-changing key is trained."""
    from centerloss.experiments.lfw import load_config, run_experiment

    root, pairs, _ = mini_lfw
    tiny = [t for t in TINY if not t.startswith(("subfolds", "fars"))] + ["subfolds=3", "fars=[0.34]"]
    base = {"aligned": str(root), "pairs": str(pairs), "baseline": "A"}
    first = run_experiment(load_config("tiny", tiny, {**base, "out_dir": str(tmp_path / "one"),
                                                      "runs": {"A": {"preset": "lfw_cpu_A"}}}), "test")
    runs = {"A2": {"preset": "lfw_cpu_A"}, "A": {"preset": "lfw_cpu_A", "set": {"optimizer.lr": 0.05}}}
    cfg = load_config("tiny", tiny, {**base, "out_dir": str(tmp_path / "two"), "runs": runs,
                                     "reuse": [str(tmp_path / "one"), str(tmp_path / "missing")]})
    rep = run_experiment(cfg, "test")
    same, other = (tmp_path / "two" / "runs" / n / "seed0" for n in ("A2", "A"))
    assert (same / "reused_from.json").is_file() and not (other / "reused_from.json").exists()
    a2 = rep["runs"]["A2"]["seeds"]["0"]
    assert a2["train"]["reused_from"] == str(tmp_path / "one" / "runs" / "A" / "seed0")
    assert a2["verification"]["accuracy_mean"] == first["runs"]["A"]["seeds"]["0"]["verification"]["accuracy_mean"]
    assert (same / "eval.json").is_file() and (same / "train_log.csv").is_file()
    assert "train_log.csv" in os.listdir(other) and "Reused, not retrained" in (tmp_path / "two" / "report.md").read_text()
    assert run_experiment(cfg, "test")["runs"]["A2"]["seeds"]["0"] == a2  # a rerun keeps the copy


def test_periodic_verification_during_training(mini_lfw, tmp_path) -> None:
    from conftest import tiny_cfg

    from centerloss.engine.logs import read_csv
    from centerloss.engine.trainer import Trainer
    from centerloss.eval.callbacks import VerificationCallback

    root, pairs, people = mini_lfw
    cfg = tiny_cfg(root, tmp_path / "v", **{"schedule.epochs": 2, "verify.pairs": str(pairs),
                                            "verify.root": str(root), "verify.every": 3, "verify.subfolds": 3})
    Trainer(cfg, callbacks=[VerificationCallback(cfg.verify, cfg.data.root)]).fit()
    rows = read_csv(tmp_path / "v" / "verify_log.csv")
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 10]  # 40 crops / 8 = 5 steps per epoch: every 3, and the end
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and "2-fold" in r["protocol"]
