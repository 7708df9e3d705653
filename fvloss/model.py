"""Embedding networks: a registered body plus the usual face-embedding neck.

``FaceNet`` holds an embedder and a head so that fastai sees one ``nn.Module`` (the head's
weights are trained by the Learner's optimizer, its weights and buffers saved by ``learn.save``
and restored by ``lr_find``). Its output is always the embeddings, in training and in eval: the
head is the loss function, ``head(embeddings, labels)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .bodies import BODIES, build_body, register_body

__all__ = ["ARCHS", "register_arch", "EmbeddingNet", "FaceNet"]

ARCHS = BODIES  # the registry's older name


def register_arch(name: str, constructor: Callable[..., nn.Module], n_features: int) -> None:
    """Make ``arch=name`` available from a torchvision-style constructor (``weights=``, a
    module with ``fc``); new code registers a builder with :func:`fvloss.bodies.register_body`."""

    def build(img_size: int, pretrained: bool) -> nn.Module:
        net = constructor(weights="DEFAULT" if pretrained else None)
        net.fc, net.out_features = nn.Identity(), n_features
        return net

    register_body(name, build)


class EmbeddingNet(nn.Module):
    """Body -> BN -> dropout -> linear -> BN: an ``emb_dim`` face embedding.

    The BN-dropout-FC-BN neck is the one ArcFace's ResNets use ("E" output in the paper); it
    keeps the embedding's scale stable, which margin losses and center loss both rely on. A body
    whose output already passed a BatchNorm (``out_normalized``, IR-ResNet) skips the first BN.
    ``img_size`` matters to bodies whose features are a flattened map (IR-ResNet, MobileFaceNet).
    """

    def __init__(
        self,
        arch: str = "resnet34",
        emb_dim: int = 128,
        pretrained: bool = False,
        dropout: float = 0.0,
        img_size: int = 112,
    ):
        super().__init__()
        self.body = build_body(arch, img_size, pretrained)
        nf = self.body.out_features
        self.neck = nn.Sequential(
            nn.Identity() if getattr(self.body, "out_normalized", False) else nn.BatchNorm1d(nf),
            nn.Dropout(dropout),
            nn.Linear(nf, emb_dim, bias=False),
            nn.BatchNorm1d(emb_dim),
        )
        self.arch, self.emb_dim, self.img_size = arch, emb_dim, img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.body(x))


class FaceNet(nn.Module):
    """Embedder + head, the model a face ``Learner`` trains; ``forward`` returns embeddings
    (in every mode: ``learn.get_preds()`` embeds), ``head(emb, labels)`` is the loss."""

    def __init__(self, embedder: nn.Module, head: nn.Module):
        super().__init__()
        self.embedder, self.head = embedder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedder(x)
