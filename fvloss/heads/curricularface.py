"""CurricularFace (Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face
Recognition", CVPR 2020, https://arxiv.org/abs/2004.00288)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..ranks import global_mean
from .base import MarginHead, _wide, angular_margin

__all__ = ["CurricularFaceHead"]


class CurricularFaceHead(MarginHead):
    """Target ``s * cos(theta_y + m)`` (ArcFace's, with its fall-back); a negative that beats it,
    ``cos_j > cos(theta_y + m)``, becomes ``s * cos_j (t + cos_j)``, the others ``s * cos_j``.
    ``t`` is an EMA of the batches' mean target cosine (before the margin), ``t <- 0.01 mean +
    0.99 t`` from 0, updated in training before use: early (t ~ 0) hard negatives are damped,
    easy samples dominate; as t grows they weigh more. Paper defaults ``s=64, m=0.5``.

    Args:
        eps: cos is clamped to [-1 + eps, 1 - eps] for the angle's gradient.
    """

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {"m": (0.2, 0.7, False)}

    def __init__(
        self, emb_dim: int, n_classes: int, s: float | str = 64.0, m: float = 0.5, eps: float = 1e-7
    ):
        super().__init__(emb_dim, n_classes, s, m)
        self.eps = eps
        self.register_buffer("t", torch.zeros(()))  # saved with the model, moved by no optimizer

    def margin_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, norm: torch.Tensor | None = None
    ) -> torch.Tensor:
        cos, idx = _wide(cos), labels.long().unsqueeze(1)
        cos_t = cos.gather(1, idx)
        if self.training:
            with torch.no_grad():
                self.t.mul_(0.99).add_(0.01 * global_mean(cos_t).to(self.t))  # all ranks' mean
        target = angular_margin(cos_t, self.m, self.eps)
        with torch.no_grad():  # "hard" is judged against cos(theta + m) itself, as the authors'
            # code (their mask uses the identity, not the fall-back value beyond theta + m > pi)
            hard = cos > torch.cos(torch.acos(cos_t) + self.m)
        t = self.t.to(cos.dtype)
        cos = torch.where(hard, cos * (t + cos), cos)
        return self.s * cos.scatter(1, idx, target)
