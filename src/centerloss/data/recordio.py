"""InsightFace / MXNet RecordIO (``train.rec`` + ``train.idx``) without MXNet.

Format (dmlc-core ``recordio``), all integers little-endian:

* A record is ``uint32 magic = 0xCED7230A``, ``uint32 lrec``, payload, zero padding to a multiple of 4 bytes.
  ``lrec``'s upper 3 bits are a continuation flag ``cflag`` and its lower 29 bits the payload length.
* ``cflag`` 0 is a whole record. A writer that meets the magic number at a 4-byte aligned offset inside the
  payload splits the record there (so a reader can resynchronise on the magic): part one has cflag 1, middle
  parts cflag 2, the last part cflag 3, and the magic bytes themselves are dropped; the reader re-inserts them
  between the parts.
* The ``.idx`` file is text, one ``key<TAB>byte-offset`` line per record (offset of its magic number).
* MXNet's image records start with an ``IRHeader``: ``struct "<IfQQ"`` = (flag, label, id, id2), 24 bytes.
  If ``flag > 0`` the label is a float32 vector of ``flag`` values stored right after the header (and the
  header's label field is 0). The image (JPEG/PNG bytes) follows.
* InsightFace datasets (MS1M, Glint360K, ...): record 0 has ``flag > 0`` and label ``(a, b)``: images are keys
  ``1 .. a-1``, and keys ``a .. b-1`` are per-identity records whose label is an image range. Image records
  carry the identity id in ``label`` (a float, or the first entry of a vector).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import DataError
from ..utils.images import read_rgb
from .identity_folder import FaceDataset, check_hw

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24


class IRHeader(NamedTuple):
    """MXNet's image-record header. ``label`` is a float, or a float32 vector when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """``IRHeader`` + payload, as ``mxnet.recordio.pack`` lays it out."""
    label = header.label
    if isinstance(label, (int, float, np.integer, np.floating)):
        return struct.pack(_IR_FORMAT, 0, float(label), header.id, header.id2) + payload
    vec = np.asarray(label, dtype="<f4").ravel()
    return struct.pack(_IR_FORMAT, vec.size, 0.0, header.id, header.id2) + vec.tobytes() + payload


def unpack(record: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record into ``(IRHeader, payload)``."""
    if len(record) < IR_SIZE:
        raise DataError(f"{where}: {len(record)} bytes is shorter than an IRHeader ({IR_SIZE} bytes)")
    flag, label, id_, id2 = struct.unpack(_IR_FORMAT, record[:IR_SIZE])
    rest = record[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise DataError(f"{where}: header announces {flag} float labels but the record is too short")
        vec = np.frombuffer(rest[: 4 * flag], dtype="<f4").copy()
        return IRHeader(flag, vec, id_, id2), rest[4 * flag :]
    return IRHeader(flag, label, id_, id2), rest


def _pad(n: int) -> int:
    return (-n) % 4


class RecordIOWriter:
    """Write a ``.rec`` (and optionally its ``.idx``) exactly as dmlc-core does, magic splitting included."""

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path) if idx_path is not None else None
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w", encoding="ascii") if self.idx_path is not None else None

    def _part(self, cflag: int, chunk: bytes) -> None:
        self._rec.write(_MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(chunk)) + chunk)

    def write(self, record: bytes, key: int | None = None) -> int:
        """Append ``record`` (bytes, e.g. from :func:`pack`); returns its byte offset (what ``.idx`` stores)."""
        if len(record) > _LEN_MASK:
            raise ValueError(f"RecordIO records must be < 2^29 bytes, got {len(record)}")
        pos = self._rec.tell()
        start = 0
        for i in range(0, len(record) - len(record) % 4, 4):
            if record[i : i + 4] == _MAGIC_BYTES:
                self._part(1 if start == 0 else 2, record[start:i])
                start = i + 4
        self._part(3 if start else 0, record[start:])
        self._rec.write(b"\0" * _pad(len(record)))  # only the last part can be unaligned
        if self._idx is not None:
            if key is None:
                raise ValueError("an indexed writer needs a key for every record")
            self._idx.write(f"{key}\t{pos}\n")
        return pos

    def close(self) -> None:
        self._rec.close()
        if self._idx is not None:
            self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_idx(idx_path: str | os.PathLike[str]) -> dict[int, int]:
    """``{key: byte offset}`` from a ``.idx`` file, with the line number of any malformed line."""
    out: dict[int, int] = {}
    with open(idx_path, encoding="ascii", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                out[int(parts[0])] = int(parts[1])
            except (IndexError, ValueError):
                raise DataError(f"{idx_path}:{n}: expected 'key<TAB>offset', got {line.rstrip()!r}") from None
    return out


class RecordIOReader:
    """Random access (through ``.idx``) and sequential reading of a ``.rec`` file.

    The file handle is opened lazily per process, so a reader can be handed to DataLoader workers.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"RecordIO file {self.rec_path} does not exist")
        self.size = self.rec_path.stat().st_size
        self.idx = read_idx(idx_path) if idx_path is not None else None
        self._fh = None
        self._pid = -1

    def _file(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.rec_path, "rb")
            self._pid = os.getpid()
        return self._fh

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_fh"], d["_pid"] = None, -1
        return d

    def keys(self) -> list[int]:
        if self.idx is None:
            raise DataError(f"{self.rec_path}: no .idx file was given, so records have no keys")
        return list(self.idx)

    def read_at(self, offset: int) -> tuple[bytes, int]:
        """The record starting at byte ``offset`` and the offset of the next one."""
        f = self._file()
        f.seek(offset)
        parts: list[bytes] = []
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise DataError(f"{self.rec_path}: truncated record header at byte {offset}")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(f"{self.rec_path}: bad RecordIO magic 0x{magic:08x} at byte {f.tell() - 8} "
                                f"(wrong offset in the .idx, or not a RecordIO file)")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            data = f.read(length + _pad(length))
            if len(data) < length:
                raise DataError(f"{self.rec_path}: record at byte {offset} is truncated")
            if cflag in (2, 3):
                parts.append(_MAGIC_BYTES)
            parts.append(data[:length])
            if cflag in (0, 3):
                return b"".join(parts), f.tell()
            if cflag not in (1, 2):
                raise DataError(f"{self.rec_path}: invalid continuation flag {cflag} at byte {offset}")

    def read(self, key: int) -> bytes:
        if self.idx is None:
            raise DataError(f"{self.rec_path}: random access needs the .idx file")
        try:
            return self.read_at(self.idx[key])[0]
        except KeyError:
            raise DataError(f"{self.rec_path}: no record with key {key} in the index") from None

    def __iter__(self) -> Iterator[bytes]:
        """Every record in file order (needs no ``.idx``)."""
        pos = 0
        while pos < self.size:
            rec, pos = self.read_at(pos)
            yield rec


def _label_of(h: IRHeader) -> int:
    lab = h.label
    return int(lab[0]) if isinstance(lab, np.ndarray) else int(lab)


class RecordIODataset(FaceDataset):
    """Face images from an InsightFace ``train.rec`` / ``train.idx`` pair; ``ds[i] -> (image, label)``.

    Labels are the identity ids stored in the records. With an InsightFace header record the number of classes
    is its identity range; otherwise every record header is read once at construction (24 bytes each).
    ``classes`` (the label map saved with checkpoints) is ``["0", "1", ...]``.

    Note that InsightFace's MS1M/Glint crops are 112x112: pass ``expected_hw=(112, 112)`` (and a network built
    for that size), or ``None`` to accept any size.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None,
                 flip: bool = True, seed: int = 0, expected_hw: Sequence[int] | None = (112, 96)) -> None:
        super().__init__(flip, seed, expected_hw)
        rec_path = Path(rec_path)
        if rec_path.suffix != ".rec":
            rec_path = rec_path.with_suffix(".rec")
        idx_path = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
        if not idx_path.is_file():
            raise DataError(f"{rec_path}: index file {idx_path} not found (random access needs it)")
        self.reader = RecordIOReader(rec_path, idx_path)
        keys = sorted(self.reader.keys())
        if not keys:
            raise DataError(f"{idx_path} lists no records")
        head, _ = unpack(self.reader.read(keys[0]), f"{rec_path} key {keys[0]}")
        if head.flag > 0 and isinstance(head.label, np.ndarray) and head.label.size >= 2:
            a, b = int(head.label[0]), int(head.label[1])  # InsightFace: images 1..a-1, identities a..b-1
            self.keys = np.arange(1, a, dtype=np.int64)
            num_classes = b - a
            labels = self._identity_labels(a, b, rec_path)
            self.labels = labels if labels is not None else self._scan_labels(rec_path)
        else:
            self.keys = np.asarray(keys, dtype=np.int64)
            self.labels = self._scan_labels(rec_path)
            num_classes = int(self.labels.max()) + 1
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= num_classes):
            raise DataError(f"{rec_path}: labels span [{self.labels.min()}, {self.labels.max()}] but the "
                            f"file declares {num_classes} identities")
        self.classes = [str(i) for i in range(num_classes)]

    def _identity_labels(self, a: int, b: int, where: Path) -> np.ndarray | None:
        """Labels from InsightFace's identity records (keys a..b-1, label = image key range); None if absent."""
        labels = np.full(len(self.keys), -1, dtype=np.int64)
        for ident, key in enumerate(range(a, b)):
            if key not in self.reader.idx:  # type: ignore[operator]
                return None
            h, _ = unpack(self.reader.read(key), f"{where} key {key}")
            if not (isinstance(h.label, np.ndarray) and h.label.size >= 2):
                return None
            s, e = int(h.label[0]), int(h.label[1])
            if not (1 <= s <= e <= a):
                return None
            labels[s - 1 : e - 1] = ident
        return labels if bool((labels >= 0).all()) else None

    def _scan_labels(self, where: Path) -> np.ndarray:
        """Read only the IRHeader of every image record (a seek and ~40 bytes each)."""
        labels = np.empty(len(self.keys), dtype=np.int64)
        f = self.reader._file()
        for n, k in enumerate(self.keys):
            off = self.reader.idx[int(k)]  # type: ignore[index]
            f.seek(off)
            raw = f.read(8 + IR_SIZE + 4)
            magic, lrec = struct.unpack("<II", raw[:8]) if len(raw) >= 8 else (0, 0)
            if magic == MAGIC and (lrec >> 29 == 0 or (lrec & _LEN_MASK) >= IR_SIZE + 4):
                body = raw[8:]  # the first part holds the whole header (and a first float label)
            else:  # split inside the header, or malformed: let the full reader decide / raise
                body = self.reader.read_at(off)[0]
            if len(body) < IR_SIZE + 4:
                h, _ = unpack(body, f"{where} key {k}")  # raises for a short record
                labels[n] = _label_of(h)
                continue
            flag, label = struct.unpack("<If", body[:8])
            labels[n] = int(np.frombuffer(body[IR_SIZE : IR_SIZE + 4], dtype="<f4")[0]) if flag > 0 else int(label)
        return labels

    def load_rgb(self, i: int) -> np.ndarray:
        key = int(self.keys[i])
        where = f"{self.reader.rec_path} key {key}"
        _, payload = unpack(self.reader.read(key), where)
        return check_hw(read_rgb(payload, where), self.expected_hw, where)
