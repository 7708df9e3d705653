"""ElasticFace-Arc: a random angular margin per sample (Boutros, Damer, Kirchbuchner, Kuijper,
"ElasticFace: Elastic Margin Loss for Deep Face Recognition", CVPRW 2022,
https://arxiv.org/abs/2109.09416)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import MarginHead, angular_margin

__all__ = ["ElasticArcHead"]


class ElasticArcHead(MarginHead):
    """Target logit ``s * cos(theta + m_i)``, ``m_i ~ N(m, std)`` drawn per sample and step;
    paper defaults (ElasticFace-Arc) ``s=64, m=0.5, std=0.05``.

    A fixed margin pushes every class to the same decision boundary; drawing it lets boundaries
    vary, which the paper finds better suited to classes of unequal spread. In eval mode the
    margin is the mean ``m`` (a deterministic validation loss). The authors' code applies
    ``cos(theta + m_i)`` as it is; fvloss keeps ArcFace's fall-back ``cos - m_i sin(m_i)``
    beyond theta + m_i > pi, as for ArcFace. A margin warm-up ramps the mean, not ``std``.

    Args:
        std: the spread of the per-sample margin N(m, std).
    """

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "m": (0.3, 0.6, False),
        "std": (0.01, 0.1, True),
    }

    def __init__(
        self,
        emb_dim: int,
        n_classes: int,
        s: float | str = 64.0,
        m: float = 0.5,
        std: float = 0.05,
    ):
        super().__init__(emb_dim, n_classes, s, m)
        self.std = std

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return angular_margin(cos_t, self.m)
        # torch's global generator of the input's device: seeded and checkpointed by fvloss;
        # drawn in float32 whatever the precision, so a float64 check sees the same margins
        m = torch.normal(self.m, self.std, size=cos_t.shape, device=cos_t.device)
        return angular_margin(cos_t, m.to(cos_t.dtype))
