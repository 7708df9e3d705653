"""MobileFaceNet, a MobileNetV2-style face embedder of about a million parameters.

Chen, Liu, Gao, Han, "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification
on Mobile Devices", CCBR 2018, https://arxiv.org/abs/1804.07573 (Table 1: the architecture;
Table 2: 0.99M parameters with a 128-d embedding).

Its two face-specific choices: PReLU instead of ReLU, and a *global depthwise conv* (GDConv)
instead of global average pooling at the end. A face is aligned, so the corner and the centre
of the last map do not matter equally; GDConv learns a weight per position and channel, for
512 x 7 x 7 parameters instead of the 512 x 49 x D of a flatten-then-FC output.

The paper's last layer, a linear 1x1 conv to 128 channels + BN, is fvloss's neck
(``Linear(512, emb_dim) + BN1d``), so this body ends after GDConv + BN with 512 features.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Bottleneck", "MobileFaceNet", "BOTTLENECKS", "mobilefacenet"]

# (t: expansion factor, c: output channels, n: repeats, s: stride of the first repeat), Table 1
BOTTLENECKS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
DOWNSAMPLE = 16  # the stem's stride 2 and three stride-2 bottlenecks


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """conv (no bias: BN follows) -> BN -> PReLU, or conv -> BN when ``act=False`` (linear)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """MobileNetV2's inverted residual with PReLU: expand 1x1 (x t), depthwise 3x3 (stride),
    linear project 1x1; a residual connection where stride is 1 and the channels match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.block = nn.Sequential(
            _conv_bn(cin, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            # linear bottleneck: a non-linearity on the narrow output would destroy information
            _conv_bn(hidden, cout, 1, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """``(B, 3, S, S) -> (B, 512)``: Table 1 up to the linear GDConv + BN.

    The GDConv kernel is the last map's size, ``S/16`` (7 at 112 px). Its output already passed
    a BatchNorm, hence ``out_normalized = True``: :class:`~fvloss.model.EmbeddingNet` then adds
    dropout-FC-BN1d, the paper's linear 1x1 conv + BN.
    """

    out_normalized = True

    def __init__(self, img_size: int = 112):
        super().__init__()
        if img_size <= 0 or img_size % DOWNSAMPLE:
            raise ValueError(
                f"MobileFaceNet needs img_size divisible by {DOWNSAMPLE} (four stride-2 layers), "
                f"got {img_size}"
            )
        layers: list[nn.Module] = [
            _conv_bn(3, 64, 3, stride=2),
            _conv_bn(64, 64, 3, groups=64),  # depthwise 3x3
        ]
        cin = 64
        for t, c, n, s in BOTTLENECKS:
            for i in range(n):
                layers.append(Bottleneck(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 512, 1))
        self.features = nn.Sequential(*layers)
        self.map_size = img_size // DOWNSAMPLE
        # linear GDConv: a depthwise conv whose kernel covers the whole map, so it outputs 1x1
        self.gdconv = nn.Sequential(
            nn.Conv2d(512, 512, self.map_size, groups=512, bias=False),
            nn.BatchNorm2d(512),
            nn.Flatten(),
        )
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gdconv(self.features(x))


def mobilefacenet(img_size: int, pretrained: bool) -> MobileFaceNet:
    """Builder ``(img_size, pretrained) -> MobileFaceNet``."""
    if pretrained:
        raise ValueError(
            "mobilefacenet has no pretrained weights in fvloss (train it from scratch, "
            "or load a checkpoint with learn.load)"
        )
    return MobileFaceNet(img_size)
