"""Embedding networks: a torchvision ResNet body plus the usual face-embedding head.

``FaceNet`` wraps an embedder and a classification head so that fastai sees one ``nn.Module``
(the head's weights are then trained by the Learner's optimizer and saved by ``learn.save``),
while ``FaceNet.eval()`` returns embeddings for verification.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models

__all__ = ["ARCHS", "register_arch", "EmbeddingNet", "FaceNet"]

# name -> (constructor, feature width). A registry rather than an if/elif chain, so that a user
# can add a body with ``register_arch`` without touching fvloss.
ARCHS: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "resnet18": (models.resnet18, 512),
    "resnet34": (models.resnet34, 512),
    "resnet50": (models.resnet50, 2048),
    "resnet101": (models.resnet101, 2048),
    "resnet152": (models.resnet152, 2048),
}


def register_arch(name: str, constructor: Callable[..., nn.Module], n_features: int) -> None:
    """Make ``arch=name`` available; ``constructor(weights=...)`` must return a torchvision-style
    ResNet (a module with ``fc``)."""
    ARCHS[name] = (constructor, n_features)


def _body(arch: str, pretrained: bool) -> tuple[nn.Module, int]:
    if arch not in ARCHS:
        raise ValueError(
            f"unknown arch {arch!r}; known: {sorted(ARCHS)} (add one with register_arch)"
        )
    ctor, nf = ARCHS[arch]
    # "DEFAULT" downloads ImageNet weights on first use; the assignment trains from scratch.
    net = ctor(weights="DEFAULT" if pretrained else None)
    net.fc = nn.Identity()
    return net, nf


class EmbeddingNet(nn.Module):
    """ResNet body -> BN -> dropout -> linear -> BN: an ``emb_dim`` face embedding.

    The BN-dropout-FC-BN neck is the one ArcFace's ResNets use ("E" output in the paper); it
    keeps the embedding's scale stable, which margin losses and center loss both rely on.
    """

    def __init__(
        self,
        arch: str = "resnet34",
        emb_dim: int = 128,
        pretrained: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.body, nf = _body(arch, pretrained)
        self.neck = nn.Sequential(
            nn.BatchNorm1d(nf),
            nn.Dropout(dropout),
            nn.Linear(nf, emb_dim, bias=False),
            nn.BatchNorm1d(emb_dim),
        )
        self.arch, self.emb_dim = arch, emb_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.body(x))


class FaceNet(nn.Module):
    """Embedder + classification head, the model a face ``Learner`` trains.

    Training mode returns the head's logits (what the loss needs); eval mode returns the
    embeddings (what verification needs), so ``learn.get_preds()`` gives embeddings.
    """

    def __init__(self, embedder: nn.Module, head: nn.Module):
        super().__init__()
        self.embedder, self.head = embedder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.embedder(x)
        return self.head(emb) if self.training else emb
