"""MarginSchedule: the margin over training, and none of it during lr_find."""

from __future__ import annotations

import pytest
from fastai.callback.core import Callback

from fvloss.callbacks.margin import MarginSchedule
from fvloss.learner import face_learner


def test_margin_at_follows_hold_then_linear_ramp():
    cb = MarginSchedule(hold=0.2, warmup=0.4)
    assert [cb.factor_at(t) for t in (0.0, 0.19, 0.2, 0.4, 0.6, 0.9)] == pytest.approx(
        [0, 0, 0, 0.5, 1, 1]
    )
    step = MarginSchedule(hold=0.3, warmup=0.0)
    assert (step.factor_at(0.29), step.factor_at(0.3)) == (0.0, 1.0)
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


class AllMarginsSpy(Callback):
    order = MarginSchedule.order + 1

    def before_fit(self):
        self.seen = []

    def before_batch(self):
        if self.training:
            head = self.learn.model.head
            self.seen.append((self.pct_train, {a: getattr(head, a) for a in head.margins}))


@pytest.mark.parametrize(
    ("loss", "full", "none"),
    [
        ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}, {"m1": 1.0, "m2": 0.0, "m3": 0.0}),
        ("magface", {"l_m": 0.45, "u_m": 0.8}, {"l_m": 0.0, "u_m": 0.0}),
    ],
)
def test_every_margin_of_a_head_ramps_from_its_no_margin_value(dls, loss, full, none):
    learn = face_learner(
        dls, loss=loss, arch="resnet18", emb_dim=8, val_pairs=None, margin_warmup=0.5
    )
    spy = AllMarginsSpy()
    learn.fit(1, 1e-3, cbs=spy)
    for t, got in spy.seen:
        f = min(1.0, t / 0.5)
        assert got == pytest.approx({a: none[a] + f * (full[a] - none[a]) for a in full})
    assert spy.seen[0][1] == pytest.approx(none)
    assert {a: getattr(learn.model.head, a) for a in full} == pytest.approx(full)


def test_sphereface_has_no_warm_up_callback(dls):
    learn = face_learner(dls, loss="sphereface", arch="resnet18", emb_dim=8, val_pairs=None,
                         margin_warmup=0.3)  # fmt: skip
    assert not any(isinstance(c, MarginSchedule) for c in learn.cbs)
