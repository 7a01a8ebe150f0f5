"""Face networks: every registered network trains (shapes, gradients everywhere, no NaNs), Face-ResNet-27 has
caffe-face's layout, and the locally shared conv matches a slow per-region reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from centerloss.models import MODELS, create_model
from centerloss.models.face_resnet import FaceResNet
from centerloss.models.io import load_model, save_model
from centerloss.models.paper_net import LocallySharedConv2d, PaperNet

# Networks that are not face networks declare their own input; every other one must take 112x96 RGB crops.
_INPUTS = {"lenetpp": (16, 1, 28, 28)}  # 2-D PReLU feature: needs a few samples to see both signs


def _check_trains(model: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape)
    feat = model.train()(x)
    assert feat.shape == (shape[0], model.embed_dim)
    assert torch.isfinite(feat).all()
    # a loss that depends on every feature dimension, like a classifier on top would
    (feat * torch.randn_like(feat)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient in {name}"


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_network_trains(name: str) -> None:
    _check_trains(create_model(name), _INPUTS.get(name, (2, 3, 112, 96)))


def test_face_networks_are_registered() -> None:
    for name in ("face_resnet27", "face_paper", "face_small"):
        assert name in MODELS


def test_paper_net_region_reading_trains() -> None:
    # the other reading of "shared within 4x4 regions" (fully unshared LC3), at small width to stay fast
    net = PaperNet(embed_dim=16, conv_width=8, local_width=8, convs=(1, 1), share="region")
    _check_trains(net, (2, 3, 112, 96))
    banks = [m.weight.shape[0] for m in net.modules() if isinstance(m, LocallySharedConv2d)]
    assert banks == [7 * 6, 7 * 6, 7 * 6]  # 28x24 in 4x4 cells, 14x12 in 2x2 cells, 7x6 in single cells
    grid = PaperNet(embed_dim=16, conv_width=8, local_width=8, convs=(1, 1), share="grid")
    assert [m.weight.shape[0] for m in grid.modules() if isinstance(m, LocallySharedConv2d)] == [16, 4, 1]


def test_face_resnet27_matches_caffe_face_layout() -> None:
    net = create_model("face_resnet27")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) for c in convs)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert sum(isinstance(m, nn.PReLU) for m in net.modules()) == 27
    assert [c.out_channels for c in convs if c.padding == (0, 0)] == [32, 64, 128, 256, 512]  # transitions
    assert net.feature_hw == (5, 4)
    assert net.fc5.in_features == 512 * 5 * 4 and net.embed_dim == 512
    # residual units: 1, 2, 5, 3 at 64, 128, 256, 512 (two padded convs each)
    padded = [c.out_channels for c in convs if c.padding == (1, 1)]
    assert padded == [64] * 2 + [128] * 4 + [256] * 10 + [512] * 6
    # the spatial trace through the body for a 112x96 input
    x = torch.zeros(1, 3, 112, 96)
    with torch.no_grad():
        assert net.body(x).shape == (1, 512, 5, 4)


def test_face_small_reaches_5x4_and_is_cheaper() -> None:
    small = create_model("face_small")
    assert small.feature_hw == (5, 4)
    n_small = sum(p.numel() for p in small.parameters())
    n_full = sum(p.numel() for p in create_model("face_resnet27").parameters())
    assert n_small * 10 < n_full


def test_wrong_input_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="spatial size"):
        create_model("face_small")(torch.zeros(1, 3, 112, 112))
    with pytest.raises(ValueError, match="too small"):
        FaceResNet(input_size=(20, 20))


@pytest.mark.parametrize("kw", [{"grid": (4, 4)}, {"grid": (3, 2)}, {"region": (4, 4)}, {"region": (2, 3)},
                                {"grid": (1, 1)}])
def test_locally_shared_conv_matches_masked_reference(kw: dict) -> None:
    torch.manual_seed(0)
    h, w = 14, 11  # uneven on purpose
    layer = LocallySharedConv2d(3, 5, (h, w), **kw).double()
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    # slow reference: every region's filter applied to the whole map, then each pixel takes its region's answer
    ref = torch.zeros(2, 5, h, w, dtype=torch.float64)
    idx = 0
    r0 = 0
    for rs in layer.row_sizes:
        c0 = 0
        for cs in layer.col_sizes:
            full = F.conv2d(x, layer.weight[idx], layer.bias[idx], padding=1)
            ref[..., r0 : r0 + rs, c0 : c0 + cs] = full[..., r0 : r0 + rs, c0 : c0 + cs]
            c0 += cs
            idx += 1
        r0 += rs
    assert sum(layer.row_sizes) == h and sum(layer.col_sizes) == w
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)


def test_locally_shared_conv_gradcheck() -> None:
    torch.manual_seed(0)
    layer = LocallySharedConv2d(2, 2, (5, 4), grid=(2, 2)).double()
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t).sum(dim=1), (x,))


def test_face_model_roundtrips_through_safetensors(tmp_path) -> None:
    net = create_model("face_small", embed_dim=32, width=8)
    save_model(tmp_path / "m.safetensors", net, "face_small", {"embed_dim": 32, "width": 8}, {"labels": ["a"]})
    back, meta = load_model(tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 112, 96)
    torch.testing.assert_close(back(x), net.eval()(x), rtol=0, atol=0)
    assert meta["labels"] == ["a"]
