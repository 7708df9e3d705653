"""The base of every per-epoch evaluation callback: columns in fastai's progress table, which
epochs are due, and the history and best of what was measured.

A subclass measures in ``after_validate`` (fastai's validation pass has run; the model is on
its device) by calling :meth:`EpochEvaluation.record` with a dict of numbers when the epoch is
:meth:`~EpochEvaluation.due`. :class:`~fvloss.callbacks.verify.VerifyPairs` (verification)
and :class:`~fvloss.callbacks.identify.IdentifyEvery` (1:N identification) are the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastai.callback.core import Callback
from fastai.learner import Metric, Recorder

__all__ = ["NA", "EpochEvaluation", "NotAvailable"]


class NotAvailable(float):
    """NaN that prints as ``n/a``: a number that could not be computed (an epoch not scored, a
    TAR whose FAR too few different pairs resolve). Still a float and still NaN for code
    (``math.isnan``) and ``null`` in JSON; only progress tables show it differently, since
    fastai formats each value with ``f"{v:.6f}"``."""

    def __new__(cls) -> NotAvailable:
        return super().__new__(cls, math.nan)

    def __format__(self, spec: str) -> str:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())  # "12.6f" -> "12"
        return format("n/a", f">{width}" if width else "")

    def __repr__(self) -> str:
        return "n/a"

    __str__ = __repr__


NA = NotAvailable()


class _Column(Metric):
    """A progress-table column showing one number of the callback's latest evaluation."""

    def __init__(self, cb: EpochEvaluation, key: str):
        self.cb, self.key = cb, key

    @property
    def value(self) -> float:
        v = self.cb.current.get(self.key, math.nan)
        return NA if math.isnan(v) else v

    @property
    def name(self) -> str:
        return self.cb.prefix + self.key


class EpochEvaluation(Callback):
    """Evaluate every ``every`` epochs (and the last) of a fit; show ``columns`` of the latest
    numbers, prefixed with ``prefix``, as progress-table columns (NaN, shown ``n/a``, on epochs
    not evaluated). ``history`` holds ``(epoch, numbers)``; ``best`` / ``best_epoch`` the best
    value of ``best_key`` (higher is better) and ``best_result`` what :meth:`record` was given
    with it. They restart with each ``fit``.
    """

    # Before the Recorder (50): its before_fit reads learn.metrics to build the column names
    # and its after_validate reads each metric's value, so our columns must be registered and
    # our evaluation done earlier in both events. After TrainEvalCallback (-10), which puts the
    # model on its device. Trackers such as SaveModelCallback(monitor="auc") (60) then see the
    # numbers in recorder.values at after_epoch.
    order = Recorder.order - 10
    remove_on_fetch = True  # get_preds' fetch callbacks drop us, like the Recorder
    _only_train_loop = True  # learn.summary() leaves us out
    best_key = "auc"

    def __init__(self, every: int = 1, prefix: str = "", columns: Sequence[str] = ()):
        super().__init__()
        if every < 1:
            raise ValueError("every must be >= 1")
        self.every, self.prefix, self.columns = every, prefix, tuple(columns)
        self.col_metrics = [_Column(self, k) for k in self.columns]
        self.current: dict[str, float] = {}
        self.last: Any = None
        self.best, self.best_epoch, self.best_result = -math.inf, None, None
        self.history: list[tuple[int, dict[str, float]]] = []
        self.trained = False
        self.epoch_result: Any = None

    def _our_metric(self, m) -> bool:
        return isinstance(m, _Column) and m.cb is self

    def due(self) -> bool:
        """This epoch is one to evaluate: every ``every``-th, and the last."""
        epoch = getattr(self.learn, "epoch", 0)
        return (epoch + 1) % self.every == 0 or epoch == getattr(self.learn, "n_epoch", 1) - 1

    def record(self, numbers: dict[str, float], result: Any = None) -> None:
        """This epoch's numbers (the columns read them) and the full result behind them."""
        self.last = self.epoch_result = result
        self.current = numbers

    def before_fit(self) -> None:
        others = [m for m in self.learn.metrics if not self._our_metric(m)]
        self.learn.metrics = others + self.col_metrics
        self.best, self.best_epoch, self.best_result = -math.inf, None, None
        self.history, self.last, self.current = [], None, {}

    def before_epoch(self) -> None:
        self.current, self.trained, self.epoch_result = {}, False, None

    def after_train(self) -> None:
        self.trained = True  # tells a fit's validation from learn.validate()/get_preds()

    def after_cancel_validate(self) -> None:
        self.trained = False  # e.g. lr_find cancels validation: no evaluation either

    def after_epoch(self) -> None:
        if not (self.trained and self.current):
            return  # not a fit's epoch, or not one we evaluated
        epoch = self.learn.epoch
        self.history.append((epoch, dict(self.current)))
        value = self.current.get(self.best_key, math.nan)
        if self.epoch_result is not None and value > self.best:
            self.best, self.best_epoch, self.best_result = value, epoch, self.epoch_result

    def after_fit(self) -> None:
        # Leave learn.metrics as we found it: a later validate()/fit without us shows no
        # stale columns.
        self.learn.metrics = [m for m in self.learn.metrics if not self._our_metric(m)]
