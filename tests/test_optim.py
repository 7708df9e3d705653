"""fvloss.optim: the optimiser registry and the parameter groups, each optimiser's step checked
against PyTorch's own optimiser (or a hand-written step) from the same weights and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from fastai.optimizer import Optimizer, OptimWrapper
from fastai.torch_core import trainable_params
from torch import nn

from fvloss.optim import OPTIMIZERS, make_opt_func, param_groups


class Tiny(nn.Module):
    """A FaceNet-shaped model: ``embedder`` (conv, BatchNorm, PReLU, linear) and ``head``."""

    def __init__(self):
        super().__init__()
        self.embedder = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(), nn.Linear(16, 5)
        )
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.head(self.embedder(x))


def names(model: nn.Module, group: list) -> set[str]:
    ids = {id(p) for p in group}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_no_exclusion_and_no_head_lr_is_fastais_single_group():
    m = Tiny()
    g = param_groups(m)
    assert len(g.params) == 1 and g.plain
    assert [id(p) for p in g.params[0]] == [id(p) for p in trainable_params(m)]  # same order


@pytest.mark.parametrize(
    "exclude, spared",
    [
        (["norm"], {"embedder.1.weight", "embedder.1.bias"}),  # AdaFace: BatchNorm only
        (
            ["norm", "bias"],
            {"embedder.1.weight", "embedder.1.bias", "embedder.0.bias", "embedder.4.bias"},
        ),  # fastai's default  # fmt: skip
        (["prelu"], {"embedder.2.weight"}),
    ],
)
def test_wd_exclude_spares_exactly_those(exclude, spared):
    m = Tiny()
    g = param_groups(m, exclude)
    assert g.decay == [True, False] and not g.plain
    assert names(m, g.params[1]) == spared
    assert names(m, g.params[0]) == {n for n, _ in m.named_parameters()} - spared


def test_head_lr_splits_the_head_off():
    m = Tiny()
    g = param_groups(m, ["norm"], head_lr=10.0)
    assert g.names == ["body", "body (no wd)", "head"] and g.lr_mults == [1.0, 1.0, 10.0]
    assert names(m, g.params[2]) == {"head.weight"}


def test_bad_names_are_errors():
    with pytest.raises(ValueError, match=r"wd_exclude: unknown \['conv'\]"):
        param_groups(Tiny(), ["conv"])
    with pytest.raises(ValueError, match="unknown optimiser 'lamb'"):
        make_opt_func("lamb", 0.9, False, None, None)


def test_the_registry_builds_fastais_adam_and_torchs_sgd_and_adamw():
    ps = [nn.Parameter(torch.zeros(2))]
    assert isinstance(make_opt_func("adam", 0.9, False, None, None)(ps, lr=1e-3), Optimizer)
    for name, cls in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        opt = make_opt_func(name, 0.9, False, None, None)(ps, lr=1e-3)
        assert isinstance(opt, OptimWrapper) and isinstance(opt.opt, cls)
    assert set(OPTIMIZERS) == {"adam", "adamw", "sgd"}


def _two_steps(opt, model, x):
    for _ in range(2):
        model.zero_grad()
        model(x).square().sum().backward()
        opt.step()


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_as_torchs_sgd_with_l2_weight_decay(nesterov):
    """fastai's hyper-parameter names reach torch's SGD: lr, mom (momentum), wd (L2)."""
    torch.manual_seed(0)
    a = Tiny()
    b = copy.deepcopy(a)
    x = torch.randn(2, 3, 4, 4)
    ours = make_opt_func("sgd", 0.9, nesterov, None, None)(param_groups(a).params, lr=0.5)
    ours.set_hypers(lr=0.1, wd=5e-4)  # as Learner.fit sets them
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                          nesterov=nesterov)  # fmt: skip
    _two_steps(ours, a, x)
    _two_steps(ref, b, x)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_adam_is_fastais_adam_with_decoupled_weight_decay():
    """A hand-written step: p <- p (1 - lr wd), then Adam with mom 0.9, sqr_mom 0.99, eps 1e-5
    and fastai's debiasing."""
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = make_opt_func("adam", 0.9, False, None, None)([p], lr=0.1)
    opt.set_hypers(wd=0.01)
    g = torch.tensor([0.5, 0.25])
    p.grad = g.clone()
    opt.step()
    w = torch.tensor([1.0, -2.0]) * (1 - 0.1 * 0.01)
    m, v = 0.1 * g, 0.01 * g**2  # (1 - beta) g, debiased below
    expected = w - 0.1 * (m / (1 - 0.9)) / ((v / (1 - 0.99)).sqrt() + 1e-5)
    assert torch.allclose(p.detach(), expected, atol=1e-7)
