"""Embedding bodies by name: torchvision's ResNets (the default, the assignment's ResNet34), the
face field's IR-ResNets and MobileFaceNet, and any ``timm`` model as ``timm:NAME``.

A body maps ``(B, 3, H, W)`` images to ``(B, out_features)`` features; :class:`~fvloss.model.
EmbeddingNet` puts the BN-dropout-FC-BN neck behind it. A new body is one file with a builder
and one :func:`register_body` line here.
"""

from __future__ import annotations

from .iresnet import iresnet
from .mobilefacenet import mobilefacenet
from .registry import BODIES, BodySpec, build_body, register_body
from .torchvision import resnet, resnet_face

__all__ = ["BODIES", "BodySpec", "build_body", "register_body"]

for _depth in (18, 34, 50, 101, 152):
    register_body(f"resnet{_depth}", resnet(_depth), "torchvision ResNet (He et al., CVPR 2016)")
for _depth in (18, 34, 50):
    register_body(
        f"resnet{_depth}_face",
        resnet_face(_depth),
        "torchvision ResNet (He et al., CVPR 2016) with a stride-1 3x3 stem, no max-pool",
    )
for _depth in (18, 34, 50, 100):
    register_body(
        f"iresnet{_depth}",
        iresnet(_depth),
        "IR-ResNet of ArcFace (Deng et al., CVPR 2019), BN-dropout-flatten output",
    )
register_body(
    "mobilefacenet",
    mobilefacenet,
    "MobileFaceNet (Chen et al., CCBR 2018), GDConv output, ~1M parameters",
)
