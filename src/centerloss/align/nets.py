"""The three MTCNN networks (Zhang et al. 2016) as plain PyTorch modules, with the original weights.

The weights come from the files shipped by the PyPI package ``mtcnn==1.0.0`` (a Keras port of the authors'
Caffe models). That package imports TensorFlow, so it is never imported here: :func:`weights_dir` only asks
``importlib`` where it is installed and the ``.lz4`` files are read with ``joblib``. Each file holds the
Keras ``get_weights()`` list in layer order. The mapping to torch:

- conv kernels are HWIO -> OIHW;
- PReLU alphas are ``(1, 1, C)`` (shared over H, W) -> ``(C,)``;
- dense kernels are ``(in, out)`` -> ``(out, in)``. The Keras R/O-Nets permute NHWC to N,W,H,C before
  flattening, so their ``in`` index runs over (w, h, c); torch flattens NCHW as (c, h, w). The columns are
  reordered once at load time so the torch modules flatten in the native order;
- Keras ``MaxPooling2D(padding="same")`` only ever pads at the bottom/right for these shapes, which is
  exactly ``nn.MaxPool2d(..., ceil_mode=True)``.

Input of every network: RGB, ``(x - 127.5) / 128``, NCHW float32.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import DataError

__all__ = ["PNet", "RNet", "ONet", "weights_dir", "load_pretrained"]


def weights_dir() -> Path:
    """Folder of the installed ``mtcnn`` package's weight files, found without importing the package."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None:
        raise DataError("the MTCNN weights come from the PyPI package mtcnn==1.0.0, which is not installed "
                        "(pip install 'mtcnn==1.0.0'; it is never imported, only its weight files are read)")
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        d = Path(root) / "assets" / "weights"
        if all((d / f"{n}.lz4").is_file() for n in ("pnet", "rnet", "onet")):
            return d
    raise DataError(f"no pnet/rnet/onet.lz4 under assets/weights of the mtcnn package at {roots}; "
                    "is it mtcnn==1.0.0?")


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field, stride 2. -> (box offsets, face prob map)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(10, 16, 3), nn.PReLU(16),
            nn.Conv2d(16, 32, 3), nn.PReLU(32),
        )
        self.reg = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, 2, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x: (B, 3, H, W)
        h = self.body(x)  # (B, 32, h, w), h = ceil((H-2)/2) - 4
        return self.reg(h), torch.softmax(self.cls(h), dim=1)[:, 1]  # (B, 4, h, w), (B, h, w)


class RNet(nn.Module):
    """Refinement net on 24x24 patches. -> (box offsets (N, 4), face prob (N,))."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 28, 3), nn.PReLU(28), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(28, 48, 3), nn.PReLU(48), nn.MaxPool2d(3, 2),
            nn.Conv2d(48, 64, 2), nn.PReLU(64),
            nn.Flatten(), nn.Linear(576, 128), nn.PReLU(128),
        )
        self.reg = nn.Linear(128, 4)
        self.cls = nn.Linear(128, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x: (N, 3, 24, 24)
        h = self.body(x)  # (N, 128)
        return self.reg(h), torch.softmax(self.cls(h), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 patches. -> (box offsets (N, 4), landmarks (N, 10) as x1..x5, y1..y5, prob (N,))."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(64, 128, 2), nn.PReLU(128),
            nn.Flatten(), nn.Linear(1152, 256), nn.PReLU(256),
        )
        self.reg = nn.Linear(256, 4)
        self.landmarks = nn.Linear(256, 10)
        self.cls = nn.Linear(256, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # x: (N, 3, 48, 48)
        h = self.body(x)  # (N, 256)
        return self.reg(h), self.landmarks(h), torch.softmax(self.cls(h), dim=1)[:, 1]


def _conv(w: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))  # HWIO -> OIHW


def _vec(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.reshape(-1)))


def _dense_after_permute(w: np.ndarray, c: int, h: int, wd: int) -> Tensor:
    """Keras dense kernel (W*H*C, out) whose input was flattened as (w, h, c) -> torch (out, C*H*W)."""
    out = w.shape[1]
    k = w.reshape(wd, h, c, out).transpose(3, 2, 1, 0)  # (out, c, h, w)
    return torch.from_numpy(np.ascontiguousarray(k.reshape(out, c * h * wd)))


def _dense(w: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(w.T))


def _state_dict(name: str, arrs: list[np.ndarray]) -> dict[str, Tensor]:
    """Keras ``get_weights()`` list (layer order) -> state dict of our module."""
    a = list(arrs)
    sd: dict[str, Tensor] = {}
    if name == "pnet":
        for i, idx in enumerate((0, 3, 5)):  # conv, prelu pairs in body
            sd[f"body.{idx}.weight"], sd[f"body.{idx}.bias"] = _conv(a[3 * i]), _vec(a[3 * i + 1])
            sd[f"body.{idx + 1}.weight"] = _vec(a[3 * i + 2])
        sd["reg.weight"], sd["reg.bias"] = _conv(a[9]), _vec(a[10])
        sd["cls.weight"], sd["cls.bias"] = _conv(a[11]), _vec(a[12])
    elif name == "rnet":
        for i, idx in enumerate((0, 3, 6)):
            sd[f"body.{idx}.weight"], sd[f"body.{idx}.bias"] = _conv(a[3 * i]), _vec(a[3 * i + 1])
            sd[f"body.{idx + 1}.weight"] = _vec(a[3 * i + 2])
        sd["body.9.weight"], sd["body.9.bias"] = _dense_after_permute(a[9], 64, 3, 3), _vec(a[10])
        sd["body.10.weight"] = _vec(a[11])
        sd["reg.weight"], sd["reg.bias"] = _dense(a[12]), _vec(a[13])
        sd["cls.weight"], sd["cls.bias"] = _dense(a[14]), _vec(a[15])
    elif name == "onet":
        for i, idx in enumerate((0, 3, 6, 9)):
            sd[f"body.{idx}.weight"], sd[f"body.{idx}.bias"] = _conv(a[3 * i]), _vec(a[3 * i + 1])
            sd[f"body.{idx + 1}.weight"] = _vec(a[3 * i + 2])
        sd["body.12.weight"], sd["body.12.bias"] = _dense_after_permute(a[12], 128, 3, 3), _vec(a[13])
        sd["body.13.weight"] = _vec(a[14])
        sd["reg.weight"], sd["reg.bias"] = _dense(a[15]), _vec(a[16])
        sd["landmarks.weight"], sd["landmarks.bias"] = _dense(a[17]), _vec(a[18])
        sd["cls.weight"], sd["cls.bias"] = _dense(a[19]), _vec(a[20])
    else:  # pragma: no cover - internal
        raise KeyError(name)
    return sd


#: sha256 of the weight files shipped in the mtcnn==1.0.0 wheel. joblib files are pickles, so a file is only
#: unpickled after its bytes are proven to be these exact, known files.
WEIGHT_SHA256 = {
    "pnet": "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5",
    "rnet": "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee",
    "onet": "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
}


@lru_cache(maxsize=1)
def _load_arrays(folder: str) -> dict[str, list[np.ndarray]]:
    import hashlib

    import joblib  # a dependency of this package; imported lazily as only the aligner needs it

    out = {}
    for n in ("pnet", "rnet", "onet"):
        path = Path(folder) / f"{n}.lz4"
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise DataError(f"cannot read MTCNN weights {path}: {e}") from e
        if digest != WEIGHT_SHA256[n]:
            raise DataError(f"{path} is not the mtcnn==1.0.0 weight file (sha256 {digest[:16]}...); "
                            "refusing to unpickle it. Install mtcnn==1.0.0.")
        try:
            arrs = joblib.load(path)
        except Exception as e:  # joblib/lz4 raise assorted errors on damaged files
            raise DataError(f"cannot read MTCNN weights {path}: {e}") from e
        if not isinstance(arrs, list) or not all(isinstance(x, np.ndarray) for x in arrs):
            raise DataError(f"{path} does not hold a list of arrays; is the mtcnn package version 1.0.0?")
        out[n] = [x.astype(np.float32, copy=False) for x in arrs]
    return out


def load_pretrained(folder: str | Path | None = None) -> tuple[PNet, RNet, ONet]:
    """The three networks in eval mode with the original MTCNN weights (from :func:`weights_dir` by default)."""
    arrays = _load_arrays(str(folder if folder is not None else weights_dir()))
    nets = (PNet(), RNet(), ONet())
    for name, net in zip(("pnet", "rnet", "onet"), nets, strict=True):
        sd = _state_dict(name, arrays[name])
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise DataError(f"MTCNN {name} weights do not fit the network (mtcnn==1.0.0 expected): {e}") from e
        net.eval().requires_grad_(False)
    return nets  # type: ignore[return-value]
