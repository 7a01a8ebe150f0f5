"""The network of the paper's Fig. 4 (never released), rebuilt from its caption, with every open choice named.

What the paper fixes (docs/METHOD.md, "Face pipeline"): 3x3 convolutions with 128 maps; three *local convolution* layers, 3x3,
256 maps, whose weights are shared only within 4x4, 2x2 and 1x1 grids of regions; PReLU after every conv;
max-pool 2x2/2; the 4th pooling output and the 3rd local-conv output are concatenated into FC 512, the feature.

What it leaves open, and what we chose (each is a constructor argument):

1. **Where the local layers sit.** We follow the DeepID pattern the caption echoes (the last pooling output and
   the last local layer feed the FC together): two conv stages, then the local layers interleaved with the last
   two pools::

       C1 (conv 128 x convs[0]) P1   112x96 -> 56x48
       C2 (conv 128 x convs[1]) P2   56x48  -> 28x24
       LC1 (256, 4x4 grid)      P3   28x24  -> 14x12     each region 7x6
       LC2 (256, 2x2 grid)      P4   14x12  -> 7x6       each region 7x6
       LC3 (256, 1x1 grid)           7x6
       FC 512 <- concat(flatten(P4), flatten(LC3))       2 * 256*7*6 = 21504 inputs

   With this layout every region of every local layer covers the same 7x6 cells, which is why we think it is
   the intended one.
2. **How many convs per stage.** ``convs=(2, 2)`` (VGG-like pairs). The caption gives no count.
3. **What "shared within 4x4 regions" means.** ``share="grid"`` (default): the map is cut into a 4x4 (2x2, 1x1)
   grid of regions and each region has its own filter bank, so LC3 is an ordinary conv. ``share="region"``:
   weights are shared within blocks of 4x4 (2x2, 1x1) *cells*, so LC3 is fully unshared (one filter bank per
   output position, DeepFace-style); this is the other reading of the caption and has ~60M more parameters.
   Uneven maps are split as evenly as possible (``torch.tensor_split`` rule: the first parts get the extra row).
4. **Padding.** All 3x3 layers use padding 1 (the caption gives the stride only); the map sizes above follow.
5. **Activation on the FC.** None: the FC output is the feature, as in caffe-face's fc5.
6. **Initialisation.** Caffe's Xavier (uniform, fan-in) for every weight, zero biases, PReLU slopes 0.25.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register_model
from .face_resnet import conv_prelu


def _split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of ``parts`` nearly equal consecutive pieces of ``n`` (larger pieces first, like tensor_split)."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class LocallySharedConv2d(nn.Module):
    """3x3 (odd ``kernel_size``) stride-1 "same" convolution whose filters differ between regions of the map.

    The output map (= input map, ``in_hw``) is cut into rows of sizes ``row_sizes`` and columns of sizes
    ``col_sizes``; region (i, j) uses its own weight ``weight[i * ncols + j]`` (cout, cin, k, k). Inside a region
    the filter slides as in an ordinary conv, and it sees its neighbours' pixels at the region border (the
    receptive field is not clipped), so a 1x1 grid is exactly ``nn.Conv2d(padding=k//2)``.

    Args:
        in_hw: (H, W) of the input map, fixed at construction (like any locally connected layer).
        grid: (gh, gw) number of regions ("grid" reading), or
        region: (rh, rw) cells per region ("region" reading); give exactly one.
    """

    def __init__(self, cin: int, cout: int, in_hw: Sequence[int], grid: Sequence[int] | None = None,
                 region: Sequence[int] | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        if (grid is None) == (region is None):
            raise ValueError("give exactly one of grid=(gh, gw) or region=(rh, rw)")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        h, w = (int(v) for v in in_hw)
        if grid is not None:
            gh, gw = (int(v) for v in grid)
        else:
            rh, rw = (int(v) for v in region)  # type: ignore[union-attr]
            gh, gw = math.ceil(h / rh), math.ceil(w / rw)
        if not (1 <= gh <= h and 1 <= gw <= w):
            raise ValueError(f"a {gh}x{gw} grid does not fit a {h}x{w} map")
        if grid is not None:
            self.row_sizes, self.col_sizes = _split_sizes(h, gh), _split_sizes(w, gw)
        else:
            self.row_sizes = [min(rh, h - i * rh) for i in range(gh)]
            self.col_sizes = [min(rw, w - j * rw) for j in range(gw)]
        self.in_hw = (h, w)
        self.k = kernel_size
        fan_in = cin * kernel_size * kernel_size
        bound = math.sqrt(3.0 / fan_in)  # caffe xavier
        self.weight = nn.Parameter(torch.empty(gh * gw, cout, cin, kernel_size, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(gh * gw, cout))

    def extra_repr(self) -> str:
        r, o, i, k, _ = self.weight.shape
        return (f"{i}, {o}, kernel_size={k}, in_hw={self.in_hw}, grid={len(self.row_sizes)}x{len(self.col_sizes)}"
                f" ({r} filter banks)")

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.in_hw:
            raise ValueError(f"{type(self).__name__} was built for {self.in_hw} maps, got {tuple(x.shape[-2:])}")
        p = self.k // 2
        if len(self.row_sizes) == 1 and len(self.col_sizes) == 1:
            return F.conv2d(x, self.weight[0], self.bias[0], padding=p)
        xp = F.pad(x, (p, p, p, p))  # (B, cin, H+2p, W+2p)
        rows = []
        r0, idx = 0, 0
        for rs in self.row_sizes:
            cols = []
            c0 = 0
            for cs in self.col_sizes:
                patch = xp[..., r0 : r0 + rs + 2 * p, c0 : c0 + cs + 2 * p]
                cols.append(F.conv2d(patch, self.weight[idx], self.bias[idx]))  # (B, cout, rs, cs)
                c0 += cs
                idx += 1
            rows.append(torch.cat(cols, dim=-1))
            r0 += rs
        return torch.cat(rows, dim=-2)  # (B, cout, H, W)


class PaperNet(nn.Module):
    """The Fig. 4 network (see the module docstring for the layout). Input (B, 3, 112, 96) -> (B, embed_dim)."""

    def __init__(self, embed_dim: int = 512, conv_width: int = 128, local_width: int = 256,
                 convs: Sequence[int] = (2, 2), share: str = "grid", in_chans: int = 3,
                 input_size: Sequence[int] = (112, 96)) -> None:
        super().__init__()
        if share not in ("grid", "region"):
            raise ValueError(f"share must be 'grid' or 'region', got {share!r}")
        h, w = (int(v) for v in input_size)
        if h < 16 or w < 16:
            raise ValueError(f"input_size {tuple(input_size)} is too small for four 2x2 pools")
        self.embed_dim = embed_dim
        self.input_size = (h, w)
        layers: list[nn.Module] = []
        cin = in_chans
        for n in convs:
            for _ in range(n):
                layers.append(conv_prelu(cin, conv_width, 1, "xavier"))
                cin = conv_width
            layers.append(nn.MaxPool2d(2, 2))
        self.convs = nn.Sequential(*layers)
        hw = (h // 2 ** len(convs), w // 2 ** len(convs))
        shares = ((4, 4), (2, 2), (1, 1))

        def local(cin_: int, hw_: tuple[int, int], s: tuple[int, int]) -> nn.Sequential:
            kw = {"grid": s} if share == "grid" else {"region": s}
            return nn.Sequential(LocallySharedConv2d(cin_, local_width, hw_, **kw), nn.PReLU(local_width, init=0.25))

        self.lc1 = local(cin, hw, shares[0])
        self.pool3 = nn.MaxPool2d(2, 2)
        hw = (hw[0] // 2, hw[1] // 2)
        self.lc2 = local(local_width, hw, shares[1])
        self.pool4 = nn.MaxPool2d(2, 2)
        hw = (hw[0] // 2, hw[1] // 2)
        self.lc3 = local(local_width, hw, shares[2])
        self.feature_hw = hw  # 7x6 for 112x96
        self.fc = nn.Linear(2 * local_width * hw[0] * hw[1], embed_dim)
        bound = math.sqrt(3.0 / self.fc.in_features)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """concat(flatten(pool4), flatten(lc3)) (B, 2 * 256 * 7 * 6), the FC's input."""
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"expected input of spatial size {self.input_size}, got {tuple(x.shape[-2:])}")
        p4 = self.pool4(self.lc2(self.pool3(self.lc1(self.convs(x)))))  # (B, 256, 7, 6)
        l3 = self.lc3(p4)  # (B, 256, 7, 6)
        return torch.cat([p4.flatten(1), l3.flatten(1)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))  # (B, embed_dim)


@register_model("face_paper")
def face_paper(embed_dim: int = 512, share: str = "grid", convs: Sequence[int] = (2, 2), in_chans: int = 3,
               input_size: Sequence[int] = (112, 96)) -> PaperNet:
    """The paper's Fig. 4 network (our reading; see :mod:`centerloss.models.paper_net`)."""
    return PaperNet(embed_dim=embed_dim, convs=convs, share=share, in_chans=in_chans, input_size=input_size)
