"""Where each second of an epoch goes: waiting for batches, the step, validation, scoring.

The bare training step of a model is what a benchmark measures; a run's epoch is that plus
everything around it. :class:`TimeBreakdown` splits every epoch's wall time into

* ``data``: waiting for the next training batch (loading, decoding, augmenting, moving it; the
  first batch's wait includes starting the loader's workers);
* ``step``: forward, loss, backward, optimizer step and the per-batch callbacks;
* ``validation``: fastai's pass over the validation images;
* ``scoring``: verification of pair protocols and held-out pairs (``section("scoring")``);
* ``checkpoint``: writing checkpoints (``section("checkpoint")``);
* ``other``: the rest (epoch start and end, the progress table).

Any callback can attribute its time with ``with timed(learn, "name"):`` (a no-op when the
Learner has no TimeBreakdown); a section's time is taken out of the phase it ran in. On CUDA
the clock is the host's: work the GPU has queued and not finished counts where the host waits
for it (the first synchronising call), so a step that never synchronises looks short and the
data wait long; the totals per epoch stay right.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from fastai.callback.core import Callback

__all__ = ["TimeBreakdown", "timed", "PHASES"]

PHASES = ("data", "step", "validation", "scoring", "checkpoint", "other")


def timed(learn: Any, name: str):
    """``with timed(learn, "scoring"): ...``: count the block's time as ``name`` in the
    Learner's :class:`TimeBreakdown`, if it has one."""
    tb = getattr(learn, "time_breakdown", None) if learn is not None else None
    return tb.section(name) if isinstance(tb, TimeBreakdown) else nullcontext()


class TimeBreakdown(Callback):
    """Per-epoch seconds by phase (module docstring): ``epochs`` (a list of dicts, one per
    trained epoch) and :meth:`summary` (totals and shares); ``lr_find`` is not counted."""

    # last: a step's time runs from the batch's arrival to the end of every callback's
    # after_batch (the Recorder, checkpoints); the data wait from there to the next batch
    order = 100

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        """``clock``: seconds from any origin (tests pass a fake one: no timing by sleeping)."""
        self.clock = clock
        self.epochs: list[dict[str, float]] = []
        self._phase: str | None = None

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = self.clock()
        try:
            yield
        finally:
            dt = self.clock() - t0
            if getattr(self, "_active", False) and hasattr(self, "_cur"):
                self._cur[name] += dt
                if self._phase is not None:
                    self._inside += dt  # taken out of the phase the section ran in

    def _start(self, phase: str) -> None:
        self._phase, self._t, self._inside = phase, self.clock(), 0.0

    def _stop(self) -> None:
        if self._phase is not None:
            self._cur[self._phase] += self.clock() - self._t - self._inside
            self._phase = None

    # -- events --------------------------------------------------------------------------
    def before_fit(self) -> None:
        self._active = not hasattr(self.learn, "lr_finder")
        if self._active:
            self.epochs = []

    def before_epoch(self) -> None:
        if self._active:
            self._cur: dict[str, float] = defaultdict(float)
            self._t_epoch = self.clock()
            self._phase = None

    def before_train(self) -> None:
        if self._active:
            self._start("data")

    def before_batch(self) -> None:
        if self._active and self.training:
            self._stop()
            self._start("step")

    def after_batch(self) -> None:
        if self._active and self.training:
            self._stop()
            self._start("data")

    def after_train(self) -> None:
        if self._active:
            self._stop()  # the wait for a batch that never came: the loader's end

    def before_validate(self) -> None:
        if self._active:
            self._start("validation")

    def after_validate(self) -> None:
        if self._active:
            self._stop()

    def after_epoch(self) -> None:
        if not self._active or not hasattr(self, "_cur"):
            return
        self._stop()
        total = self.clock() - self._t_epoch
        row = {p: self._cur.get(p, 0.0) for p in PHASES if p != "other"}
        row["other"] = max(total - sum(row.values()), 0.0)
        self.epochs.append({"epoch": self.epoch, **row, "total": total})

    def after_cancel_epoch(self) -> None:
        if hasattr(self, "_cur"):
            del self._cur  # a skipped epoch (resume): no row

    # -- report ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """``{"seconds": {phase: total}, "share": {phase: fraction}, "epochs": n}``."""
        secs = {p: sum(e[p] for e in self.epochs) for p in PHASES}
        total = sum(secs.values())
        share = {p: (s / total if total > 0 else 0.0) for p, s in secs.items()}
        return {
            "epochs": len(self.epochs),
            "seconds": {p: round(s, 2) for p, s in secs.items()},
            "share": {p: round(f, 4) for p, f in share.items()},
            "per_epoch": [{k: round(v, 3) for k, v in e.items()} for e in self.epochs],
        }

    def line(self) -> str:
        """One line for a log: each phase's share of the trained epochs' time."""
        s = self.summary()
        parts = [f"{p} {100 * s['share'][p]:.1f}%" for p in PHASES if s["seconds"][p] > 0]
        return f"{sum(s['seconds'].values()):.0f}s over {s['epochs']} epoch(s): " + ", ".join(parts)
