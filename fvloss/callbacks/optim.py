"""What the papers do around an optimiser step: per-group lr and weight decay, gradient-norm
clipping and gradient accumulation, as fastai callbacks.

Order within a training step (fastai runs ``before_step`` callbacks by ``order``):
:class:`Accumulate` (6, fastai's ``GradientAccumulation``'s place: before the fp16 scaler) may
cancel the step; fastai's ``MixedPrecision`` (10) unscales the fp16 gradients; :class:`ClipGradNorm`
(11, fastai's ``GradientClip``'s place) clips them; :class:`GroupHypers` (12) scales the groups'
lr and weight decay for the step and puts them back after it.
"""

from __future__ import annotations

from fastai.callback.core import Callback, CancelBatchException
from fastai.callback.fp16 import MixedPrecision
from fastai.torch_core import get_model
from torch import nn

from ..ranks import world_size

__all__ = ["Accumulate", "ClipGradNorm", "GroupHypers"]


class GroupHypers(Callback):
    """Apply each parameter group's lr multiple (``head_lr``) and weight-decay switch
    (``wd_exclude``) for the optimiser step only: outside it every group holds the body's lr and
    the run's weight decay, so schedules, ``lr_find``, the Recorder and a notebook's
    ``fit_one_cycle(5, 1e-3)`` read and set one value, as with one group."""

    order = MixedPrecision.order + 2

    def __init__(self, lr_mults: list[float], decay: list[bool]):
        self.lr_mults, self.decay, self.kept = list(lr_mults), list(decay), None

    def before_fit(self) -> None:
        if self.opt is None:  # validate() / get_preds() before any fit: no step to scale
            return
        if len(self.opt.hypers) != len(self.lr_mults):
            raise ValueError(
                f"GroupHypers has {len(self.lr_mults)} groups, the optimiser "
                f"{len(self.opt.hypers)}: build both from one fvloss.optim.param_groups"
            )

    def before_step(self) -> None:
        hypers = self.opt.hypers
        self.kept = [(h["lr"], h["wd"]) for h in hypers]
        self.opt.set_hyper("lr", [lr * m for (lr, _), m in zip(self.kept, self.lr_mults)])
        self.opt.set_hyper("wd", [wd if d else 0.0 for (_, wd), d in zip(self.kept, self.decay)])

    def after_step(self) -> None:
        if self.kept is None:  # the step was cancelled before ours ran (an fp16 overflow)
            return
        self.opt.set_hyper("lr", [lr for lr, _ in self.kept])
        self.opt.set_hyper("wd", [wd for _, wd in self.kept])
        self.kept = None


class ClipGradNorm(Callback):
    """Clip the gradients' global 2-norm to ``max_norm`` before the step, after the fp16
    unscale: of the embedder (``part="body"``: arcface_torch's ``clip_grad_norm_(backbone, 5)``;
    the embedder is its backbone, embedding layer included) or of every parameter (``"all"``)."""

    order = MixedPrecision.order + 1  # fastai's GradientClip's place

    def __init__(self, max_norm: float, part: str = "body"):
        if part not in ("body", "all"):
            raise ValueError(f"clip_part must be 'body' or 'all', got {part!r}")
        if max_norm <= 0:
            raise ValueError(f"clip must be > 0 (0 turns clipping off), got {max_norm}")
        self.max_norm, self.part = max_norm, part

    def before_fit(self) -> None:
        model = get_model(self.learn.model)
        if self.part == "all" and world_size() > 1 and getattr(model.head, "world", 1) > 1:
            # each rank holds other rows of a sharded head: their norms, and so their clipping
            # factors, would differ and the ranks' bodies drift apart
            raise ValueError("clip_part='all' with a head sharded over ranks: clip the body")
        self.params = list(
            (model.embedder if self.part == "body" else model).parameters()
            if hasattr(model, "embedder")
            else model.parameters()
        )

    def before_step(self) -> None:
        nn.utils.clip_grad_norm_(self.params, self.max_norm)


class Accumulate(Callback):
    """Gradient accumulation: one optimiser step per ``n`` batches, so a recipe's large batch
    fits a small GPU (fastai's ``GradientAccumulation``, counted in batches). The loss is divided
    by ``n``, so the step sees the mean gradient of the ``n`` batches, as one batch ``n`` times
    larger would give.

    An epoch's last batch always steps (as PyTorch Lightning does), and steps are taken at
    batches ``n-1, 2n-1, ...`` of each epoch, so where steps fall depends on the batch's place
    alone and a resumed run steps where the uninterrupted one did. ``learn.accumulating`` is
    True while gradients are pending: :class:`~fvloss.callbacks.checkpoint.Checkpoint` waits
    for the step before it writes (gradients are not in a checkpoint)."""

    order = MixedPrecision.order - 4  # fastai's GradientAccumulation's place
    run_valid = False

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"accum must be >= 1, got {n}")
        self.n = n

    def before_fit(self) -> None:
        self.learn.accumulating = False

    def after_loss(self) -> None:
        if self.training:
            self.learn.loss_grad = self.learn.loss_grad / self.n

    def before_step(self) -> None:
        batch = getattr(self.dl, "start_batch", 0) + self.iter  # its place in the epoch
        last = batch + 1 >= len(self.dls.train)
        if (batch + 1) % self.n and not last:
            self.learn.accumulating = True
            raise CancelBatchException()  # no step, no zero_grad: the gradients add up
        self.learn.accumulating = False

    def after_fit(self) -> None:
        self.learn.accumulating = False
