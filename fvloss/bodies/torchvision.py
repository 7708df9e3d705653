"""torchvision's ResNets as bodies (the classifier dropped), with the ImageNet stem or a face
stem for small inputs.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
https://arxiv.org/abs/1512.03385.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models

__all__ = ["resnet", "resnet_face"]


def resnet(depth: int) -> Callable[[int, bool], nn.Module]:
    """Builder of torchvision's ``resnet{depth}``, ImageNet stem (7x7 stride-2 conv, max-pool)."""
    ctor = getattr(models, f"resnet{depth}")

    def build(img_size: int, pretrained: bool) -> nn.Module:
        # "DEFAULT" downloads ImageNet weights on first use; the assignment trains from scratch.
        net = ctor(weights="DEFAULT" if pretrained else None)
        net.out_features = net.fc.in_features
        net.fc = nn.Identity()
        return net

    build.__name__ = f"resnet{depth}"
    return build


def resnet_face(depth: int) -> Callable[[int, bool], nn.Module]:
    """Builder of torchvision's ``resnet{depth}`` with a face stem: conv3x3 stride 1 (64
    channels), no max-pool.

    The ImageNet stem divides the resolution by 4 before the first stage, which suits 224 px
    photos but leaves a 64 px face a 2x2 map after the last stage; with the stride-1 stem (as
    in IR-ResNet) the four stages see 64/32/16/8 px, an 8x8 map, then the usual average pool.
    """
    ctor = getattr(models, f"resnet{depth}")

    def build(img_size: int, pretrained: bool) -> nn.Module:
        if pretrained:
            raise ValueError(
                f"resnet{depth}_face has no pretrained weights: ImageNet's 7x7 stem weights do "
                f"not fit its 3x3 stem (use arch='resnet{depth}' for ImageNet weights)"
            )
        net = ctor(weights=None)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.out_features = net.fc.in_features
        net.fc = nn.Identity()
        return net

    build.__name__ = f"resnet{depth}_face"
    return build
