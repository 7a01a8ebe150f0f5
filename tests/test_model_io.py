"""Model files (models/io.py) are input like any other: every way one can be wrong is a DataError naming the
file and the problem, through the library and through `centerloss eval`; save_model is atomic."""

from __future__ import annotations

import errno
import json
import pickle
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from centerloss.cli import main
from centerloss.errors import DataError, RunError
from centerloss.models import create_model
from centerloss.models.io import load_model, read_metadata, save_model

KW = {"embed_dim": 8, "width": 4}


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def _raw(path, state, name="face_small", kwargs: str | None = None, **extra: str) -> None:
    """A safetensors file with hand-made metadata (kwargs given as raw text, so it can be invalid JSON)."""
    meta = {"centerloss.model": name, "centerloss.model_kwargs": json.dumps(KW) if kwargs is None else kwargs}
    save_file(state, str(path), metadata={**meta, **extra})


@pytest.fixture
def net():
    torch.manual_seed(0)
    return create_model("face_small", **KW)


def test_roundtrip_is_exact(tmp_path, net):
    p = tmp_path / "m.safetensors"
    save_model(p, net, "face_small", KW, {"threshold": 0.3})
    back, meta = load_model(p)
    x = torch.randn(2, 3, 112, 96)
    torch.testing.assert_close(back(x), net.eval()(x), rtol=0, atol=0)
    assert meta["threshold"] == 0.3 and meta["model_kwargs"] == KW
    assert [q.name for q in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file


def test_not_safetensors_or_truncated(tmp_path, net):
    p = tmp_path / "m.safetensors"
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(DataError, match=rf"{re.escape(str(p))} is not a safetensors model file, or it is truncated"):
        load_model(p)
    save_model(p, net, "face_small", KW)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError, match="or it is truncated"):
        load_model(p)
    p.write_bytes(b"")
    with pytest.raises(DataError, match="or it is truncated"):
        read_metadata(p)
    with pytest.raises(DataError, match="model file not found"):
        load_model(tmp_path / "nope.safetensors")


def test_recipe_metadata_not_json(tmp_path, net):
    p = tmp_path / "m.safetensors"
    _raw(p, _state(net), kwargs="{embed_dim: 8")
    with pytest.raises(DataError, match=r"metadata 'centerloss.model_kwargs' is not JSON"):
        load_model(p)
    _raw(p, _state(net), kwargs="[8, 4]")
    with pytest.raises(DataError, match="must be a JSON object"):
        load_model(p)
    _raw(p, _state(net), labels="not json either")
    with pytest.raises(DataError, match=r"metadata 'labels' is not JSON"):
        read_metadata(p)
    save_file(_state(net), str(p), metadata={"format": "pt"})
    with pytest.raises(DataError, match="no centerloss model recipe"):
        load_model(p)


def test_unknown_model_and_kwargs(tmp_path, net):
    p = tmp_path / "m.safetensors"
    _raw(p, _state(net), name="face_huge")
    with pytest.raises(DataError, match=r"unknown model 'face_huge' in its recipe; known models: .*face_small"):
        load_model(p)
    _raw(p, _state(net), kwargs=json.dumps({**KW, "bogus": 1}))
    with pytest.raises(DataError, match=r"do not fit face_small .*'bogus'.*it takes embed_dim, width"):
        load_model(p)


def test_invalid_kwarg_value_names_the_kwarg(tmp_path, net):
    p = tmp_path / "m.safetensors"
    _raw(p, _state(net), kwargs=json.dumps({"embed_dim": 8, "width": -8}))
    with pytest.raises(DataError, match=r"cannot build face_small\(embed_dim=8, width=-8\).*width=-8 is negative"):
        load_model(p)
    _raw(p, _state(net), kwargs=json.dumps({**KW, "stem_stride": 3}))  # the constructor's own ValueError
    with pytest.raises(DataError, match=r"stem_stride=3.*stem_stride must be 1 or 2"):
        load_model(p)


def test_shape_mismatch_names_first_key_and_both_shapes(tmp_path, net):
    p = tmp_path / "m.safetensors"
    _raw(p, _state(net), kwargs=json.dumps({"embed_dim": 8, "width": 8}))  # weights of width 4
    wide = create_model("face_small", embed_dim=8, width=8).state_dict()
    first = None
    for k, v in wide.items():  # reference: the first key, in the network's order, whose shape differs
        if tuple(v.shape) != tuple(net.state_dict()[k].shape):
            first = k
            break
    want = (f"weight {first} has shape {tuple(net.state_dict()[first].shape)} in the file but face_small built "
            f"from its recipe expects {tuple(wide[first].shape)}")
    with pytest.raises(DataError, match=re.escape(want)):
        load_model(p)


def test_missing_and_unexpected_keys(tmp_path, net):
    p = tmp_path / "m.safetensors"
    st = _state(net)
    key = next(iter(st))
    st["extra.weight"] = st.pop(key)
    _raw(p, st)
    with pytest.raises(DataError, match=rf"1 missing \(e.g. \['{re.escape(key)}'\]\), 1 unexpected"):
        load_model(p)


def test_non_finite_weights_name_the_tensor(tmp_path, net):
    p = tmp_path / "m.safetensors"
    st = _state(net)
    keys = [k for k, v in st.items() if v.is_floating_point()]
    st[keys[3]].view(-1)[0] = float("nan")
    st[keys[5]].view(-1)[-1] = float("inf")
    _raw(p, st)
    with pytest.raises(DataError, match=rf"model weights contain NaN/Inf: {re.escape(keys[3])} \(and 1 more"):
        load_model(p)


def test_save_model_disk_full_leaves_old_file_and_no_temp(tmp_path, net, monkeypatch):
    import safetensors.torch as st

    p = tmp_path / "m.safetensors"
    save_model(p, net, "face_small", KW)
    before = p.read_bytes()

    def full(state, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    with pytest.raises(RunError, match="disk full"):
        save_model(p, net, "face_small", KW)
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ["m.safetensors"]
    with pytest.raises(RunError):
        save_model(tmp_path / "new.safetensors", net, "face_small", KW)
    assert [q.name for q in tmp_path.iterdir()] == ["m.safetensors"]


def test_cli_refuses_a_bad_model_in_one_line(tmp_path, net, capsys):
    """Through `centerloss eval bin`: exit 2, one stderr line naming the file, an output folder left clean."""
    import io as _io

    from PIL import Image

    imgs = []
    for i in range(8):
        buf = _io.BytesIO()
        Image.fromarray(np.full((112, 112, 3), i * 20, np.uint8)).save(buf, format="JPEG")
        imgs.append(buf.getvalue())
    b = tmp_path / "s.bin"
    b.write_bytes(pickle.dumps((imgs, [True, False, True, False]), protocol=2))
    p = tmp_path / "m.safetensors"
    st = _state(net)
    st[next(k for k, v in st.items() if v.is_floating_point())].fill_(float("nan"))
    _raw(p, st)
    out = tmp_path / "o"
    rc = main(["eval", "bin", str(b), "--model", str(p), "--out", str(out), "--n-folds", "2", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith(f"centerloss eval: error: {p}: model weights contain NaN/Inf: ")
    assert not out.exists() or list(out.iterdir()) == []
