"""fvloss.callbacks.optim: per-group lr and weight decay, gradient clipping and accumulation,
each against a hand-computed step."""

from __future__ import annotations

import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders, TfmdDL
from fastai.learner import Learner
from torch import nn

from fvloss.callbacks.optim import Accumulate, ClipGradNorm, GroupHypers
from fvloss.optim import make_opt_func, param_groups


class Net(nn.Module):
    """Shaped like fvloss's FaceNet: an ``embedder`` and a ``head``; no BatchNorm, so that
    a batch's gradient is the mean of its samples' (for accumulation)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedder = nn.Linear(4, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(self.embedder(x))


def dls(bs: int, n: int = 32) -> DataLoaders:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    ds = list(zip(x, x.sum(1, keepdim=True) * 0.5))
    return DataLoaders(TfmdDL(ds, bs=bs, shuffle=False, drop_last=True), TfmdDL(ds[:8], bs=8))


class Grads(Callback):
    """Keeps each step's gradients (after clipping) and the weights before the step."""

    order = 50

    def before_fit(self):
        self.seen, self.before, self.steps = [], [], 0

    def before_step(self):
        self.seen.append({n: p.grad.clone() for n, p in self.learn.model.named_parameters()})
        self.before.append({n: p.detach().clone() for n, p in self.learn.model.named_parameters()})

    def after_step(self):
        self.steps += 1


def learner(bs=8, cbs=(), wd_exclude=(), head_lr=1.0, wd=0.0, momentum=0.0):
    model = Net()
    groups = param_groups(model, wd_exclude, head_lr)
    extra = [] if groups.plain else [GroupHypers(groups.lr_mults, groups.decay)]
    return Learner(dls(bs), model, loss_func=nn.MSELoss(), splitter=groups.splitter,
                   opt_func=make_opt_func("sgd", momentum, False, None, None), wd=wd,
                   wd_bn_bias=True, cbs=[*extra, *cbs])  # fmt: skip


def test_group_hypers_apply_head_lr_and_spare_bias_for_the_step_only():
    spy = Grads()
    learn = learner(cbs=[spy], wd_exclude=["bias"], head_lr=10.0, wd=0.1)
    learn.fit(1, 0.01)
    after = dict(learn.model.named_parameters())
    g, w = spy.seen[-1], spy.before[-1]
    for name in w:
        lr = 0.01 * (10.0 if name.startswith("head") else 1.0)
        wd = 0.0 if name.endswith("bias") else 0.1
        expected = w[name] - lr * (g[name] + wd * w[name])  # torch SGD: L2 weight decay
        assert torch.allclose(after[name].detach(), expected, atol=1e-7), name
    # outside the step every group holds the body's lr and the run's weight decay
    assert [h["lr"] for h in learn.opt.hypers] == [0.01] * 4
    assert [h["wd"] for h in learn.opt.hypers] == [0.1] * 4


@pytest.mark.parametrize("part", ["body", "all"])
def test_clipping_bounds_the_norm_of_the_part(part):
    spy = Grads()
    learn = learner(cbs=[ClipGradNorm(1e-3, part), spy])
    learn.fit(1, 0.01)
    g = spy.seen[0]
    body = torch.cat([g[n].flatten() for n in g if n.startswith("embedder")]).norm()
    head = torch.cat([g[n].flatten() for n in g if n.startswith("head")]).norm()
    if part == "body":
        assert body == pytest.approx(1e-3, rel=1e-4) and head > 1e-2  # the head untouched
    else:
        assert torch.hypot(body, head) == pytest.approx(1e-3, rel=1e-4)


def test_bad_clip_settings_are_errors():
    with pytest.raises(ValueError, match="clip_part must be"):
        ClipGradNorm(5.0, "head")
    with pytest.raises(ValueError, match="clip must be > 0"):
        ClipGradNorm(0.0)


def test_accumulating_two_batches_of_8_is_one_batch_of_16():
    one = learner(bs=16)
    one.fit(1, 0.05)
    acc = learner(bs=8, cbs=[Accumulate(2)])
    acc.fit(1, 0.05)
    for p, q in zip(one.model.parameters(), acc.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_an_epochs_last_batch_always_steps():
    spy = Grads()
    learn = learner(bs=8, cbs=[Accumulate(3), spy])  # 4 batches: steps after batches 2 and 3
    learn.fit(2, 0.01)
    assert spy.steps == 4 and learn.accumulating is False


def test_validating_before_any_fit_works_with_groups():
    learn = learner(wd_exclude=["bias"], head_lr=2.0)
    assert learn.opt is None
    learn.validate()  # GroupHypers sees before_fit with no optimiser yet
    learn.fit(1, 0.01)
