"""TimeBreakdown (fvloss.callbacks.timing): each second of an epoch in one phase."""

from __future__ import annotations

import fastai.callback.schedule  # noqa: F401  (Learner.lr_find)
import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from torch import nn

from fvloss.callbacks.timing import PHASES, TimeBreakdown, timed

WAIT = 0.02


class FakeClock:
    """A clock that moves only when told: the phases get exactly the seconds charged to them,
    whatever the machine's speed (no sleeping, no tolerance for a busy CPU)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wait(self, seconds: float) -> None:
        self.t += seconds


CLOCK = FakeClock()


class SlowSet(torch.utils.data.Dataset):
    """Each training item takes ``delay`` on the clock: WAIT a batch of 4."""

    def __init__(self, n: int, delay: float):
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        CLOCK.wait(self.delay)
        return torch.randn(3), torch.tensor(i % 2)


class Busy(Callback):
    """WAIT in every training step; 3 x WAIT of "checkpoint" inside each step's end."""

    def after_loss(self) -> None:
        if self.training:
            CLOCK.wait(WAIT)

    def after_batch(self) -> None:
        if self.training:
            with timed(self.learn, "checkpoint"):
                CLOCK.wait(3 * WAIT)


def test_each_phase_gets_its_seconds():
    train = DataLoader(SlowSet(16, WAIT / 4), bs=4, shuffle=True, drop_last=True)
    valid = DataLoader(SlowSet(8, 0.0), bs=4)
    learn = Learner(DataLoaders(train, valid), nn.Linear(3, 2), loss_func=nn.CrossEntropyLoss())
    tb = TimeBreakdown(clock=CLOCK)
    learn.fit(2, 1e-3, cbs=[tb, Busy()])
    assert [e["epoch"] for e in tb.epochs] == [0, 1]
    for e in tb.epochs:  # 4 batches an epoch, each phase exactly its charged seconds
        assert sum(e[p] for p in PHASES) == pytest.approx(e["total"], rel=1e-9)
        assert e["data"] == pytest.approx(4 * WAIT, abs=1e-9)
        assert e["step"] == pytest.approx(4 * WAIT, abs=1e-9)
        assert e["checkpoint"] == pytest.approx(12 * WAIT, abs=1e-9)  # taken out of the step
        assert e["validation"] == pytest.approx(0.0, abs=1e-9)
    s = tb.summary()
    assert s["epochs"] == 2 and sum(s["share"].values()) == pytest.approx(1, abs=1e-3)
    assert s["share"]["checkpoint"] == pytest.approx(12 / 20, abs=1e-3)
    assert "checkpoint" in tb.line() and "over 2 epoch(s)" in tb.line()


def test_lr_find_is_not_counted_and_timed_is_a_no_op_without_it():
    train = DataLoader(SlowSet(16, 0.0), bs=4, shuffle=True, drop_last=True)
    learn = Learner(DataLoaders(train, train), nn.Linear(3, 2), loss_func=nn.CrossEntropyLoss())
    with timed(learn, "checkpoint"):  # no TimeBreakdown: nothing happens
        pass
    tb = TimeBreakdown()
    learn.add_cb(tb)
    learn.lr_find(num_it=12, show_plot=False)
    assert tb.epochs == []
