"""Shared base classes of the classification heads.

A head maps embeddings to logits (its ``forward``, part of the model so the Learner trains and
saves its weights) and turns logits plus labels into a loss (its ``loss``, a plain function with no
parameters of its own: fastai only trains and saves what lives in ``learn.model``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Head", "MarginHead", "adacos_scale"]


def adacos_scale(n_classes: int) -> float:
    """AdaCos's fixed scale ``s = sqrt(2) * ln(C - 1)`` (Zhang et al., CVPR 2019,
    https://arxiv.org/abs/1905.00292): the smallest s that still lets the softmax reach a
    confident target probability with C classes. s=64 was chosen for 85k classes; with a few
    hundred it saturates the softmax and the margin losses stop learning."""
    if n_classes < 3:
        raise ValueError(f"the AdaCos scale needs at least 3 classes, got {n_classes}")
    return math.sqrt(2.0) * math.log(n_classes - 1)


class Head(nn.Module):
    """Base of all heads: ``forward(emb) -> logits``, ``loss(logits, target) -> scalar``."""

    n_classes: int

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)


class MarginHead(Head):
    """Cosine classifier with a margin on the target class (ArcFace, CosFace and kin).

    ``forward`` returns cos(theta) between L2-normalised embeddings and L2-normalised class
    weights, always in float32: under bf16/fp16 autocast the cosines would lose the precision
    the margin acts on (cos near 1 has only ~3 significant digits in bf16). ``loss`` replaces the
    target cosine by :meth:`target_logit` (the one override point), scales by ``s`` and applies
    cross-entropy.

    Args:
        emb_dim: embedding width.
        n_classes: number of training identities.
        s: logit scale, or ``"auto"`` for :func:`adacos_scale` of ``n_classes``.
        m: the margin; a plain attribute, so a callback may schedule it (margin warm-up).
    """

    def __init__(self, emb_dim: int, n_classes: int, s: float | str, m: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, emb_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.n_classes, self.m = n_classes, float(m)
        self.s = adacos_scale(n_classes) if s == "auto" else float(s)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=emb.device.type, enabled=False):
            cos = F.linear(F.normalize(emb.float()), F.normalize(self.weight.float()))
        # Rounding can push |cos| a hair past 1, where acos/sqrt-based margins give NaN.
        return cos.clamp(-1.0, 1.0)

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        """The target class's cosine after the margin; override in subclasses."""
        raise NotImplementedError

    def margin_logits(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin applied to each row's target column."""
        cos = cos.float()
        idx = target.long().unsqueeze(1)
        cos_t = cos.gather(1, idx)
        return self.s * cos.scatter(1, idx, self.target_logit(cos_t))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.margin_logits(logits, target), target)

    def extra_repr(self) -> str:
        return f"emb_dim={self.weight.shape[1]}, n_classes={self.n_classes}, s={self.s:.3g}, m={self.m:.3g}"
