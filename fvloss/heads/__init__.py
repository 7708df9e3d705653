"""Heads (cost functions with their classifier weights) and the loss registry.

A new loss is one head module here plus one :func:`register_loss` line below; everything that
offers a choice of loss (the learner, ``fvloss train --loss``, ``python -m fvloss.recipes.<loss>``,
experiment files' ``[<loss>]`` tables) reads the registry.
"""

from __future__ import annotations

from ..callbacks.center import CenterLoss
from ..callbacks.subcenter import SubCenterDrop
from .adaface import AdaFaceHead
from .arcface import ArcFaceHead
from .base import Head, MarginHead, adacos_scale, angular_margin, feature_norm
from .combined import CombinedMarginHead
from .cosface import CosFaceHead
from .curricularface import CurricularFaceHead
from .elasticface import ElasticArcHead
from .magface import MagFaceHead
from .registry import LOSSES, LossSpec, build_loss, loss_spec, register_loss
from .softmax import SoftmaxHead
from .sphereface import SphereFaceHead
from .subcenter import SubCenterArcFaceHead

__all__ = [
    "Head",
    "MarginHead",
    "SoftmaxHead",
    "ArcFaceHead",
    "CosFaceHead",
    "SphereFaceHead",
    "CombinedMarginHead",
    "SubCenterArcFaceHead",
    "CurricularFaceHead",
    "AdaFaceHead",
    "MagFaceHead",
    "ElasticArcHead",
    "LOSSES",
    "LossSpec",
    "build_loss",
    "loss_spec",
    "make_head",
    "register_loss",
    "adacos_scale",
    "angular_margin",
    "feature_norm",
]

# fvloss's defaults that differ from the papers' (the heads' signatures) are given here, with
# the measurement behind them in the README: s="auto" is AdaCos's fixed scale for C classes,
# better than s=64 from scratch on a few hundred identities ("ArcFace on small data"); every
# cosine head gets it, so that a comparison of losses is not one of scales.
register_loss("softmax", SoftmaxHead, summary="softmax cross-entropy (the assignment's baseline)")
register_loss("center", SoftmaxHead, CenterLoss, summary="softmax + center loss (Wen et al. 2016)")
register_loss(
    "arcface", ArcFaceHead, s="auto", summary="additive angular margin (Deng et al. 2019)"
)
register_loss("cosface", CosFaceHead, s="auto", summary="additive cosine margin (Wang et al. 2018)")
register_loss("sphereface", SphereFaceHead, summary="angular softmax A-Softmax (Liu et al. 2017)")
register_loss(
    "combined", CombinedMarginHead, s="auto", summary="combined margin (Deng et al. 2019)"
)
register_loss(
    "subcenter", SubCenterArcFaceHead, SubCenterDrop, s="auto", summary="sub-center ArcFace (2020)"
)
register_loss("curricularface", CurricularFaceHead, s="auto", summary="CurricularFace (Huang 2020)")
register_loss("adaface", AdaFaceHead, s="auto", summary="quality-adaptive margin (Kim et al. 2022)")
register_loss("magface", MagFaceHead, s="auto", summary="magnitude-aware margin (Meng et al. 2021)")
register_loss(
    "elasticface", ElasticArcHead, s="auto", summary="random margin (Boutros et al. 2022)"
)


def make_head(loss: str, emb_dim: int, n_classes: int, **settings) -> Head:
    """The head of the registered ``loss`` (its callbacks, e.g. center loss's, are left out)."""
    return build_loss(loss, emb_dim, n_classes, settings)[0]
