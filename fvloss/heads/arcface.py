"""ArcFace: additive angular margin (Deng et al., CVPR 2019, https://arxiv.org/abs/1801.07698)."""

from __future__ import annotations

import math

import torch

from .base import MarginHead

__all__ = ["ArcFaceHead"]


class ArcFaceHead(MarginHead):
    """Target logit ``s * cos(theta + m)``; paper defaults ``s=64, m=0.5``.

    Gradient variant: cos(theta + m) is computed with the trigonometric identity
    ``cos*cos(m) - sin*sin(m)`` with ``sin = sqrt(1 - cos^2)``, as in the authors' reference code
    (insightface ``ArcMarginProduct``), not through ``acos``. Its derivative with respect to cos is
    the exact one, ``sin(theta + m) / sin(theta)``; the ``1 - cos^2`` under the root is clamped
    at ``eps`` so the gradient stays finite at cos = +-1 (where ``acos`` would give inf/NaN).

    Where theta + m > pi, cos(theta + m) is no longer decreasing in theta and would *reward*
    moving away from the class; the paper's code then falls back to the CosFace-like
    ``cos - m * sin(m)``, which we follow. ``easy_margin=True`` instead applies the margin only
    where cos > 0.
    """

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

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        m = self.m  # read each call: a warm-up callback may change it between steps
        sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(self.eps))
        phi = cos_t * math.cos(m) - sin_t * math.sin(m)
        if self.easy_margin:
            return torch.where(cos_t > 0, phi, cos_t)
        # theta + m > pi  <=>  cos_t < cos(pi - m)
        return torch.where(cos_t > math.cos(math.pi - m), phi, cos_t - m * math.sin(m))
