"""DivergenceGuard: each stopping rule, on a tiny Learner."""

from __future__ import annotations

import math

import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fvloss.callbacks.guard import DivergenceGuard, TrainingDiverged


def learner(*cbs, n: int = 64) -> Learner:
    torch.manual_seed(0)
    x, y = torch.randn(n, 4), torch.randint(0, 3, (n,))
    ds = TensorDataset(x, y)
    dls = DataLoaders(DataLoader(ds, batch_size=8, shuffle=True), DataLoader(ds, batch_size=8))
    learn = Learner(dls, nn.Linear(4, 3), loss_func=nn.CrossEntropyLoss(), cbs=list(cbs))
    learn.no_bar(), learn.no_logging()
    return learn


class LossTimes(Callback):
    """Multiplies the loss by ``factor`` from step ``start`` on (a loss that explodes)."""

    order = 0

    def __init__(self, start: int, factor: float, steps: int = 10**9):
        self.start, self.factor, self.steps, self.n = start, factor, steps, 0

    def after_loss(self):
        if self.training:
            self.n += 1
            if self.start < self.n <= self.start + self.steps:
                self.learn.loss_grad = self.learn.loss_grad * self.factor
                self.learn.loss = self.learn.loss_grad.clone()


def test_a_healthy_run_is_left_alone():
    learn = learner(DivergenceGuard(warmup=4, patience=2))
    learn.fit(3, 1e-2)
    assert len(learn.recorder.values) == 3


def test_non_finite_loss_stops_at_once():
    learn = learner(LossTimes(5, math.inf), DivergenceGuard())
    with pytest.raises(TrainingDiverged, match=r"epoch 0, step 5: the loss is inf") as e:
        learn.fit(3, 1e-2)
    assert e.value.epoch == 0 and e.value.step == 5 and "lower learning rate" in str(e.value)


def test_loss_above_k_times_its_early_median_for_n_steps():
    learn = learner(LossTimes(6, 100.0), DivergenceGuard(factor=10, patience=3, warmup=4))
    with pytest.raises(TrainingDiverged, match="stayed above 10 x its early level") as e:
        learn.fit(3, 1e-3)
    assert e.value.step == 8  # steps 6, 7, 8 (0-based) were high: stopped at the third
    # two high steps in a row are a spike, not divergence (patience 3)
    learn = learner(LossTimes(6, 100.0, steps=2), DivergenceGuard(factor=10, patience=3, warmup=4))
    learn.fit(2, 1e-3)


class GradTimes(Callback):
    order = 1

    def after_backward(self):
        if self.training and self.iter == 3:
            next(self.learn.model.parameters()).grad.fill_(math.nan)


def test_non_finite_gradients_stop_before_the_step():
    learn = learner(GradTimes(), DivergenceGuard())
    with pytest.raises(TrainingDiverged, match="gradient norm is nan"):
        learn.fit(1, 1e-2)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())  # step not taken


class FakeScaler:
    """A GradScaler whose scale halves on every step: every step was skipped (fp16 overflow)."""

    def __init__(self):
        self.scale = 2.0**16

    def is_enabled(self):
        return True

    def get_scale(self):
        self.scale /= 2
        return self.scale


def test_too_many_skipped_fp16_steps_in_a_row():
    guard = DivergenceGuard(max_skipped=4)
    learn = learner(guard)
    learn.scaler = FakeScaler()
    with pytest.raises(TrainingDiverged, match="skipped 4 steps in a row"):
        learn.fit(2, 1e-2)


def test_lr_find_is_left_alone():
    """lr_find drives the loss up on purpose: the guard watches fits, not lr_find."""
    import fastai.callback.schedule  # noqa: F401  (Learner.lr_find)

    guard = DivergenceGuard(factor=10, patience=3, warmup=4)
    # the loss 100x from step 6 on: a fit stops at step 8 (the test above); lr_find runs on
    spike = LossTimes(6, 100.0)
    learn = learner(spike, guard)
    learn.lr_find(num_it=16, stop_div=False, show_plot=False)
    assert len(learn.recorder.lrs) == 16  # every iteration ran
    losses = [float(v) for v in learn.recorder.losses]
    assert max(losses[8:]) > 10 * min(losses[:4])  # past what stops a fit
    learn.remove_cb(spike)
    with pytest.raises(TrainingDiverged):  # and the guard is on again for the next fit
        learn.fit(3, 1e-3, cbs=LossTimes(6, 100.0))


def test_bad_settings():
    with pytest.raises(ValueError):
        DivergenceGuard(factor=1.0)


@pytest.mark.parametrize("every", [1, 4])
def test_read_every_n_steps_judges_the_same_steps(every):
    """Off the CPU the guard reads losses every N steps (one host sync, not one per step):
    the same step is named, found at most N - 1 steps later."""
    learn = learner(
        LossTimes(6, 100.0), DivergenceGuard(factor=10, patience=3, warmup=4, every=every)
    )
    with pytest.raises(TrainingDiverged) as e:
        learn.fit(3, 1e-3)
    assert e.value.step == 8
    learn = learner(GradTimes(), DivergenceGuard(every=every))
    with pytest.raises(TrainingDiverged, match="gradient norm") as e:
        learn.fit(2, 1e-3)
    assert e.value.step == 3


def test_a_checkpoint_is_written_only_after_the_guard_has_judged_every_step(tmp_path):
    from fvloss.callbacks.checkpoint import Checkpoint

    learn = learner(GradTimes(), DivergenceGuard(every=100))
    learn.path, learn.model_dir = tmp_path, "checkpoints"
    learn.dls.train.set_epoch = lambda epoch, start_batch=0: None  # allows mid-epoch saves
    with pytest.raises(TrainingDiverged, match="gradient norm"):
        learn.fit(2, 1e-3, cbs=[Checkpoint(1e-3, every_steps=5, every_minutes=0)])
    assert not (tmp_path / "checkpoints" / "last.pth").exists()  # step 3 was bad: no save at 5
