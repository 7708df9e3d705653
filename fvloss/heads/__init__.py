"""Heads: cost functions with their classifier weights, one paper per module over
:class:`~.base.Head` / :class:`~.base.MarginHead`.

A head is a plain ``nn.Module``, ``head(embeddings, labels) -> loss``, usable in any training
loop. The registry that names them for the learner and the command line (with the callbacks
some losses train with, such as center loss's) is one layer up: :mod:`fvloss.losses`.
"""

from __future__ import annotations

from .adaface import AdaFaceHead
from .arcface import ArcFaceHead
from .base import Head, MarginHead, adacos_scale, angular_margin, feature_norm
from .combined import CombinedMarginHead
from .cosface import CosFaceHead
from .curricularface import CurricularFaceHead
from .elasticface import ElasticArcHead
from .magface import MagFaceHead
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
    "adacos_scale",
    "angular_margin",
    "feature_norm",
]
