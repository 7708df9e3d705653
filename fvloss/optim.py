"""Optimisers and their parameter groups: the registry behind ``opt = "adam" | "adamw" | "sgd"``.

* ``adam``: fastai's ``Adam`` (decoupled weight decay, ``sqr_mom`` 0.99, ``eps`` 1e-5), what
  fvloss trained with before optimisers were a setting; kept as the default so every earlier
  run and number stays what it was.
* ``sgd`` and ``adamw``: **PyTorch's** ``torch.optim.SGD`` / ``AdamW`` through fastai's
  ``OptimWrapper``. The papers' code (insightface arcface_torch, AdaFace) steps with exactly
  these; fastai's own ``SGD`` has no Nesterov momentum and applies weight decay in its own order,
  so only torch's give the same weights after a step (``bench/peer_parity.py``). fastai's
  schedules, ``lr_find`` and checkpoints drive both kinds through the same hyper-parameter names
  (``lr``, ``mom``, ``wd``, ``sqr_mom``).

Parameter groups (:func:`param_groups`) split the model by *head or body* (for ``head_lr``, the
head's lr as a multiple of the body's) and by *decayed or not* (``wd_exclude``: no weight decay
on norm layers, biases or PReLU slopes; AdaFace decays all but BatchNorm, arcface_torch decays
everything, fastai's default spares norm layers and biases). The multiples are applied by
:class:`fvloss.callbacks.optim.GroupHypers` around each optimiser step, so every other reader of
the hyper-parameters (schedules, the Recorder, lr_find, a notebook's ``fit_one_cycle(5, 1e-3)``)
sees and sets the body's values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from fastai.optimizer import Adam, OptimWrapper
from fastai.torch_core import norm_types
from torch import nn

__all__ = ["OPTIMIZERS", "WD_EXCLUDE", "ParamGroups", "make_opt_func", "param_groups"]


@dataclass(frozen=True)
class OptSpec:
    """A registered optimiser: ``build(momentum, nesterov, beta2, eps) -> opt_func``."""

    build: Callable[..., Callable]
    summary: str
    nesterov: bool = False  # takes Nesterov momentum


def _adam(momentum: float, nesterov: bool, beta2: float | None, eps: float | None) -> Callable:
    return partial(Adam, mom=momentum, sqr_mom=0.99 if beta2 is None else beta2,
                   eps=1e-5 if eps is None else eps)  # fmt: skip


def _adamw(momentum: float, nesterov: bool, beta2: float | None, eps: float | None) -> Callable:
    betas = (momentum, 0.999 if beta2 is None else beta2)
    return partial(OptimWrapper, opt=torch.optim.AdamW, betas=betas,
                   eps=1e-8 if eps is None else eps)  # fmt: skip


def _sgd(momentum: float, nesterov: bool, beta2: float | None, eps: float | None) -> Callable:
    return partial(OptimWrapper, opt=torch.optim.SGD, momentum=momentum, nesterov=nesterov)


OPTIMIZERS: dict[str, OptSpec] = {
    "adam": OptSpec(_adam, "fastai's Adam: decoupled weight decay, sqr_mom 0.99, eps 1e-5"),
    "adamw": OptSpec(_adamw, "torch.optim.AdamW (arcface_torch's ViTs): betas (mom, 0.999)"),
    "sgd": OptSpec(_sgd, "torch.optim.SGD with momentum, L2 weight decay (the papers')", True),
}


def make_opt_func(
    opt: str, momentum: float, nesterov: bool, beta2: float | None, eps: float | None
) -> Callable:
    """The ``opt_func`` a fastai ``Learner`` takes for the registered optimiser ``opt``."""
    if opt not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser {opt!r}; known: {sorted(OPTIMIZERS)}")
    if nesterov and not OPTIMIZERS[opt].nesterov:
        raise ValueError(f"nesterov momentum is an SGD setting, not {opt}'s")
    if nesterov and momentum <= 0:
        raise ValueError(f"nesterov needs momentum > 0, got {momentum}")
    return OPTIMIZERS[opt].build(momentum, nesterov, beta2, eps)


# -- parameter groups ---------------------------------------------------------------------------
def _prelu(m: nn.Module, name: str) -> bool:
    return isinstance(m, nn.PReLU)


def _norm(m: nn.Module, name: str) -> bool:
    return isinstance(m, norm_types)  # fastai's: BatchNorm, InstanceNorm, LayerNorm


def _bias(m: nn.Module, name: str) -> bool:
    return name == "bias"


# what each ``wd_exclude`` name spares, judged per (module, parameter name)
WD_EXCLUDE: dict[str, Callable[[nn.Module, str], bool]] = {
    "norm": _norm,
    "bias": _bias,
    "prelu": _prelu,
}


@dataclass
class ParamGroups:
    """The optimiser's groups and, per group, its lr multiple and whether it is decayed."""

    params: list[list[nn.Parameter]] = field(default_factory=list)
    lr_mults: list[float] = field(default_factory=list)
    decay: list[bool] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def splitter(self, model: nn.Module) -> list[list[nn.Parameter]]:
        """fastai's ``splitter``: the groups (built for this model)."""
        return self.params

    @property
    def plain(self) -> bool:
        """Every group at the body's lr and decayed: nothing to apply around a step."""
        return all(m == 1.0 for m in self.lr_mults) and all(self.decay)


def param_groups(
    model: nn.Module, wd_exclude: list[str] | tuple[str, ...] = (), head_lr: float = 1.0
) -> ParamGroups:
    """Split ``model``'s trainable parameters (a :class:`~fvloss.model.FaceNet`: ``embedder``
    and ``head``; any other model is all body) into the groups ``wd_exclude`` and ``head_lr``
    need, in model order, empty groups left out. With neither, one group, as fastai's default
    splitter makes."""
    unknown = sorted(set(wd_exclude) - set(WD_EXCLUDE))
    if unknown:
        raise ValueError(f"wd_exclude: unknown {unknown}; known: {sorted(WD_EXCLUDE)}")
    tests = [WD_EXCLUDE[n] for n in wd_exclude]
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    split_head = head_lr != 1.0
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_head = split_head and id(p) in head_ids
            decayed = not any(t(m, name) for t in tests)
            buckets.setdefault((is_head, decayed), []).append(p)
    groups = ParamGroups()
    for is_head, decayed in [(False, True), (False, False), (True, True), (True, False)]:
        ps = buckets.get((is_head, decayed))
        if ps:
            groups.params.append(ps)
            groups.lr_mults.append(head_lr if is_head else 1.0)
            groups.decay.append(decayed)
            groups.names.append(f"{'head' if is_head else 'body'}{'' if decayed else ' (no wd)'}")
    return groups
