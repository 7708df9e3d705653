"""IR-ResNet, the face-recognition ResNet of ArcFace.

Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
CVPR 2019, https://arxiv.org/abs/1801.07698 (sec. 3.4, Fig. 7: the "improved residual unit"
BN-conv3x3-BN-PReLU-conv3x3-BN, and the "E" output BN-dropout-FC-BN).

Depths and layout follow insightface's ``iresnet`` (arcface_torch): a stride-1 3x3 stem with no
max-pool (112 px faces are small; an ImageNet stem would throw 3/4 of the resolution away at
once), four stages of 64/128/256/512 channels that each start with a stride-2 block, so a 112 px
face leaves a 7x7x512 map. That map is flattened rather than average-pooled: a face is aligned,
so position carries identity (the eyes are always at the same place), and the FC layer of the
neck learns a weight per position.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import Builder

__all__ = ["IBasicBlock", "IResNet", "LAYERS", "iresnet"]

# blocks per stage, as insightface's iresnet18/34/50/100
LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}

WIDTHS = (64, 128, 256, 512)
DOWNSAMPLE = 16  # four stride-2 stages


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # no bias: a BatchNorm follows every conv
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """The improved residual unit (Fig. 7 of the paper): BN-conv3x3-BN-PReLU-conv3x3(stride)-BN.

    Unlike the original ResNet block, the stride sits on the *second* conv (the first one sees
    the full-resolution map), there is no activation after the addition, and the leading BN
    normalises the input of each unit.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(cin),
            _conv3x3(cin, cout),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            _conv3x3(cout, cout, stride),
            nn.BatchNorm2d(cout),
        )
        # a projection shortcut only where the shape changes (here: each stage's first block)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class IResNet(nn.Module):
    """Stem, four IR stages, then BN2d-dropout-flatten: ``(B, 3, S, S) -> (B, 512 (S/16)^2)``.

    The output BN2d stands for the first BN of the paper's "E" output, hence
    ``out_normalized = True``: :class:`~fvloss.model.EmbeddingNet` then adds only
    dropout-FC-BN1d.
    """

    out_normalized = True

    def __init__(self, layers: tuple[int, ...], img_size: int = 112, dropout: float = 0.0):
        super().__init__()
        if img_size <= 0 or img_size % DOWNSAMPLE:
            raise ValueError(
                f"IR-ResNet needs img_size divisible by {DOWNSAMPLE} (four stride-2 stages), "
                f"got {img_size}"
            )
        self.stem = nn.Sequential(
            _conv3x3(3, WIDTHS[0]), nn.BatchNorm2d(WIDTHS[0]), nn.PReLU(WIDTHS[0])
        )
        stages, cin = [], WIDTHS[0]
        for width, n in zip(WIDTHS, layers):
            blocks = [IBasicBlock(cin, width, stride=2)]
            blocks += [IBasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.output = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(dropout), nn.Flatten())
        self.map_size = img_size // DOWNSAMPLE
        self.out_features = cin * self.map_size**2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's ``(B, 512, S/16, S/16)`` map."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x))


def iresnet(depth: int) -> Builder:
    """Builder ``(img_size, pretrained) -> IResNet`` of IR-ResNet-``depth`` (18/34/50/100)."""
    layers = LAYERS[depth]

    def build(img_size: int, pretrained: bool) -> IResNet:
        if pretrained:
            raise ValueError(
                f"iresnet{depth} has no pretrained weights in fvloss (train it from scratch, "
                "or load a checkpoint with learn.load)"
            )
        return IResNet(layers, img_size)

    build.__name__ = f"iresnet{depth}"
    return build
