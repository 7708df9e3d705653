"""CosFace: additive cosine margin (Wang et al., CVPR 2018, https://arxiv.org/abs/1801.09414)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import MarginHead

__all__ = ["CosFaceHead"]


class CosFaceHead(MarginHead):
    """Target logit ``s * (cos(theta) - m)``; paper defaults ``s=64, m=0.35``."""

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "m": (0.1, 0.5, False),
        "s": (16.0, 64.0, False),
    }

    shardable = True  # a stateless margin on the target: Partial FC can split it

    def __init__(self, emb_dim: int, n_classes: int, s: float | str = 64.0, m: float = 0.35):
        super().__init__(emb_dim, n_classes, s, m)

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        return cos_t - self.m
