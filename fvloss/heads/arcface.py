"""ArcFace: additive angular margin (Deng et al., CVPR 2019, https://arxiv.org/abs/1801.07698)."""

from __future__ import annotations

import torch

from .base import MarginHead, angular_margin

__all__ = ["ArcFaceHead"]


class ArcFaceHead(MarginHead):
    """Target logit ``s * cos(theta + m)``; paper defaults ``s=64, m=0.5``.

    Computed by :func:`~fvloss.heads.base.angular_margin` (the authors' trigonometric identity,
    finite gradients at cos = +-1, their fall-back ``cos - m sin(m)`` where theta + m > pi).
    ``easy_margin=True`` instead applies the margin only where cos > 0.

    Args:
        easy_margin: the margin only where cos > 0 (insightface's option).
        eps: cos is clamped to [-1 + eps, 1 - eps] for the angle's gradient.
    """

    shardable = True  # a stateless margin on the target: Partial FC can split it

    def __init__(
        self,
        emb_dim: int,
        n_classes: int,
        s: float | str = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
        eps: float = 1e-7,
    ):
        super().__init__(emb_dim, n_classes, s, m)
        self.easy_margin, self.eps = easy_margin, eps

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        # self.m is read at each call: a warm-up callback may change it between steps
        phi = angular_margin(cos_t, self.m, self.eps)
        return torch.where(cos_t > 0, phi, cos_t) if self.easy_margin else phi
