"""Margin scheduling for ArcFace / CosFace heads: the usual cure when they do not converge.

From scratch on few identities, a full margin from step one makes every target logit negative
while the embedding is still random; the loss then falls by pushing all classes apart without
learning faces (insightface #214/#313, pytorch-metric-learning #351). Starting with no margin
(normalised softmax, "NormFace") and ramping it in lets the features organise first.
"""

from __future__ import annotations

from fastai.callback.core import Callback
from fastai.torch_core import get_model

__all__ = ["MarginSchedule"]


class MarginSchedule(Callback):
    """Margins over the training progress ``t = pct_train`` in [0, 1]: none for ``t < hold``,
    then a linear ramp to the head's full margins over ``warmup``, then full.

    ``hold=0.3, warmup=0`` is softmax (normalised) pre-training followed by the margin;
    ``hold=0, warmup=0.3`` is a margin warm-up. The head names its margins in ``margins``,
    ``{attribute: value without margin}`` (fvloss's :class:`~fvloss.heads.MarginHead`: ArcFace
    ``{"m": 0}``, the combined margin ``{"m1": 1, "m2": 0, "m3": 0}``, MagFace's bounds);
    ``head`` picks the head, default ``model.head`` (its ``margin_head`` where it has one: a
    sharded Partial FC head's block).
    """

    order = 5  # before the forward pass of each batch (and before MixedPrecision, 10)

    def __init__(self, hold: float = 0.0, warmup: float = 0.3, head=None):
        if hold < 0 or warmup < 0 or hold + warmup > 1:
            raise ValueError(
                f"need hold >= 0, warmup >= 0 and hold + warmup <= 1, got {hold}, {warmup}"
            )
        self.hold, self.warmup, self.head_fn = hold, warmup, head
        self.full: dict[str, float] | None = None

    def _head(self):
        model = get_model(self.learn.model)  # inside DDP's wrapper under several processes
        head = self.head_fn(model) if self.head_fn else model.head
        return getattr(head, "margin_head", head)  # a wrapper (Partial FC) names its margins' head

    def before_fit(self) -> None:
        if self.full is None:
            head = self._head()
            self.full = {a: float(getattr(head, a)) for a in head.margins}

    def factor_at(self, t: float) -> float:
        """How much of the full margins applies at training progress ``t`` in [0, 1]."""
        if t < self.hold:
            return 0.0
        return min(1.0, (t - self.hold) / self.warmup) if self.warmup > 0 else 1.0

    def _set(self, f: float) -> None:
        head = self._head()
        for a, none in head.margins.items():
            setattr(head, a, none + f * (self.full[a] - none))

    def before_batch(self) -> None:
        if not self.training:
            return
        # lr_find's mock training also runs pct_train from 0 to 1: ramping the margin there
        # would make the loss climb with the lr for another reason, and the suggested lr
        # collapse (seen: 6e-7). It sees the loss training starts with instead.
        self._set(self.factor_at(0.0 if hasattr(self.learn, "lr_finder") else self.pct_train))

    def after_fit(self) -> None:
        self._set(1.0)  # a saved / exported head carries its real margins
