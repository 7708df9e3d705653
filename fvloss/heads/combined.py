"""Combined margin, insightface's ``cos(m1 theta + m2) - m3`` (Deng et al., "ArcFace: Additive
Angular Margin Loss for Deep Face Recognition", CVPR 2019, sec. 3.3,
https://arxiv.org/abs/1801.07698)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .base import MarginHead

__all__ = ["CombinedMarginHead"]


class CombinedMarginHead(MarginHead):
    """Target logit ``s * (cos(m1 theta + m2) - m3)``: SphereFace's multiplicative, ArcFace's
    additive angular and CosFace's additive cosine margins in one; paper defaults ``s=64`` and
    its combined setting ``(m1, m2, m3) = (1, 0.3, 0.2)``.

    ``theta = acos(cos)`` with cos clamped to ``[-1 + eps, 1 - eps]``, so that the gradient
    ``-1 / sin(theta)`` stays finite at cos = +-1. The angle ``m1 theta + m2`` is clamped at pi:
    beyond it cos would grow again with theta and reward moving away from the class (ArcFace's
    fall-back serves the same end for m2 alone); there the target is ``-1 - m3``, flat.

    Args:
        m1: SphereFace's multiplicative angular margin (1: none).
        m2: ArcFace's additive angular margin (radians).
        m3: CosFace's additive cosine margin.
        eps: cos is clamped to [-1 + eps, 1 - eps] for the angle's gradient.
    """

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "m2": (0.1, 0.5, False),
        "m3": (0.0, 0.35, False),
    }

    shardable = True  # a stateless margin on the target: Partial FC can split it

    margins = {"m1": 1.0, "m2": 0.0, "m3": 0.0}  # a warm-up ramps all three (m1 from 1)

    def __init__(
        self,
        emb_dim: int,
        n_classes: int,
        s: float | str = 64.0,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
        eps: float = 1e-7,
    ):
        super().__init__(emb_dim, n_classes, s, m2)
        self.m1, self.m2, self.m3, self.eps = float(m1), float(m2), float(m3), eps

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(cos_t.clamp(-1.0 + self.eps, 1.0 - self.eps))
        return torch.cos((self.m1 * theta + self.m2).clamp_max(math.pi)) - self.m3

    def extra_repr(self) -> str:
        base = super().extra_repr().rsplit(", m=", 1)[0]
        return f"{base}, m1={self.m1:.3g}, m2={self.m2:.3g}, m3={self.m3:.3g}"
