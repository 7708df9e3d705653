"""Learning-rate schedules, stepped per batch: fastai's ``one_cycle`` and ``flat`` and the
papers' ``cosine``, ``poly`` and ``step``, each with a linear warm-up.

* ``one_cycle``: fastai's ``fit_one_cycle`` (cosine rise from lr/25 over ``pct_start`` of
  training, then down to lr/1e5; momentum 0.95 -> 0.85 -> 0.95). A warm-up setting sets its
  rise (``pct_start``), 0.25 of training otherwise.
* ``flat``: fastai's ``fit_flat_cos``: lr until 0.75 of training, then cosine to lr/1e5.
* ``cosine``: after the warm-up, cosine from lr to 0 at the last step.
* ``poly``: after the warm-up, ``lr * (1 - (k - w) / (T - w)) ** power``: insightface
  arcface_torch's ``PolynomialLRWarmup`` (its ``train_v2.py`` builds it with the class default
  power 1; ``recipes/papers/base.toml``), equal at every step but one: with a warm-up
  its step 0 trains at the full lr (``_LRScheduler``'s constructor leaves the group's lr in
  place), here at 0, the warm-up's start (``tests/callbacks/test_schedule.py``,
  ``bench/peer_parity.py``).
* ``step``: ``lr * factor ** (milestones passed)``, milestones in epochs (fractions allowed):
  PyTorch's ``MultiStepLR`` stepped per epoch, as AdaFace trains (x0.1 at 12, 20, 24 of 26).

Warm-up: linear from 0 to lr over ``w`` steps (``k / w`` at step ``k``). A step is a batch, as
in arcface_torch (its scheduler steps every batch, gradient accumulation or not). The lr at a
step is a function of its place alone (epoch and batch), so a resumed run follows the same
curve; ``one_cycle`` and ``flat`` keep fastai's own curves over ``learn.pct_train``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fastai.callback.schedule import ParamScheduler, combined_cos

from ..config import DEFAULTS

__all__ = ["SCHEDULES", "LRSchedule", "Schedule"]

# name -> summary (config.py lists the names as the setting's choices)
SCHEDULES: dict[str, str] = {
    "one_cycle": "fastai's one cycle: cosine rise over pct_start, then cosine down to lr/1e5",
    "flat": "fastai's flat-cos: lr until 75% of training, then cosine to lr/1e5",
    "cosine": "linear warm-up, then cosine to 0",
    "poly": "linear warm-up, then (1 - progress) ** power (arcface_torch's PolynomialLRWarmup)",
    "step": "linear warm-up, then x factor at each milestone epoch (AdaFace, CosFace)",
}
ONE_CYCLE_PCT_START, ONE_CYCLE_DIV, FINAL_DIV, FLAT_PCT = 0.25, 25.0, 1e5, 0.75  # fastai's


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: its name and settings; :meth:`lr_at` is its closed form."""

    name: str = "one_cycle"
    lr: float = 1e-3
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    power: float = DEFAULTS.poly_power
    milestones: tuple[float, ...] = field(default_factory=tuple)
    factor: float = DEFAULTS.step_factor

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; known: {list(SCHEDULES)}")
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError("give the warm-up in epochs or in steps, not both")
        if self.warmup_epochs < 0 or self.warmup_steps < 0:
            raise ValueError("a warm-up cannot be negative")
        if self.name == "flat" and (self.warmup_epochs or self.warmup_steps):
            raise ValueError("flat has no warm-up (fastai's flat-cos); use cosine or poly")
        if self.name == "step" and not self.milestones:
            raise ValueError("the step schedule needs milestones (epochs), e.g. [12, 20, 24]")
        if self.name != "step" and self.milestones:
            raise ValueError(f"milestones are the step schedule's, not {self.name}'s")
        if list(self.milestones) != sorted(self.milestones) or any(m <= 0 for m in self.milestones):
            raise ValueError(
                f"milestones must be increasing epochs > 0, got {list(self.milestones)}"
            )
        if self.name == "poly" and self.power <= 0:
            raise ValueError(f"poly_power must be > 0, got {self.power}")

    def warmup(self, n_iter: int) -> int:
        """Warm-up steps for an epoch of ``n_iter`` batches."""
        return self.warmup_steps or round(self.warmup_epochs * n_iter)

    def lr_at(self, step: int, n_iter: int, n_epoch: int) -> float:
        """The lr of (0-based) batch ``step`` of a fit of ``n_epoch`` epochs x ``n_iter``."""
        total, w = n_epoch * n_iter, self.warmup(n_iter)
        if self.name in ("one_cycle", "flat"):
            return float(self._fastai_lr(self.pct_start(n_iter, n_epoch))(min(step / total, 1.0)))
        if step < w:
            return self.lr * step / w
        if self.name == "step":
            passed = sum(step >= m * n_iter for m in self.milestones)
            return self.lr * self.factor**passed
        progress = min((step - w) / max(total - w, 1), 1.0)
        if self.name == "poly":
            return self.lr * (1.0 - progress) ** self.power
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine

    def pct_start(self, n_iter: int, n_epoch: int) -> float:
        """one_cycle's rise: the warm-up's share of training, fastai's 0.25 by default."""
        w = self.warmup(n_iter)
        return w / (n_iter * n_epoch) if w else ONE_CYCLE_PCT_START

    def _fastai_lr(self, pct_start: float = ONE_CYCLE_PCT_START):
        if self.name == "one_cycle":
            return combined_cos(pct_start, self.lr / ONE_CYCLE_DIV, self.lr, self.lr / FINAL_DIV)
        return combined_cos(FLAT_PCT, self.lr, self.lr, self.lr / FINAL_DIV)

    def milestone_steps(self, n_iter: int, n_epoch: int) -> list[tuple[str, int]]:
        """The schedule's landmarks as ``(what, step)``: for ``--dry-run``'s table."""
        total, w = n_epoch * n_iter, self.warmup(n_iter)
        marks = [("start", 0)]
        if w:
            marks.append(("warm-up end", w))
        if self.name == "one_cycle":
            marks.append(("peak", round(self.pct_start(n_iter, n_epoch) * total)))
        if self.name == "flat":
            marks.append(("anneal start", round(FLAT_PCT * total)))
        marks += [(f"milestone epoch {m:g}", round(m * n_iter)) for m in self.milestones]
        marks += [("half", total // 2), ("last step", total - 1)]
        return sorted(set(marks), key=lambda x: x[1])


class LRSchedule(ParamScheduler):
    """fastai's ``ParamScheduler`` for a :class:`Schedule`: every batch sets the lr (and
    one_cycle's momentum); ``recorder.hps`` keeps the values as fastai's fits do."""

    def __init__(self, schedule: Schedule, moms: tuple[float, float, float] = (0.95, 0.85, 0.95)):
        self.schedule, self.moms = schedule, moms
        super().__init__({})

    def before_fit(self) -> None:
        n_iter, s = len(self.dls.train), self.schedule
        if s.name == "one_cycle":  # fastai's fit_one_cycle's curves, over learn.pct_train
            pct = s.pct_start(n_iter, self.n_epoch)
            self.scheds = {"lr": s._fastai_lr(pct), "mom": combined_cos(pct, *self.moms)}
        elif s.name == "flat":
            self.scheds = {"lr": s._fastai_lr()}
        else:
            self.scheds = {"lr": None}  # (read by the hps record) set from the step below
        self.steps_per_epoch = n_iter
        super().before_fit()

    def before_batch(self) -> None:
        if self.schedule.name in ("one_cycle", "flat"):
            return super().before_batch()
        # the batch's place in training from (epoch, batch), not learn.train_iter: a fit started
        # at an epoch (start_epoch) does not count the epochs it skipped
        step = self.epoch * self.steps_per_epoch + getattr(self.dl, "start_batch", 0) + self.iter
        self.opt.set_hyper("lr", self.schedule.lr_at(step, self.steps_per_epoch, self.n_epoch))
