"""AdaFace: quality-adaptive margin (Kim, Jain, Liu, "AdaFace: Quality Adaptive Margin for Face
Recognition", CVPR 2022, https://arxiv.org/abs/2204.00964)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..ranks import global_mean_std
from .base import MarginHead

__all__ = ["AdaFaceHead"]


class AdaFaceHead(MarginHead):
    """Target logit ``s * (cos(theta + g_angle) - g_add)``, ``g_angle = -m z``, ``g_add = m + m z``;
    paper defaults ``s=64, m=0.4, h=0.333, t_alpha=0.01`` (``eps=1e-3`` as the authors' code).

    ``z = clip(h (||x|| - mu) / (sigma + eps), -1, 1)``, the feature norm (an image-quality proxy)
    standardised by EMA statistics of the batches' norms: z = -1 (hard, low quality) is ArcFace
    ``cos(theta + m)``, z = 0 is CosFace ``cos(theta) - m``, z = +1 is ``cos(theta - m) - 2m``.
    As the authors' code (github.com/mk-minchul/AdaFace, head.py): the norm is clipped to
    [0.001, 100] and detached, and ``batch_mean`` / ``batch_std`` (buffers, init 20 and 100) are
    updated before they are used, ``t_alpha`` being the new batch's weight.

    Args:
        h: how far the standardised norm moves the margin (z = clip(h (norm - mu) / sigma)).
        t_alpha: the weight of a new batch in the norm's EMA statistics.
        eps: added to the EMA std.
    """

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "m": (0.2, 0.6, False),
        "h": (0.1, 0.6, False),
    }

    def __init__(
        self,
        emb_dim: int,
        n_classes: int,
        s: float | str = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
    ):
        super().__init__(emb_dim, n_classes, s, m)
        self.h, self.t_alpha, self.eps = h, t_alpha, eps
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        safe = norm.detach().clamp(0.001, 100.0)  # the margin only reads the norm, never moves it
        if self.training:
            with torch.no_grad():  # the current batch counts already (authors' order)
                mean, std, n = global_mean_std(safe)  # of the global batch under DDP
                self.batch_mean.lerp_(mean.to(self.batch_mean), self.t_alpha)
                if n > 1:  # an unbiased std needs two rows (the authors' would be NaN)
                    self.batch_std.lerp_(std.to(self.batch_std), self.t_alpha)
        mean, std = self.batch_mean.to(safe), self.batch_std.to(safe)  # float64 buffers: .double()
        z = ((safe - mean) / (std + self.eps) * self.h).clamp(-1.0, 1.0)
        # The authors clamp the cosine to +-(1 - eps) before acos (finite gradient at cos = +-1)
        # and clip every class's angle to [eps, pi - eps]; the other classes get no margin and
        # their angles then lie inside it already, so clipping the target's alone is the same
        # up to that cosine clamp (fvloss leaves other classes' cosines unclamped).
        theta = torch.acos(cos_t.clamp(-1.0 + self.eps, 1.0 - self.eps))
        theta_m = (theta - self.m * z).clamp(self.eps, math.pi - self.eps)
        return torch.cos(theta_m) - (self.m + self.m * z)
