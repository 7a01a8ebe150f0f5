"""A tiny end-to-end LFW experiment: real LFW photos of a few identities, person-disjoint split, models A and C
trained for a few steps, verified on held-out pairs, report written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from centerloss.errors import DataError
from centerloss.experiments.lfw import _crop_paths, training_split

DATA = Path(os.environ.get("CENTERLOSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LFW = DATA / "lfw" / "images"


def _pseudo_align(src: Path, dst: Path) -> None:
    """A stand-in for `centerloss align` (tested elsewhere): the deep-funneled face sits near the centre."""
    img = cv2.imread(str(src))
    crop = img[55:195, 65:185]  # 140x120, the 112x96 aspect ratio
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), cv2.resize(crop, (96, 112), interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="module")
def mini_lfw(tmp_path_factory):
    if not LFW.is_dir():
        pytest.skip(f"LFW not found at {LFW} (set CENTERLOSS_DATA)")
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


def test_tiny_end_to_end_experiment(mini_lfw, tmp_path) -> None:
    from centerloss.cli import main

    root, pairs, people = mini_lfw
    out = tmp_path / "run"
    tiny = ["model.kwargs={embed_dim: 8, width: 4, units: [1, 1, 1]}", "data.batch_size=8", "data.workers=0",
            "optim.epochs=2", "optim.milestones=[1]", "runtime.progress=false", "runtime.tensorboard=false"]
    rc = main(["lfw-experiment", "--preset", "tiny", "--aligned", str(root), "--pairs", str(pairs), "--out",
               str(out), "--set", f"train_overrides={json.dumps(tiny)}", "subfolds=3", "fars=[0.34]"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["heldout"] == {"folds": [1], "pairs": 6, "identities": 3}
    assert rep["train_split"]["identities"] == 5 and rep["train_split"]["dropped_undetected"] == 1
    train_people = {ln.split("/")[0] for ln in (out / "train_files.txt").read_text().split()}
    assert not train_people & set((out / "heldout_identities.txt").read_text().split())
    for m in ("A", "C"):
        v = rep["models"][m]["verification"]
        assert 0.0 <= v["accuracy_mean"] <= 1.0 and 0.0 <= v["auc"] <= 1.0 and v["n_pairs"] == 6
        assert v["n_folds"] == 3 and "sub-folds" in v["protocol"]
        t = rep["models"][m]["train"]
        assert t["steps"] == 2 * (24 // 8) and t["num_classes"] == 5
        assert (out / m / "model.safetensors").is_file() and (out / f"features_{m}.npz").is_file()
    assert rep["models"]["C"]["train"]["loss"]["type"] == "center"
    assert rep["models"]["A"]["train"]["loss"]["type"] == "softmax"
    d = rep["paired_differences"]["C-A"]
    assert len(d["per_fold"]) == 3 and d["wins"] + d["ties"] + d["losses"] == 3
    assert np.isclose(d["mean"], rep["models"]["C"]["verification"]["accuracy_mean"]
                      - rep["models"]["A"]["verification"]["accuracy_mean"])
    md = (out / "report.md").read_text()
    assert "| A (softmax)" in md and "| C (softmax + center)" in md and "roc.png" in md
    assert (out / "roc.png").stat().st_size > 1000
    # a rerun resumes the finished trainings instead of retraining them, and keeps their training record
    n_rows = len((out / "A" / "train_log.csv").read_text().splitlines())
    rc = main(["lfw-experiment", "--preset", "tiny", "--aligned", str(root), "--pairs", str(pairs), "--out",
               str(out), "--set", f"train_overrides={json.dumps(tiny)}", "subfolds=3", "fars=[0.34]"])
    assert rc == 0
    again = json.loads((out / "report.json").read_text())
    assert again["models"]["A"]["train"] == rep["models"]["A"]["train"]
    assert again["models"]["C"]["verification"]["accuracy_mean"] == rep["models"]["C"]["verification"]["accuracy_mean"]
    assert len((out / "A" / "train_log.csv").read_text().splitlines()) == n_rows


def test_periodic_verification_during_training(mini_lfw, tmp_path) -> None:
    from test_engine import tiny_cfg

    from centerloss.engine.logs import read_csv
    from centerloss.engine.trainer import Trainer

    root, pairs, people = mini_lfw
    cfg = tiny_cfg(root, tmp_path / "v", **{"data.exclude_identities": None, "optim.epochs": 2,
                                            "verify.pairs": str(pairs), "verify.root": str(root),
                                            "verify.every": 3, "verify.subfolds": 3})
    Trainer(cfg).fit()
    rows = read_csv(tmp_path / "v" / "verify_log.csv")
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 10]  # 40 crops / 8 = 5 steps per epoch: every 3, and the end
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and "2-fold" in r["protocol"]
