"""ArcFace: additive angular margin (Deng et al., CVPR 2019, https://arxiv.org/abs/1801.07698)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import MarginHead, angular_margin

__all__ = ["ArcFaceHead"]


class ArcFaceHead(MarginHead):
    """Target logit ``s * cos(theta + m)``; paper defaults ``s=64, m=0.5``.

    Computed by :func:`~fvloss.heads.base.angular_margin` (the authors' trigonometric identity,
    finite gradients at cos = +-1, their fall-back ``cos - m sin(m)`` where theta + m > pi).
    ``easy_margin=True`` instead applies the margin only where cos > 0.

    ``grad="insightface"`` is insightface arcface_torch's variant (``losses.py``,
    ``CombinedMarginLoss``): it computes ``cos(arccos(cos) + m)`` in place under
    ``torch.no_grad()``, so the loss *value* is the paper's but the target logit's gradient with
    respect to its cosine is 1, as CosFace's (the paper's is ``sin(theta + m) / sin(theta)``),
    and there is no fall-back beyond ``theta + m > pi``. Its published numbers were trained so:
    an exact reproduction sets it; comparing the two is this one setting.

    Args:
        easy_margin: the margin only where cos > 0 (insightface's option).
        eps: cos is clamped to [-1 + eps, 1 - eps] for the angle's gradient.
        grad: ``"paper"`` (the margin's own gradient) or ``"insightface"`` (above).
    """

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "m": (0.2, 0.7, False),
        "s": (16.0, 64.0, False),
    }

    shardable = True  # a stateless margin on the target: Partial FC can split it
    choices: ClassVar[dict[str, tuple]] = {"grad": ("paper", "insightface")}

    def __init__(
        self,
        emb_dim: int,
        n_classes: int,
        s: float | str = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
        eps: float = 1e-7,
        grad: str = "paper",
    ):
        super().__init__(emb_dim, n_classes, s, m)
        if grad not in self.choices["grad"]:
            raise ValueError(f"grad must be one of {self.choices['grad']}, got {grad!r}")
        if grad == "insightface" and easy_margin:
            raise ValueError(
                "grad='insightface' is arcface_torch's margin, which has no easy_margin"
            )
        self.easy_margin, self.eps, self.grad = easy_margin, eps, grad

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        # self.m is read at each call: a warm-up callback may change it between steps
        if self.grad == "insightface":
            with torch.no_grad():
                phi = torch.cos(torch.acos(cos_t) + self.m)
            return cos_t + (phi - cos_t.detach())  # phi's value, the cosine's gradient
        phi = angular_margin(cos_t, self.m, self.eps)
        return torch.where(cos_t > 0, phi, cos_t) if self.easy_margin else phi
