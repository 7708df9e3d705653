"""MagFace: margin and regulariser on the feature magnitude (Meng, Zhao, Huang, Xu, "MagFace: A
Universal Representation for Face Recognition and Quality Assessment", CVPR 2021,
https://arxiv.org/abs/2103.06627)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import MarginHead, angular_margin, feature_norm

__all__ = ["MagFaceHead"]


class MagFaceHead(MarginHead):
    """Target logit ``s * cos(theta + m(a))``, loss ``CE + lambda_g * mean(g(a))``; paper defaults
    ``s=64, l_a=10, u_a=110, l_m=0.45, u_m=0.8, lambda_g=35``.

    ``a = clamp(||x||, l_a, u_a)`` (with its gradient, as the authors' code), the margin
    ``m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m`` grows with the magnitude and the
    regulariser ``g(a) = 1/a + a/u_a^2`` rewards magnitude, so that easy (high-quality) faces end
    with large norms. ArcFace's fall-back ``cos - m sin(m)`` applies beyond theta + m > pi.
    The regulariser needs the embedding's magnitude free to move: fvloss's neck ends in
    BatchNorm1d, whose affine weight still lets the norm grow or shrink.

    Args:
        l_a, u_a: the feature magnitude's bounds.
        l_m, u_m: the margin at l_a and at u_a.
        lambda_g: the weight of the magnitude regulariser g.
    """

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "l_m": (0.3, 0.5, False),
        "u_m": (0.6, 0.9, False),
        "lambda_g": (10.0, 60.0, False),
    }

    #: a warm-up ramps the margin's bounds: m(a) = 0 without margin
    margins = {"l_m": 0.0, "u_m": 0.0}

    def __init__(
        self,
        emb_dim: int,
        n_classes: int,
        s: float | str = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
    ):
        super().__init__(emb_dim, n_classes, s, l_m)  # self.m = l_m, shown by repr only
        self.l_a, self.u_a, self.l_m, self.u_m, self.lambda_g = l_a, u_a, l_m, u_m, lambda_g

    def margin(self, a: torch.Tensor) -> torch.Tensor:
        """``m(a)``, linear from ``l_m`` at ``a = l_a`` to ``u_m`` at ``a = u_a``."""
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        return angular_margin(cos_t, self.margin(norm.clamp(self.l_a, self.u_a)))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        a = feature_norm(emb).clamp(self.l_a, self.u_a)
        g = 1.0 / a + a / self.u_a**2
        return super().loss(logits, labels, emb) + self.lambda_g * g.mean()
