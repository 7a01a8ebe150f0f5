"""LeNets++ (paper Sec. 3, Fig. 2): a deeper, wider LeNet with a 2-D feature layer for the MNIST toy study.

Every conv is 5x5, stride 1, padding 2, followed by PReLU:
    stage 1: conv 32, conv 32, maxpool 2/2       28x28 -> 14x14
    stage 2: conv 64, conv 64, maxpool 2/2       14x14 -> 7x7
    stage 3: conv 128, conv 128, maxpool 3/2     7x7   -> 3x3   (caffe-face: kernel 3, stride 2)
    head:    FC 128*3*3 -> 2 (+PReLU), the feature
The 10-way classifier (no bias, as in caffe-face) belongs to the objective.
"""

from __future__ import annotations

from torch import Tensor, nn

from . import register_model


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=5, stride=1, padding=2), nn.PReLU(cout)]


@register_model("lenetpp")
class LeNetsPP(nn.Module):
    """LeNets++ with a ``embed_dim``-wide feature (2 in the paper). Input (B, 1, 28, 28)."""

    def __init__(self, embed_dim: int = 2, in_chans: int = 1) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.features = nn.Sequential(
            *_conv(in_chans, 32), *_conv(32, 32), nn.MaxPool2d(2, 2),
            *_conv(32, 64), *_conv(64, 64), nn.MaxPool2d(2, 2),
            *_conv(64, 128), *_conv(128, 128), nn.MaxPool2d(3, 2),
        )
        self.fc = nn.Linear(128 * 3 * 3, embed_dim)
        self.act = nn.PReLU(embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # caffe's "xavier" filler (variance 1/fan_in), as caffe-face used. PyTorch's default init leaves this
        # BN-free stack on the ln(10) plateau for hundreds of steps; He init (variance ~2/fan_in) diverged at
        # lr 0.02 within a few steps in our runs.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")  # caffe "xavier": U(+-sqrt(3/fan_in))
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)  # (B, 1152)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.fc(self.forward_features(x)))  # (B, embed_dim)
