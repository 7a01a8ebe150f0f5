"""Face data: identity folders (fast index, cache, clear errors, normalisation, flip) and MXNet RecordIO."""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from centerloss.data import identity_folder as idf
from centerloss.data.identity_folder import IdentityFolderDataset, flip_bit, index_identity_folder
from centerloss.data.recordio import (
    MAGIC,
    IRHeader,
    RecordIODataset,
    RecordIOReader,
    RecordIOWriter,
    pack,
    unpack,
)
from centerloss.errors import DataError

H, W = 112, 96


def _img(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)  # RGB


def _write_tree(root, spec: dict[str, int]) -> dict[str, list[np.ndarray]]:
    out = {}
    for k, (name, n) in enumerate(spec.items()):
        d = root / name
        d.mkdir(parents=True)
        out[name] = []
        for i in range(n):
            img = _img(100 * k + i)
            cv2.imwrite(str(d / f"{name}_{i + 1:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            out[name].append(img)
    return out


def test_index_labels_filters_and_label_map(tmp_path) -> None:
    _write_tree(tmp_path, {"Bob": 3, "Alice": 2, "Carl": 1})
    (tmp_path / "manifest.csv").write_text("not an identity\n")  # files at the top level are ignored
    (tmp_path / "Bob" / "notes.txt").write_text("x")  # so are other extensions
    idx = index_identity_folder(tmp_path)
    assert idx.classes == ["Alice", "Bob", "Carl"]
    assert idx.files[:3] == ["Alice/Alice_0001.png", "Alice/Alice_0002.png", "Bob/Bob_0001.png"]
    assert idx.labels.tolist() == [0, 0, 1, 1, 1, 2]
    assert idx.counts().tolist() == [2, 3, 1]
    two = index_identity_folder(tmp_path, min_images=2)
    assert two.classes == ["Alice", "Bob"] and len(two) == 5
    only = index_identity_folder(tmp_path, identities=["Carl", "Bob"])
    assert only.classes == ["Bob", "Carl"] and only.labels.tolist() == [0, 0, 0, 1]
    with pytest.raises(DataError, match="no folder"):
        index_identity_folder(tmp_path, identities=["Nobody"])


def test_index_does_not_stat_or_open_files(tmp_path, monkeypatch) -> None:
    _write_tree(tmp_path, {"A": 4, "B": 4})
    calls = []
    real_stat, real_open = os.stat, open
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(("stat", a[0])) or real_stat(*a, **k))
    monkeypatch.setattr("builtins.open", lambda *a, **k: calls.append(("open", a[0])) or real_open(*a, **k))
    idx = index_identity_folder(tmp_path)
    assert len(idx) == 8
    assert not [c for c in calls if str(c[1]).endswith(".png")], calls


def test_empty_class_and_bad_files_are_named(tmp_path) -> None:
    _write_tree(tmp_path, {"A": 2, "B": 2})
    (tmp_path / "Empty").mkdir()
    with pytest.raises(DataError, match="Empty"):
        index_identity_folder(tmp_path)
    assert index_identity_folder(tmp_path, on_empty="skip").classes == ["A", "B"]
    with pytest.raises(DataError, match="does not exist"):
        index_identity_folder(tmp_path / "nope")
    (tmp_path / "B" / "B_0003.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = IdentityFolderDataset(tmp_path, on_empty="skip", flip=False)
    bad = ds.index.files.index("B/B_0003.jpg")
    with pytest.raises(DataError, match="B_0003.jpg"):
        ds[bad]
    cv2.imwrite(str(tmp_path / "A" / "A_0009.png"), np.zeros((50, 40, 3), np.uint8))
    ds = IdentityFolderDataset(tmp_path, on_empty="skip", flip=False)
    with pytest.raises(DataError, match=r"A_0009.png: image is 50x40"):
        ds[ds.index.files.index("A/A_0009.png")]
    # inside DataLoader workers the error still names the file
    bad = ds.index.files.index("B/B_0003.jpg")
    loader = DataLoader(torch.utils.data.Subset(ds, [bad]), batch_size=1, num_workers=1)
    with pytest.raises(DataError, match="B_0003.jpg"):
        next(iter(loader))


def test_index_cache_is_reused_and_invalidated(tmp_path, monkeypatch) -> None:
    root = tmp_path / "faces"
    _write_tree(root, {"A": 2, "B": 3})
    cache = tmp_path / "index.json"
    first = index_identity_folder(root, cache=cache)
    assert cache.is_file()

    def boom(*a, **k):
        raise AssertionError("the folder was rescanned although nothing changed")

    monkeypatch.setattr(idf, "_scan_class", boom)
    again = index_identity_folder(root, cache=cache)
    assert again.files == first.files and again.labels.tolist() == first.labels.tolist()
    monkeypatch.undo()
    cv2.imwrite(str(root / "A" / "A_0003.png"), _img(7))
    st = os.stat(root / "A")  # make sure the directory mtime moves even on coarse-clock filesystems
    os.utime(root / "A", ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert len(index_identity_folder(root, cache=cache)) == 6


def test_normalisation_flip_and_workers(tmp_path) -> None:
    imgs = _write_tree(tmp_path, {"A": 3, "B": 3})
    ds = IdentityFolderDataset(tmp_path, flip=True, seed=3)
    ds.set_epoch(1)
    for i in range(len(ds)):
        x, y = ds[i]
        name = ds.classes[y]
        raw = imgs[name][int(ds.index.files[i][-8:-4]) - 1]
        ref = (torch.from_numpy(raw).permute(2, 0, 1).float() - 127.5) / 128.0
        if flip_bit(3, 1, i):
            ref = torch.flip(ref, dims=[-1])
        torch.testing.assert_close(x, ref, rtol=0, atol=0)
    bits = [flip_bit(0, e, i) for e in range(4) for i in range(500)]
    assert 0.45 < np.mean(bits) < 0.55  # a fair coin
    assert [flip_bit(0, 2, i) for i in range(50)] != [flip_bit(0, 3, i) for i in range(50)]  # depends on epoch
    serial = [b[0] for b in DataLoader(ds, batch_size=2, num_workers=0)]
    parallel = [b[0] for b in DataLoader(ds, batch_size=2, num_workers=2)]
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- RecordIO


def test_recordio_bytes_follow_the_dmlc_layout(tmp_path) -> None:
    magic = struct.pack("<I", MAGIC)
    with RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        w.write(b"abcde", key=0)
        w.write(b"xxxx" + magic + b"yy", key=1)  # magic at an aligned offset: the record is split
    raw = (tmp_path / "a.rec").read_bytes()
    expected = (magic + struct.pack("<I", 5) + b"abcde\0\0\0"
                + magic + struct.pack("<I", (1 << 29) | 4) + b"xxxx"
                + magic + struct.pack("<I", (3 << 29) | 2) + b"yy\0\0")
    assert raw == expected
    assert (tmp_path / "a.idx").read_text() == "0\t0\n1\t16\n"


def test_recordio_roundtrip_with_split_records(tmp_path) -> None:
    magic = struct.pack("<I", MAGIC)
    rng = np.random.default_rng(0)
    records = [b"", b"a", b"abcd", magic, magic + magic + b"z", b"q" + magic + b"qqq", b"pp" + magic,
               b"1234" + magic + b"5678" + magic + b"90"] + [rng.bytes(int(n)) for n in rng.integers(0, 300, 20)]
    with RecordIOWriter(tmp_path / "r.rec", tmp_path / "r.idx") as w:
        for k, r in enumerate(records):
            w.write(r, key=k)
    rd = RecordIOReader(tmp_path / "r.rec", tmp_path / "r.idx")
    assert list(rd) == records  # sequential, no index needed
    for k in reversed(range(len(records))):  # random access
        assert rd.read(k) == records[k]
    with pytest.raises(DataError, match="no record with key"):
        rd.read(999)


def test_irheader_pack_unpack() -> None:
    h, payload = unpack(pack(IRHeader(0, 7.0, 3, 0), b"img"))
    assert h == IRHeader(0, 7.0, 3, 0) and payload == b"img"
    h, payload = unpack(pack(IRHeader(0, [5.0, 9.0], 0, 0), b"xy"))
    assert h.flag == 2 and h.label.tolist() == [5.0, 9.0] and payload == b"xy"
    assert len(pack(IRHeader(0, 1.0, 0, 0), b"")) == 24


def _insightface_rec(tmp_path, labels: list[int], header: bool) -> list[np.ndarray]:
    imgs = [_img(50 + i) for i in range(len(labels))]
    n, c = len(labels), max(labels) + 1
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        first = 0
        if header:
            w.write(pack(IRHeader(0, [n + 1.0, n + 1.0 + c], 0, 0), b""), key=0)
            first = 1
        for i, (img, lab) in enumerate(zip(imgs, labels, strict=True)):
            ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            w.write(pack(IRHeader(0, float(lab), first + i, 0), png.tobytes()), key=first + i)
        if header:  # identity records: label = [first key, end key) of the identity's images
            for ident in range(c):
                keys = [first + i for i, lab in enumerate(labels) if lab == ident]
                w.write(pack(IRHeader(0, [keys[0], keys[-1] + 1.0], 0, 0), b""), key=n + 1 + ident)
    return imgs


@pytest.mark.parametrize("header", [True, False])
def test_recordio_dataset(tmp_path, header: bool) -> None:
    labels = [0, 0, 1, 2, 2, 2]
    imgs = _insightface_rec(tmp_path, labels, header)
    ds = RecordIODataset(tmp_path / "train.rec", flip=False)
    assert len(ds) == 6 and ds.num_classes == 3 and ds.labels.tolist() == labels
    for i in range(6):
        x, y = ds[i]
        assert y == labels[i]
        torch.testing.assert_close(x, (torch.from_numpy(imgs[i]).permute(2, 0, 1).float() - 127.5) / 128.0)
    batch = next(iter(DataLoader(ds, batch_size=6, num_workers=2)))
    assert batch[0].shape == (6, 3, H, W) and batch[1].tolist() == labels


def test_recordio_bad_files(tmp_path) -> None:
    (tmp_path / "x.rec").write_bytes(b"\0" * 16)
    (tmp_path / "x.idx").write_text("0\t0\n")
    with pytest.raises(DataError, match="bad RecordIO magic"):
        RecordIODataset(tmp_path / "x.rec")
    (tmp_path / "x.idx").write_text("zero\t0\n")
    with pytest.raises(DataError, match=r"x.idx:1"):
        RecordIODataset(tmp_path / "x.rec")
    with pytest.raises(DataError, match="index file"):
        RecordIODataset(tmp_path / "missing.rec")
    with RecordIOWriter(tmp_path / "y.rec", tmp_path / "y.idx") as w:
        w.write(pack(IRHeader(0, 0.0, 0, 0), b"not an image"), key=0)
    with pytest.raises(DataError, match="y.rec key 0: not an image"):
        RecordIODataset(tmp_path / "y.rec")[0]
