"""Stop a training run that diverges, say where and why, and keep the last good checkpoint.

A diverging run otherwise trains on to a loss of 1e13, scores near-chance verification, writes
``model.pth`` and exits 0. :class:`DivergenceGuard` stops it instead, by a stated rule:

* a non-finite loss, at once;
* non-finite gradients: on a CPU at once and *before* the optimizer step (so the weights it
  leaves are the last good ones); off the CPU, where reading a value waits for the device,
  losses and gradient norms are read every ``every`` steps (default 25) and judged in order,
  and no checkpoint is written before they are; under fp16 grad scaling an overflow is the
  scaler's business instead: the step is skipped and the scale lowered;
* under fp16 grad scaling, ``max_skipped`` skipped steps in a row;
* the loss above ``factor`` x its early level (the lower of the first step's loss and the
  median of the first ``warmup`` steps' losses) for ``patience`` steps in a row;
* a non-finite weight or buffer (e.g. BatchNorm's running variance) at the end of an epoch's
  training, or non-finite embeddings of its validation images (finite weights so large that
  the forward pass overflows) — both before the epoch checkpoint.

It raises :class:`TrainingDiverged` (fastai does not catch it, so no ``after_epoch`` runs), and
while it counts exploding steps it sets ``learn.diverging``, which stops
:class:`~fvloss.callbacks.checkpoint.Checkpoint` from writing: the checkpoint on disk is the
last good one. ``lr_find``, which drives the loss up on
purpose, is left alone.
"""

from __future__ import annotations

import math
import statistics

import torch
from fastai.callback.core import Callback

from ..ranks import global_mean

__all__ = ["DivergenceGuard", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """A run stopped by :class:`DivergenceGuard`; ``epoch``, ``step`` (within the fit) and
    ``value`` say where and what."""

    def __init__(self, reason: str, epoch: int, step: int, value: float, hint: str):
        self.reason, self.epoch, self.step, self.value = reason, epoch, step, value
        # kept apart from args: fastai prefixes the args of an exception raised in a callback
        self.message = f"training diverged at epoch {epoch}, step {step}: {reason}. {hint}"
        super().__init__(self.message)


class DivergenceGuard(Callback):
    """Raise :class:`TrainingDiverged` when a run diverges (rules in the module docstring)."""

    # after MixedPrecision (10), whose after_step updates the fp16 scale that tells a skipped
    # step; after_backward runs for every callback before the optimizer's step in any order
    order = 11

    def __init__(
        self,
        factor: float = 10.0,
        patience: int = 20,
        warmup: int = 50,
        max_skipped: int = 20,
        every: int | None = None,
    ):
        if factor <= 1 or patience < 1 or warmup < 1 or max_skipped < 1 or (every or 1) < 1:
            raise ValueError("need factor > 1 and patience, warmup, max_skipped, every >= 1")
        self.factor, self.patience, self.warmup, self.max_skipped = (
            factor,
            patience,
            warmup,
            max_skipped,
        )
        # Reading a loss on the host waits for the device: free on a CPU, a stall of the
        # queue on a GPU. So off the CPU the losses and gradient norms stay on the device and
        # are read every `every` steps (default 25), in one transfer, and judged in order; a
        # checkpoint (Checkpoint calls flush) is only written after everything before it passed.
        self.every = every

    def before_fit(self) -> None:
        self.active = not hasattr(self.learn, "lr_finder")
        self.early: list[float] = []
        self.high = self.skipped = 0
        self.step = 0
        self.scale = None
        self.learn.diverging = False
        dev = next(self.learn.model.parameters()).device
        self._every = self.every or (1 if dev.type == "cpu" else 25)
        self._pending: list = []  # (epoch, step, "loss" | "grad", value on the device), in order

    def state_dict(self) -> dict:
        """What a resumed run needs to judge its loss as the uninterrupted one would."""
        return {"early": list(self.early), "high": self.high, "skipped": self.skipped,
                "step": self.step, "scale": self.scale}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.early, self.high, self.skipped = list(state["early"]), state["high"], state["skipped"]
        self.step, self.scale = state["step"], state["scale"]
        self.learn.diverging = self.high > 0

    def _stop(self, reason: str, value: float, at: tuple[int, int] | None = None) -> None:
        epoch, step = at or (self.learn.epoch, self.step)
        lr = self.learn.opt.hypers[-1].get("lr") if self.learn.opt is not None else None
        hint = (
            f"Try a lower learning rate (this step's was {lr:.3g})" if lr else "Try a lower lr"
        ) + ", --precision fp32, or a margin warm-up for margin heads. "
        ckpt = self.learn.path / self.learn.model_dir / "last.pth"
        hint += (
            f"No model.pth was written; {ckpt} holds the last good checkpoint"
            if ckpt.is_file()
            else "No model.pth was written, and no epoch had finished (no checkpoint)"
        )
        raise TrainingDiverged(reason, epoch, step, value, hint)

    def _scaler(self):
        return getattr(self.learn, "scaler", None)  # fastai's MixedPrecision (fp16) sets it

    def after_loss(self) -> None:
        if not (self.active and self.training):
            return
        # under DDP the mean over the ranks: every rank judges the same loss and stops at the
        # same step (one rank stopping alone would leave the others waiting in a collective)
        loss = global_mean(self.learn.loss.detach().float().reshape(1))
        self._pending.append((self.learn.epoch, self.step, "loss", loss))
        if self._every == 1:
            self.flush()

    def flush(self) -> None:
        """Judge the losses and gradient norms not judged yet (one host transfer); raises
        :class:`TrainingDiverged` at the first that breaks a rule."""
        if not self._pending:
            return
        todo, self._pending = self._pending, []
        values = torch.stack([t.float().reshape(()) for *_, t in todo]).tolist()
        for (epoch, step, kind, _), v in zip(todo, values, strict=True):  # in the order of steps
            if kind == "loss":
                self._judge_loss(v, (epoch, step))
            elif not math.isfinite(v):
                self._stop(
                    f"the gradient norm was {v} (read every {self._every} steps on this "
                    "device: the steps since were taken, and are in no checkpoint)",
                    v,
                    (epoch, step),
                )

    def _judge_loss(self, loss: float, at: tuple[int, int]) -> None:
        if not math.isfinite(loss):
            self._stop(f"the loss is {loss}", loss, at)
        if len(self.early) < self.warmup:
            self.early.append(loss)
        # The early level: the lower of the first step's loss (an untrained model's, ~ln C for
        # a classifier) and the median so far of the first `warmup` steps. Taking the lower
        # catches a run that explodes within its first steps, whose median is already huge.
        level = min(self.early[0], statistics.median(self.early))
        self.high = self.high + 1 if loss > self.factor * level else 0
        # while it counts, Checkpoint keeps the last good checkpoint instead of writing one
        self.learn.diverging = self.high > 0
        if self.high >= self.patience:
            self._stop(
                f"the loss ({loss:.4g}) stayed above {self.factor:g} x its early level "
                f"({level:.4g}) for {self.patience} steps",
                loss,
                at,
            )

    def after_backward(self) -> None:
        if not (self.active and self.training) or self._scaler() is not None:
            return
        grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            if self._every > 1:  # judged at the next flush
                self._pending.append((self.learn.epoch, self.step, "grad", norm))
                return
            norm = float(norm)
            if not math.isfinite(norm):
                self._stop(f"the gradient norm is {norm} (the step was not taken)", norm)

    def before_epoch(self) -> None:
        self.trained = False

    def after_batch(self) -> None:
        if self.training or not (self.active and getattr(self, "trained", False)):
            return
        pred = self.learn.pred[0] if isinstance(self.learn.pred, (tuple, list)) else self.learn.pred
        if isinstance(pred, torch.Tensor) and not bool(torch.isfinite(pred).all()):
            self._stop("the model's outputs on validation images are not finite", math.nan)

    def after_train(self) -> None:
        self.trained = True
        if not self.active:
            return
        self.flush()
        for name, t in self.learn.model.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                self._stop(f"{name} holds non-finite values after the epoch's training", math.nan)

    def after_step(self) -> None:
        self.step += 1
        if self._every > 1 and self.step % self._every == 0:
            self.flush()
        scaler = self._scaler()
        if not (self.active and scaler is not None and scaler.is_enabled()):
            return
        scale = scaler.get_scale()
        if self.scale is not None and scale < self.scale:  # the scaler skipped this step
            self.skipped += 1
            if self.skipped >= self.max_skipped:
                self._stop(
                    f"fp16 grad scaling skipped {self.skipped} steps in a row (scale {scale:.3g})",
                    scale,
                )
        else:
            self.skipped = 0
        self.scale = scale
