"""Center loss as a fastai callback (Wen et al., ECCV 2016, https://ydwen.github.io/papers/WenECCV16.pdf)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.torch_core import get_model  # the model inside a DDP wrapper
from torch import nn

from ..ranks import all_reduce_sum

__all__ = ["CenterLoss", "center_loss_term", "center_update"]

CENTERS = "center_loss_centers"  # name of the buffer the callback registers on learn.model


def center_loss_term(
    feats: torch.Tensor, centers: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """``1/2 * ||x_i - c_{y_i}||^2`` summed over the batch (``"sum"``, the paper's equation) or
    averaged (``"mean"``, what the authors' Caffe layer computes: it divides by the batch size)."""
    d = 0.5 * (feats.float() - centers[target]).pow(2).sum(dim=1)
    return d.sum() if reduction == "sum" else d.mean()


@torch.no_grad()
def center_update(
    centers: torch.Tensor,
    feats: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    valid: torch.Tensor | None = None,
) -> None:
    """The paper's rule, in place: ``c_j <- c_j - alpha * delta_c_j`` with
    ``delta_c_j = sum_{i: y_i=j} (c_j - x_i) / (1 + n_j)``; classes absent from the batch stay put.
    ``valid`` (bool per sample) leaves the others out, e.g. non-finite features. Under
    ``torch.distributed`` the counts and sums are over every rank's batch. Written with
    ``index_add_`` and ``where`` only: no step waits for the device (``bincount`` or boolean
    indexing would, to learn an output size)."""
    feats = feats.float()
    w = torch.ones_like(target, dtype=centers.dtype) if valid is None else valid.to(centers.dtype)
    n = torch.zeros(centers.shape[0], dtype=centers.dtype, device=centers.device)
    n.index_add_(0, target, w)
    # sum_{i: y_i=j} (c_j - x_i) = n_j * c_j - sum_{i: y_i=j} x_i
    x = feats if valid is None else torch.where(valid[:, None], feats, 0.0)
    sum_x = torch.zeros_like(centers).index_add_(0, target, x)
    # under DDP, every rank's features: the same centers on every rank after each step
    all_reduce_sum(n), all_reduce_sum(sum_x)
    delta = (n[:, None] * centers - sum_x) / (1.0 + n[:, None])
    centers.sub_(alpha * delta)


class CenterLoss(Callback):
    """Adds ``lam * center_loss_term(embeddings, centers, y)`` to the loss, and after every
    optimizer step that really happened moves the centers by the paper's update rule.

    The centers are a buffer named ``center_loss_centers`` on ``learn.model``: ``learn.save`` /
    ``learn.load`` keep them, ``lr_find`` restores them, and since they are not parameters the
    optimizer, weight decay and the grad scaler never touch them (the paper updates them with
    their own rate ``alpha``, not by SGD).

    Args:
        n_classes: number of training identities.
        emb_dim: embedding width.
        lam: weight of the center term. Default 0.003, the paper's value for its face models
            (its Fig. 5 shows 0.001-0.01 working; the assignment's code used 0.007).
        alpha: center learning rate, the paper's 0.5.
        reduction: ``"mean"`` over the batch (the authors' Caffe layer, makes ``lam`` independent
            of the batch size) or ``"sum"`` (the paper's equation 2 as printed).
        layer: picks the module whose output are the embeddings, default ``model.embedder``
            (fvloss's ``FaceNet``); pass e.g. ``lambda m: m[0]`` to reuse the callback elsewhere.
    """

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "lam": (1e-4, 0.1, True),
        "alpha": (0.1, 0.9, False),
    }

    # Before GradientAccumulation (6), whose after_loss divides the loss by the number of
    # accumulated batches: our term must be in the loss by then to be scaled with it. That is
    # also before MixedPrecision (10) leaves autocast, so the term casts to float32 itself.
    # Whether a step really happened is told by after_cancel_step, whatever the order.
    order = MixedPrecision.order - 5

    def __init__(
        self,
        n_classes: int,
        emb_dim: int,
        lam: float = 0.003,
        alpha: float = 0.5,
        reduction: str = "mean",
        layer: Callable[[nn.Module], nn.Module] | None = None,
    ):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.n_classes, self.emb_dim, self.lam, self.alpha = n_classes, emb_dim, lam, alpha
        self.reduction, self.layer = reduction, layer
        self._hook, self._feats, self._skipped = None, None, False
        self._pending: list[
            tuple[torch.Tensor, torch.Tensor]
        ] = []  # (features, labels) since the last step

    # -- attaching the centers to the model ------------------------------------------------
    def after_create(self) -> None:
        self.attach(get_model(self.learn.model))

    def attach(self, model: nn.Module) -> None:
        """Register the centers buffer on ``model`` (idempotent), so that ``learn.load`` works
        before any training."""
        if not hasattr(model, CENTERS):
            p = next(model.parameters(), None)
            model.register_buffer(
                CENTERS,
                torch.zeros(self.n_classes, self.emb_dim, device=None if p is None else p.device),
            )

    @property
    def centers(self) -> torch.Tensor:
        return getattr(get_model(self.learn.model), CENTERS)

    def _embedding_module(self) -> nn.Module:
        if self.layer is not None:
            return self.layer(get_model(self.learn.model))
        if not hasattr(get_model(self.learn.model), "embedder"):
            raise AttributeError(
                "CenterLoss: the model has no `embedder`; pass layer=lambda model: <the module that outputs the embeddings>"
            )
        return get_model(self.learn.model).embedder

    # -- fastai events -----------------------------------------------------------------------
    def before_fit(self) -> None:
        self.attach(get_model(self.learn.model))
        self._hook = self._embedding_module().register_forward_hook(self._grab)

    def _grab(self, module: nn.Module, inp, out: torch.Tensor) -> None:
        self._feats = out

    def after_loss(self) -> None:
        if not self.training or self._feats is None:
            return
        target = self.learn.yb[0]
        term = center_loss_term(self._feats, self.centers, target, self.reduction)
        self.learn.loss_grad = self.learn.loss_grad + self.lam * term
        self.learn.loss = self.learn.loss_grad.clone()
        self._pending.append((self._feats.detach().float(), target))
        self._skipped = False

    def after_cancel_step(self) -> None:
        # fastai still calls after_step when a step is cancelled (GradScaler found inf/NaN,
        # gradient accumulation between steps): the centers must not move then.
        self._skipped = True

    def after_step(self) -> None:
        if self._skipped or not self._pending:
            return
        # with gradient accumulation, one real step covers every batch since the last one
        feats, target = (torch.cat(t) for t in zip(*self._pending, strict=True))
        # a batch whose step the grad scaler skipped may hold inf/NaN: those samples stay out
        ok = torch.isfinite(feats).all(dim=1)
        center_update(self.centers, feats, target, self.alpha, valid=ok)
        self._pending.clear()

    def after_batch(self) -> None:
        self._feats = None  # don't keep the graph alive between batches

    def after_fit(self) -> None:
        self._pending.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
