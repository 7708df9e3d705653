"""Sub-center ArcFace (Deng et al., "Sub-center ArcFace: Boosting Face Recognition by
Large-scale Noisy Web Faces", ECCV 2020,
https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import MarginHead, angular_margin, feature_norm

__all__ = ["SubCenterArcFaceHead"]


class SubCenterArcFaceHead(MarginHead):
    """ArcFace ``s * cos(theta + m)`` on ``theta`` = the angle to the class's *nearest* of ``k``
    sub-centres; paper defaults ``s=64, m=0.5, k=3, drop_angle=75`` (degrees).

    Noisy samples gather at non-dominant sub-centres. :meth:`drop_non_dominant` (the
    :class:`~fvloss.callbacks.subcenter_drop.SubCenterDrop` callback calls it) keeps per class the
    sub-centre nearest to most training samples so far (buffer ``hits``); from then on samples
    farther than ``drop_angle`` from it are left out of the loss, the mean is over the rest.

    Args:
        k: sub-centres per class.
        drop_angle: after the drop, samples farther (degrees) from their class's dominant sub-centre leave the loss.
        eps: cos is clamped to [-1 + eps, 1 - eps] for the angle's gradient.
    """

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {"m": (0.2, 0.7, False)}

    _keep: torch.Tensor | None = None  # the batch's samples in the loss, set by logits()

    def __init__(
        self,
        emb_dim: int,
        n_classes: int,
        s: float | str = 64.0,
        m: float = 0.5,
        k: int = 3,
        drop_angle: float = 75.0,
        eps: float = 1e-7,
    ):
        super().__init__(emb_dim, n_classes, s, m, n_sub=k)
        self.drop_angle, self.eps = drop_angle, eps
        self.register_buffer("hits", torch.zeros(n_classes, k, dtype=torch.long))
        self.register_buffer("active", torch.ones(n_classes, k, dtype=torch.bool))
        self.register_buffer("dropped", torch.zeros((), dtype=torch.bool))

    def sub_cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """As MarginHead's, inactive sub-centres at -2 (never the max)."""
        return super().sub_cosine(emb).masked_fill(~self.active, -2.0)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sub, labels = self.sub_cosine(emb), labels.long()
        sub_y = sub[torch.arange(len(sub), device=sub.device), labels]  # (B, k) own class
        if self.training:
            with torch.no_grad():  # index_put_, not bincount: no host sync
                self.hits.index_put_((labels, sub_y.argmax(1)), torch.ones_like(labels), True)
        # after the drop only the dominant sub-centre is active: sub_y's max is the angle to it
        far = sub_y.detach().amax(1) < math.cos(math.radians(self.drop_angle))
        self._keep = ~(self.dropped & far)
        return self.margin_logits(sub.amax(2).clamp(-1.0, 1.0), labels, feature_norm(emb))

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        return angular_margin(cos_t, self.m, self.eps)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, labels.long(), reduction="none")
        keep = torch.ones_like(ce) if self._keep is None else self._keep.to(ce.dtype)
        self._keep = None  # never reused for another batch
        return (ce * keep).sum() / keep.sum().clamp_min(1.0)  # all dropped: 0, not NaN

    @torch.no_grad()
    def drop_non_dominant(self) -> None:
        """Keep each class's most-hit sub-centre only (the first where none was hit)."""
        self.active.copy_(F.one_hot(self.hits.argmax(1), self.n_sub).bool())
        self.dropped.fill_(True)
