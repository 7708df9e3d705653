"""MarginSchedule: the margin over training, and none of it during lr_find."""

from __future__ import annotations

import pytest
from fastai.callback.core import Callback

from fvloss.callbacks.margin import MarginSchedule
from fvloss.learner import face_learner


def test_margin_at_follows_hold_then_linear_ramp():
    cb = MarginSchedule(hold=0.2, warmup=0.4)
    cb.m_full = 0.5
    assert [cb.margin_at(t) for t in (0.0, 0.19, 0.2, 0.4, 0.6, 0.9)] == pytest.approx(
        [0, 0, 0, 0.25, 0.5, 0.5]
    )
    step = MarginSchedule(hold=0.3, warmup=0.0)
    step.m_full = 0.5
    assert (step.margin_at(0.29), step.margin_at(0.3)) == (0.0, 0.5)
    with pytest.raises(ValueError):
        MarginSchedule(hold=0.8, warmup=0.4)


class MarginSpy(Callback):
    order = MarginSchedule.order + 1  # sees the margin the forward pass will use

    def before_fit(self):
        self.ms = []

    def before_batch(self):
        if self.training:
            self.ms.append((self.pct_train, self.learn.model.head.m))


def test_training_ramps_the_margin_and_restores_it(dls):
    learn = face_learner(
        dls, loss="arcface", arch="resnet18", emb_dim=8, val_pairs=None, margin_warmup=0.5
    )
    spy = MarginSpy()
    learn.fit(2, 1e-3, cbs=spy)
    ts, ms = zip(*spy.ms, strict=True)
    assert ms == pytest.approx([0.5 * min(1.0, t / 0.5) for t in ts])
    assert ms[0] == 0.0 and ms[-1] == 0.5
    assert learn.model.head.m == 0.5


def test_lr_find_sees_the_starting_margin_only(dls):
    learn = face_learner(
        dls, loss="arcface", arch="resnet18", emb_dim=8, val_pairs=None, margin_warmup=0.3
    )
    spy = MarginSpy()
    learn.add_cb(spy)
    learn.lr_find(num_it=6, show_plot=False)
    assert spy.ms and {m for _, m in spy.ms} == {0.0}
    assert learn.model.head.m == 0.5
