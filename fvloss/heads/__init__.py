"""Classification heads for face-embedding training, and a registry to build them by name."""

from __future__ import annotations

from collections.abc import Callable

from .arcface import ArcFaceHead
from .base import Head, MarginHead, adacos_scale
from .cosface import CosFaceHead
from .softmax import SoftmaxHead

__all__ = [
    "Head",
    "MarginHead",
    "SoftmaxHead",
    "ArcFaceHead",
    "CosFaceHead",
    "HEADS",
    "make_head",
    "adacos_scale",
]

# Center loss trains a softmax head plus the CenterLoss callback, so it shares "softmax" here.
HEADS: dict[str, Callable[..., Head]] = {
    "softmax": SoftmaxHead,
    "center": SoftmaxHead,
    "arcface": ArcFaceHead,
    "cosface": CosFaceHead,
}


def make_head(loss: str, emb_dim: int, n_classes: int, **kwargs) -> Head:
    """Build the head for ``loss`` ("softmax", "center", "arcface", "cosface")."""
    if loss not in HEADS:
        raise ValueError(f"unknown loss {loss!r}; known: {sorted(HEADS)}")
    return HEADS[loss](emb_dim, n_classes, **kwargs)
