"""fvloss.callbacks.schedule: each schedule against its closed form and the references' own
schedulers (PyTorch's, stepped as arcface_torch and AdaFace step them), and in a fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fastai.test_utils import synth_learner

from fvloss.callbacks.schedule import SCHEDULES, LRSchedule, Schedule


def polynomial_lr_warmup(base: float, k: int, w: int, t: int, power: float) -> float:
    """insightface arcface_torch's PolynomialLRWarmup (lr_scheduler.py) in closed form, at its
    ``last_epoch == k``, for k >= 1 (step 0: see the next test)."""
    if k <= w:
        return base * k / w
    return base * (1.0 - (min(t, k) - w) / (t - w)) ** power


@pytest.mark.parametrize("w", [0, 7, 40])
def test_poly_is_arcface_torchs_polynomial_lr_warmup(w):
    n_iter, n_epoch = 20, 5
    s = Schedule("poly", 0.1, warmup_steps=w, power=2.0)
    t = n_iter * n_epoch
    for k in range(1, t):
        assert s.lr_at(k, n_iter, n_epoch) == pytest.approx(polynomial_lr_warmup(0.1, k, w, t, 2.0), rel=1e-12)  # fmt: skip
    # step 0: the reference trains at its base lr (its constructor's step leaves the group's
    # lr), fvloss at the warm-up's start; without a warm-up both at the base lr
    assert s.lr_at(0, n_iter, n_epoch) == (0.0 if w else 0.1)


def test_step_is_multisteplr_stepped_per_epoch_as_adaface():
    n_iter, n_epoch, milestones = 7, 26, (12, 20, 24)
    s = Schedule("step", 0.1, milestones=milestones, factor=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)
    for epoch in range(n_epoch):
        for b in range(n_iter):
            assert s.lr_at(epoch * n_iter + b, n_iter, n_epoch) == pytest.approx(
                opt.param_groups[0]["lr"], rel=1e-12
            )
        opt.step()
        ref.step()


def test_cosine_is_cosineannealinglr_after_a_linear_warm_up():
    n_iter, n_epoch, w = 10, 3, 5
    s = Schedule("cosine", 0.01, warmup_steps=w)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_iter * n_epoch - w)
    assert [s.lr_at(k, n_iter, n_epoch) for k in range(w)] == pytest.approx([0.01 * k / w for k in range(w)])  # fmt: skip
    for k in range(w, n_iter * n_epoch):
        assert s.lr_at(k, n_iter, n_epoch) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-15)
        opt.step()
        ref.step()


def test_warm_up_in_epochs_is_rounded_to_steps():
    s = Schedule("cosine", 1.0, warmup_epochs=0.5)
    assert s.warmup(9) == 4 and s.lr_at(2, 9, 2) == 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "cyclic"}, "unknown schedule"),
        ({"name": "step"}, "needs milestones"),
        ({"name": "poly", "milestones": (3,)}, "the step schedule's"),
        ({"name": "cosine", "warmup_epochs": 1, "warmup_steps": 3}, "not both"),
        ({"name": "flat", "warmup_steps": 3}, "flat has no warm-up"),
        ({"name": "poly", "power": 0}, "poly_power must be > 0"),
    ],
)
def test_bad_schedules_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)


def _fit_lrs(schedule: Schedule, n_epoch: int = 2, start_epoch: int = 0) -> list[float]:
    learn = synth_learner(n_trn=5)  # 5 batches an epoch
    learn.fit(n_epoch, schedule.lr, start_epoch=start_epoch, cbs=LRSchedule(schedule))
    return [float(v) for v in learn.recorder.hps["lr"]]


@pytest.mark.parametrize("name", [n for n in SCHEDULES if n not in ("one_cycle", "flat")])
def test_a_fit_sets_the_closed_form_lr_at_every_batch(name):
    s = Schedule(name, 0.1, warmup_steps=3, milestones=(1.2,) if name == "step" else ())
    assert _fit_lrs(s) == pytest.approx([s.lr_at(k, 5, 2) for k in range(10)], abs=1e-15)


@pytest.mark.parametrize("name, fastai_fit", [("one_cycle", "fit_one_cycle"), ("flat", "fit_flat_cos")])  # fmt: skip
def test_one_cycle_and_flat_are_fastais_own_curves(name, fastai_fit):
    ref = synth_learner(n_trn=5)
    getattr(ref, fastai_fit)(2, 0.01)
    ours = _fit_lrs(Schedule(name, 0.01))
    assert ours == [float(v) for v in ref.recorder.hps["lr"]]  # bit for bit
    closed = [Schedule(name, 0.01).lr_at(k, 5, 2) for k in range(10)]
    assert np.allclose(ours, closed, rtol=1e-9)


def test_one_cycle_warm_up_sets_its_rise():
    s = Schedule("one_cycle", 1.0, warmup_steps=5)
    lrs = [s.lr_at(k, 10, 2) for k in range(20)]
    assert max(lrs) == lrs[5] == 1.0 and s.pct_start(10, 2) == 0.25 * 1.0
    assert Schedule("one_cycle", 1.0, warmup_steps=2).pct_start(10, 2) == 0.1


def test_dry_run_landmarks():
    s = Schedule("step", 0.1, warmup_epochs=1, milestones=(12, 20, 24))
    marks = dict(s.milestone_steps(100, 26))
    assert marks["warm-up end"] == 100 and marks["milestone epoch 20"] == 2000
    assert marks["last step"] == 2599
    assert math.isclose(s.lr_at(2000, 100, 26), 0.001)


@pytest.mark.parametrize("name", ["flat", "poly", "one_cycle"])
def test_a_fit_started_at_an_epoch_continues_the_curve(name):
    """fastai's fit_flat_cos ignores start_epoch (it restarted a resumed flat run at epoch 0)."""
    s = Schedule(name, 0.1, warmup_steps=3 if name == "poly" else 0)
    whole = _fit_lrs(s, n_epoch=3)
    assert _fit_lrs(s, n_epoch=3, start_epoch=2) == pytest.approx(whole[10:], abs=1e-12)
