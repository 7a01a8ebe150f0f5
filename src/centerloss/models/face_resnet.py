"""caffe-face's 27-layer "Face-ResNet" (docs/METHOD.md, "Face pipeline"), the de-facto network for reproducing center loss.

Every conv is 3x3, stride 1, followed by PReLU; there is no batch norm. Transition convs have no padding, the
convs inside residual units have padding 1. A residual unit is ``x + prelu(conv(prelu(conv(x))))`` with no
activation after the sum (caffe-face's ``Eltwise`` SUM). Max-pools are 2x2/2. Shapes for a 112x96 input:

    step 1  conv1a 32, conv1b 64, pool       112x96 -> 110x94 -> 108x92 -> 54x46
    step 2  1 residual unit at 64            54x46
    step 3  conv2 128, pool                  52x44 -> 26x22
    step 4  2 residual units at 128          26x22
    step 5  conv3 256, pool                  24x20 -> 12x10
    step 6  5 residual units at 256          12x10
    step 7  conv4 512, pool                  10x8  -> 5x4
    step 8  3 residual units at 512          5x4
    step 9  fc5 512 (the feature; no activation, as in caffe-face)

That is 2 + 2*1 + 1 + 2*2 + 1 + 2*5 + 1 + 2*3 = 27 conv layers, then fc5. Initialisation follows the caffe-face
prototxt: Xavier (uniform, fan-in) for transition convs and fc5, N(0, 0.01^2) for convs inside residual units,
zero biases, PReLU slopes 0.25. The classifier (fc6) belongs to the objective (:class:`~centerloss.losses.JointLoss`).

``face_small`` keeps the building blocks (3x3 conv + PReLU, identity residual units, no BN, valid transition
convs, 2x2 pools, a 5x4 map before fc5) with fewer channels, stages and units and a stride-2 conv1a, so that it
trains on a laptop CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from . import register_model


def _xavier_caffe_(w: Tensor) -> None:
    """Caffe's default ``xavier`` filler: U(-a, a) with a = sqrt(3 / fan_in)."""
    fan_in = w[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(w, -bound, bound)


def conv_prelu(cin: int, cout: int, pad: int, init: str, stride: int = 1) -> nn.Sequential:
    """3x3 conv + PReLU with caffe-face's initialisation (``init``: "xavier" or "gauss")."""
    conv = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=pad)
    if init == "xavier":
        _xavier_caffe_(conv.weight)
    else:
        nn.init.normal_(conv.weight, 0.0, 0.01)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.PReLU(cout, init=0.25))


class ResidualUnit(nn.Module):
    """``x + prelu(conv(prelu(conv(x))))`` at constant width; no activation after the sum."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_prelu(width, width, 1, "gauss"), conv_prelu(width, width, 1, "gauss"))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _out_size(n: int, stages: int, stem_stride: int = 1) -> int:
    """Spatial size after the stem (conv1a, valid conv1b, pool 2/2) and ``stages - 1`` (valid conv + pool)."""
    n = n - 2 if stem_stride == 1 else (n - 1) // 2 + 1  # conv1a: valid, or stride 2 with padding 1
    n = (n - 2) // 2
    for _ in range(stages - 1):
        n = (n - 2) // 2
    return n


class FaceResNet(nn.Module):
    """Face-ResNet embedding network. Input (B, in_chans, H, W), output (B, embed_dim) = fc5.

    Args:
        widths: channels of the four stages (caffe-face: 64, 128, 256, 512).
        units: residual units per stage (caffe-face: 1, 2, 5, 3).
        stem_width: channels of conv1a (caffe-face: 32).
        embed_dim: width of fc5, the feature (caffe-face: 512).
        input_size: (H, W) the network is built for; fc5's input is sized from it (112x96 -> 5x4).
        stem_stride: 1 (caffe-face: conv1a is a valid conv) or 2 (conv1a has stride 2 and padding 1, which
            quarters the cost of everything after it; used by ``face_small`` with one stage fewer, so a 112x96
            input still reaches 5x4 before fc5).
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512), units: Sequence[int] = (1, 2, 5, 3),
                 stem_width: int = 32, embed_dim: int = 512, in_chans: int = 3,
                 input_size: Sequence[int] = (112, 96), stem_stride: int = 1) -> None:
        super().__init__()
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        widths, units = list(widths), list(units)
        if len(widths) != len(units) or not widths:
            raise ValueError(f"widths and units must have the same non-zero length, got {widths}, {units}")
        h, w = (int(s) for s in input_size)
        oh, ow = _out_size(h, len(widths), stem_stride), _out_size(w, len(widths), stem_stride)
        if oh < 1 or ow < 1:
            raise ValueError(f"input_size {tuple(input_size)} is too small for {len(widths)} stages")
        self.embed_dim = embed_dim
        self.input_size = (h, w)
        self.feature_hw = (oh, ow)  # spatial size before fc5 (5x4 for 112x96)
        layers: list[nn.Module] = [conv_prelu(in_chans, stem_width, stem_stride - 1, "xavier", stem_stride),
                                   conv_prelu(stem_width, widths[0], 0, "xavier"), nn.MaxPool2d(2, 2)]
        layers += [ResidualUnit(widths[0]) for _ in range(units[0])]
        for i in range(1, len(widths)):
            layers += [conv_prelu(widths[i - 1], widths[i], 0, "xavier"), nn.MaxPool2d(2, 2)]
            layers += [ResidualUnit(widths[i]) for _ in range(units[i])]
        self.body = nn.Sequential(*layers)
        self.fc5 = nn.Linear(widths[-1] * oh * ow, embed_dim)
        _xavier_caffe_(self.fc5.weight)
        nn.init.zeros_(self.fc5.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last residual stage's output, flattened (B, C*h*w)."""
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"expected input of spatial size {self.input_size}, got {tuple(x.shape[-2:])}")
        return self.body(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc5(self.forward_features(x))  # (B, embed_dim)


@register_model("face_resnet27")
def face_resnet27(embed_dim: int = 512, in_chans: int = 3, input_size: Sequence[int] = (112, 96)) -> FaceResNet:
    """caffe-face's Face-ResNet exactly (27 conv layers + fc5 512)."""
    return FaceResNet((64, 128, 256, 512), (1, 2, 5, 3), 32, embed_dim, in_chans, input_size)


@register_model("face_small")
def face_small(embed_dim: int = 128, width: int = 32, units: Sequence[int] = (1, 1, 1), stem_stride: int = 2,
               in_chans: int = 3, input_size: Sequence[int] = (112, 96)) -> FaceResNet:
    """Face-ResNet scaled for a CPU: ``len(units)`` stages of widths ``width * 2**i``, a stride-2 conv1a, and
    (defaults) 32/64/128 channels with one residual unit each: 9 conv layers, a 5x4 map before fc5 as in the
    full network, and about 1/40 of face_resnet27's FLOPs."""
    return FaceResNet([width * 2**i for i in range(len(units))], units, max(width // 2, 8), embed_dim, in_chans,
                      input_size, stem_stride)
