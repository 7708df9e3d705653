"""Softmax cross-entropy over a linear classifier: the assignment's baseline."""

from __future__ import annotations

import torch
from torch import nn

from .base import Head

__all__ = ["SoftmaxHead"]


class SoftmaxHead(Head):
    """``logits = W x + b``; loss = cross-entropy (inherited from :class:`Head`).

    Args:
        bias: a bias per class (the assignment's nn.Linear).
    """

    def __init__(self, emb_dim: int, n_classes: int, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(emb_dim, n_classes, bias=bias)
        self.n_classes = n_classes

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.fc(emb)
