"""Sub-center ArcFace's drop of non-dominant sub-centres, once, part-way through training."""

from __future__ import annotations

from fastai.callback.core import Callback
from fastai.torch_core import get_model

__all__ = ["SubCenterDrop"]


class SubCenterDrop(Callback):
    """Calls ``learn.model.head.drop_non_dominant()`` at the first training batch with
    ``pct_train >= drop_at`` (:class:`~fvloss.heads.subcenter.SubCenterArcFaceHead`); from then on
    each class keeps its dominant sub-centre and far-off (noisy) samples leave the loss.
    ``drop_at=0`` never drops (plain sub-center ArcFace). Never during ``lr_find``: its mock
    training also runs ``pct_train`` to 1, and the drop cannot be undone.

    ``n_classes`` and ``emb_dim`` are what the loss registry passes every callback; unused here.

    Args:
        drop_at: share of training after which non-dominant sub-centres are dropped (0: never).
    """

    order = 5  # before_batch, before the forward pass this batch's drop must reach

    def __init__(self, n_classes: int, emb_dim: int, drop_at: float = 0.0):
        if not 0.0 <= drop_at < 1.0:
            raise ValueError(f"drop_at is a training fraction in [0, 1), got {drop_at}")
        self.drop_at, self.dropped = drop_at, False

    def before_batch(self) -> None:
        if self.dropped or not self.training or self.drop_at <= 0:
            return
        if hasattr(self.learn, "lr_finder") or self.pct_train < self.drop_at:
            return
        get_model(self.learn.model).head.drop_non_dominant()  # (inside DDP's wrapper)
        self.dropped = True

    def state_dict(self) -> dict:
        return {"dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        self.dropped = bool(state["dropped"])
