"""ONNX export of an embedding network, and running it with onnxruntime (``pip install centerloss[onnx]``).

The exported graph is the network alone: ``input`` float32 ``(batch, 3, H, W)`` -> ``embedding`` float32
``(batch, embed_dim)``, with a dynamic batch size. Everything around it is a recipe that the file's metadata
(``metadata_props``) spells out, so that any runtime can reproduce the features:

* **input** (key ``centerloss.input``): RGB channel order, NCHW layout, ``H x W`` = the model's input size (the
  aligned crop of ``centerloss align``), values ``(x - 127.5) / 128`` for uint8 pixels ``x``;
* **feature** (key ``centerloss.feature_recipe``): the paper's test feature (``docs/METHOD.md``, Sec. 4) is
  ``concat(net(x), net(flip_w(x)))``, ``flip_w`` reversing the last (width) axis, so 2 x embed_dim values;
  scores are cosines of these vectors;
* **provenance**: ``centerloss.source_sha256`` (the safetensors file it came from: galleries built with it accept
  this file), ``centerloss.model`` and ``centerloss.model_kwargs`` (the recipe), and ``centerloss.threshold``
  when the checkpoint carried a verification threshold.

:func:`export_onnx` checks the exported file against torch on a random batch of two sizes before it keeps it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, RunError
from .models import check_combine, check_crops, file_sha256

__all__ = ["ONNX_FORMAT", "OnnxEmbedder", "export_onnx", "normalize_nchw", "require_onnx"]

ONNX_FORMAT = "centerloss-onnx/1"
INPUT_NAME, OUTPUT_NAME = "input", "embedding"
NORMALIZATION = "(x - 127.5) / 128"
_PARITY_ATOL = 1e-4


def require_onnx(what: str = "ONNX support") -> None:
    """Raise a ConfigError that says how to install the extra, if onnx or onnxruntime is missing."""
    missing = []
    for mod in ("onnx", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ConfigError(f"{what} needs {' and '.join(missing)}: pip install 'centerloss[onnx]'")


def normalize_nchw(crops: np.ndarray) -> np.ndarray:
    """uint8 crops (B, H, W, 3) RGB -> float32 (B, 3, H, W) as ``(x - 127.5) / 128`` (the same float32
    operations as :func:`centerloss.data.transforms.to_tensor`)."""
    x = np.ascontiguousarray(crops.transpose(0, 3, 1, 2)).astype(np.float32)
    return (x - np.float32(127.5)) / np.float32(128.0)


def _recipe(meta: dict[str, Any], size: tuple[int, int], embed_dim: int, sha: str) -> dict[str, str]:
    h, w = size
    props = {
        "centerloss.format": ONNX_FORMAT,
        "centerloss.input": json.dumps({
            "name": INPUT_NAME, "layout": "NCHW", "channels": "RGB", "height": h, "width": w,
            "dtype": "float32", "normalization": NORMALIZATION, "pixels": "uint8 0-255, aligned crop",
            "batch": "dynamic"}),
        "centerloss.feature_recipe": json.dumps({
            "output": OUTPUT_NAME, "embed_dim": embed_dim, "combine": "concat", "feature_dim": 2 * embed_dim,
            "formula": "concat(net(x), net(x[..., ::-1]))", "flip": "horizontal: reverse the width axis",
            "score": "cosine of the L2-normalised features"}),
        "centerloss.source_sha256": sha,
        "centerloss.model": meta.get("model", ""),
        "centerloss.model_kwargs": json.dumps(meta.get("model_kwargs", {})),
    }
    if isinstance(meta.get("threshold"), int | float):
        props["centerloss.threshold"] = json.dumps(float(meta["threshold"]))
    return props


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs about optional ops (torchvision) and deprecations; none of it is actionable."""
    log = logging.getLogger("torch.onnx")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(old)


def export_onnx(model_path: str | os.PathLike[str], out: str | os.PathLike[str], opset: int | None = None,
                check: bool = True) -> dict[str, Any]:
    """Export the safetensors model at ``model_path`` to ``out`` (atomically) with the recipe metadata.

    Returns a summary: paths, sizes, hashes and (with ``check``) the max abs difference to torch.
    """
    require_onnx("centerloss export")
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError:
        raise ConfigError("centerloss export needs onnxscript: pip install 'centerloss[onnx]'") from None
    import onnx
    import torch

    from ..utils.atomic import atomic_path
    from .models import TorchEmbedder

    src = TorchEmbedder(model_path, device="cpu")
    h, w = src.input_size
    x = torch.zeros(2, 3, h, w)
    with _quiet_exporter():
        prog = torch.onnx.export(src.model, (x,), dynamo=True, input_names=[INPUT_NAME],
                                 output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                                 external_data=False, verbose=False, opset_version=opset)
    proto = prog.model_proto
    proto.doc_string = (f"centerloss embedding network {src.meta.get('model')} exported from {Path(model_path).name}. "
                        f"Input: RGB NCHW float32 (batch, 3, {h}, {w}), {NORMALIZATION} of uint8 pixels of an "
                        "aligned crop. Feature: concat(net(x), net(flip_w(x))); score: cosine.")
    for k, v in _recipe(src.meta, (h, w), src.embed_dim, src.weights_sha256).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
        diff = _parity(src, tmp) if check else None
    summary = {"model": str(model_path), "out": str(out), "source_sha256": src.weights_sha256,
               "onnx_sha256": file_sha256(out), "bytes": Path(out).stat().st_size, "input_size": [h, w],
               "embed_dim": src.embed_dim, "opset": int(proto.opset_import[0].version),
               "max_abs_diff_vs_torch": diff}
    return summary


def _parity(src: Any, onnx_path: Path) -> float:
    """Max abs difference of the flip-concat features, torch vs onnxruntime, on random crops (batches 1 and 3)."""
    rng = np.random.default_rng(0)
    onx = OnnxEmbedder(onnx_path)
    worst = 0.0
    for b in (1, 3):
        crops = rng.integers(0, 256, (b, *src.input_size, 3), dtype=np.uint8)
        worst = max(worst, float(np.abs(onx.embed(crops) - src.embed(crops)).max()))
    if not worst <= _PARITY_ATOL * 10:
        raise RunError(f"exported ONNX disagrees with torch by {worst:.2e} (> {_PARITY_ATOL * 10:g}); not written")
    return worst


class OnnxEmbedder:
    """An ONNX file written by ``centerloss export``, run with onnxruntime (same interface as TorchEmbedder).

    Args:
        path: the ``.onnx`` file.
        device: ``"cpu"`` (default) or ``"cuda"`` (needs onnxruntime-gpu).
        threads: intra-op threads (default: onnxruntime's choice, one per core).
    """

    kind = "onnx"

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu", threads: int | None = None) -> None:
        require_onnx(f"running {path}")
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"model file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            providers = ["CUDAExecutionProvider", *providers]
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own types for a damaged protobuf
            raise DataError(f"{self.path}: corrupt or unreadable ONNX model ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from e
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.meta = self._read_meta(props)
        self.file_sha256 = file_sha256(self.path)
        self.weights_sha256 = props.get("centerloss.source_sha256") or self.file_sha256

    def _read_meta(self, props: dict[str, str]) -> dict[str, Any]:
        inp = self.session.get_inputs()
        if len(inp) != 1 or len(inp[0].shape) != 4:
            raise DataError(f"{self.path}: expected one NCHW input, got {[(i.name, i.shape) for i in inp]}")
        self.input_name = inp[0].name
        _, c, h, w = inp[0].shape
        if c != 3 or not isinstance(h, int) or not isinstance(w, int):
            raise DataError(f"{self.path}: input must be (batch, 3, H, W) with fixed H, W; got {inp[0].shape}")
        self.input_size = (h, w)
        out = self.session.get_outputs()[0].shape
        self.embed_dim = int(out[1]) if len(out) == 2 and isinstance(out[1], int) else 0
        meta: dict[str, Any] = {"onnx_metadata": props}
        if props.get("centerloss.format") != ONNX_FORMAT:
            meta["note"] = "not written by centerloss export: assuming the centerloss input recipe"
        if "centerloss.threshold" in props:
            meta["threshold"] = json.loads(props["centerloss.threshold"])
        if "centerloss.model" in props:
            meta["model"] = props["centerloss.model"]
        return meta

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32, copy=False)

    def embed(self, crops: np.ndarray, combine: str = "concat") -> np.ndarray:
        """uint8 crops (B, H, W, 3) -> (B, E) float32, E = 2 x embed_dim for ``"concat"``."""
        check_combine(combine)
        c = check_crops(crops, self.input_size)
        if len(c) == 0:
            return np.zeros((0, self.feature_dim(combine)), np.float32)
        x = normalize_nchw(c)  # (B, 3, H, W)
        f = self._run(x)  # (B, d)
        if combine == "none":
            return f
        g = self._run(np.ascontiguousarray(x[..., ::-1]))  # (B, d), the horizontal flip
        return np.concatenate([f, g], axis=1) if combine == "concat" else f + g

    def feature_dim(self, combine: str = "concat") -> int:
        return self.embed_dim * (2 if combine == "concat" else 1)
