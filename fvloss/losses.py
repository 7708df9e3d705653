"""The loss registry: one name -> a head, its callbacks and its settings.

A new loss is one head module in :mod:`fvloss.heads` plus one :func:`register_loss` line at the
end of this file. The registry sits above the heads and the callbacks (it ties a head to the
callback it trains with, e.g. center loss's update rule), so neither imports the other.

Everything that offers a choice of cost function reads this one table: ``face_learner(loss=)``,
``fvloss train --loss`` (its choices and its ``--<loss>-<setting>`` flags), the recipe modules
``python -m fvloss.recipes.<loss>``, the experiment files' ``[<loss>]`` tables and their checks.
A loss's settings are the keyword arguments of its head and of its callback, with the defaults of
their signatures (the papers') unless the registry line overrides them (fvloss's, where a
measurement said so).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .callbacks.center import CenterLoss
from .callbacks.subcenter_drop import SubCenterDrop
from .heads import (
    AdaFaceHead,
    ArcFaceHead,
    CombinedMarginHead,
    CosFaceHead,
    CurricularFaceHead,
    ElasticArcHead,
    Head,
    MagFaceHead,
    SoftmaxHead,
    SphereFaceHead,
    SubCenterArcFaceHead,
)
from .heads.partial_fc import PartialFCHead

__all__ = ["LossSpec", "LOSSES", "register_loss", "loss_spec", "build_loss", "make_head"]

_PLAIN = (bool, int, float, str)  # what a TOML table or a flag can hold


def _signature_settings(cls: Callable | None, skip: tuple[str, ...]) -> dict[str, Any]:
    """Keyword parameters of ``cls`` with plain defaults (``eps``, ``s`` ...), in order."""
    if cls is None:
        return {}
    out = {}
    for p in inspect.signature(cls).parameters.values():
        if p.name not in skip and isinstance(p.default, _PLAIN):
            out[p.name] = p.default
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same_kind(v: Any, default: Any, scale: bool) -> bool:
    """``v`` may stand where ``default`` does: a bool for a bool, an int for an int, a number
    for a float, a string for a string; a scale ``s`` is a number or ``"auto"`` (AdaCos)."""
    if scale or default == "auto":
        return v == "auto" or _number(v)
    if isinstance(default, bool):
        return isinstance(v, bool)
    if isinstance(default, int):
        return isinstance(v, int) and not isinstance(v, bool)
    if isinstance(default, float):
        return _number(v)
    return isinstance(v, str)


@dataclass(frozen=True)
class LossSpec:
    """One registered cost function.

    Args:
        name: the name ``--loss`` takes.
        head: the :class:`Head` class, built as ``head(emb_dim, n_classes, **head settings)``.
        callback: a fastai callback class trained with it (``CenterLoss``), built as
            ``callback(n_classes, emb_dim, **callback settings)``, or None.
        defaults: fvloss's defaults where they differ from the signatures' (papers') ones.
        summary: one line for ``--help`` and the README.
    """

    name: str
    head: type[Head]
    callback: type | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def head_settings(self) -> dict[str, Any]:
        return _signature_settings(self.head, ("emb_dim", "n_classes"))

    @property
    def callback_settings(self) -> dict[str, Any]:
        return _signature_settings(self.callback, ("n_classes", "emb_dim"))

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting and its default."""
        return {**self.head_settings, **self.callback_settings, **self.defaults}

    @property
    def search(self) -> dict[str, tuple[float, float, bool]]:
        """The ranges a study searches its settings in, ``{setting: (low, high, log)}``: the
        head's and the callback's own declarations (``search`` class attributes)."""
        out = {**getattr(self.head, "search", {}), **getattr(self.callback, "search", {})}
        return {k: v for k, v in out.items() if k in self.settings}

    def setting_docs(self) -> dict[str, str]:
        """Each setting's one-line documentation, from the ``Args:`` sections of the head's
        and the callback's docstrings (and their base classes'): the one place it is written."""
        docs: dict[str, str] = {}
        for cls in (self.head, self.callback):
            for klass in getattr(cls, "__mro__", ())[::-1]:  # a subclass's words win
                docs.update(_args_section(klass.__doc__ or ""))
        return {k: docs[k] for k in self.settings if k in docs}

    def check(self, settings: dict[str, Any], where: str = "") -> None:
        """An unknown key, or a value of the wrong kind, is an error naming it."""
        known = self.settings
        for k, v in settings.items():
            if k not in known:
                raise ValueError(
                    f"{where}unknown setting {k!r} of loss {self.name!r}; known: {sorted(known)}"
                )
            if not _same_kind(v, known[k], scale=k == "s"):
                raise ValueError(
                    f"{where}{self.name}.{k} = {v!r}: expected a value like {known[k]!r}"
                )
            allowed = getattr(self.head, "choices", {}).get(k)
            if allowed and v not in allowed:
                raise ValueError(f"{where}{self.name}.{k} = {v!r}: one of {list(allowed)}")

    def resolve(
        self, settings: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(head keyword arguments, callback keyword arguments)``: ``settings`` over the
        defaults, checked."""
        settings = dict(settings or {})
        self.check(settings)
        full = {**self.settings, **settings}
        return (
            {k: full[k] for k in self.head_settings},
            {k: full[k] for k in self.callback_settings},
        )

    def build(
        self,
        emb_dim: int,
        n_classes: int,
        settings: dict[str, Any] | None = None,
        partial_fc: float | None = None,
    ) -> tuple[Head, list]:
        """The head and its callbacks, with ``settings`` over the defaults; ``partial_fc`` (a
        sample rate in (0, 1]) builds it sharded across ranks with class sampling
        (:class:`~fvloss.heads.partial_fc.PartialFCHead`)."""
        head_kw, cb_kw = self.resolve(settings)
        if partial_fc:
            head = PartialFCHead(self.head, emb_dim, n_classes, partial_fc, **head_kw)
        else:
            head = self.head(emb_dim, n_classes, **head_kw)
        cbs = [] if self.callback is None else [self.callback(n_classes, emb_dim, **cb_kw)]
        return head, cbs


LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str,
    head: type[Head],
    callback: type | None = None,
    summary: str = "",
    **defaults: Any,
) -> LossSpec:
    """Make ``loss=name`` available everywhere (the learner, the CLI, recipes, config files)."""
    spec = LossSpec(name, head, callback, dict(defaults), summary)
    unknown = set(defaults) - set(spec.head_settings) - set(spec.callback_settings)
    if unknown:
        raise ValueError(f"register_loss({name!r}): {sorted(unknown)} are not settings of it")
    LOSSES[name] = spec
    return spec


def loss_spec(name: str) -> LossSpec:
    """The registered loss ``name``; an unknown name is an error listing the known ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]


def build_loss(
    name: str, emb_dim: int, n_classes: int, settings: dict[str, Any] | None = None
) -> tuple[Head, list]:
    """``(head, callbacks)`` of the registered loss ``name``."""
    return loss_spec(name).build(emb_dim, n_classes, settings)


# fvloss's defaults that differ from the papers' (the heads' signatures) are given here, with
# the measurement behind them in the README: s="auto" is AdaCos's fixed scale for C classes,
# better than s=64 from scratch on a few hundred identities ("ArcFace on small data"); every
# cosine head gets it, so that a comparison of losses is not one of scales.
register_loss("softmax", SoftmaxHead, summary="softmax cross-entropy (the assignment's baseline)")
register_loss("center", SoftmaxHead, CenterLoss, summary="softmax + center loss (Wen et al. 2016)")
register_loss(
    "arcface", ArcFaceHead, s="auto", summary="additive angular margin (Deng et al. 2019)"
)
register_loss("cosface", CosFaceHead, s="auto", summary="additive cosine margin (Wang et al. 2018)")
register_loss("sphereface", SphereFaceHead, summary="angular softmax A-Softmax (Liu et al. 2017)")
register_loss(
    "combined", CombinedMarginHead, s="auto", summary="combined margin (Deng et al. 2019)"
)
register_loss(
    "subcenter", SubCenterArcFaceHead, SubCenterDrop, s="auto", summary="sub-center ArcFace (2020)"
)
register_loss("curricularface", CurricularFaceHead, s="auto", summary="CurricularFace (Huang 2020)")
register_loss("adaface", AdaFaceHead, s="auto", summary="quality-adaptive margin (Kim et al. 2022)")
register_loss("magface", MagFaceHead, s="auto", summary="magnitude-aware margin (Meng et al. 2021)")
register_loss(
    "elasticface", ElasticArcHead, s="auto", summary="random margin (Boutros et al. 2022)"
)


def make_head(loss: str, emb_dim: int, n_classes: int, **settings) -> Head:
    """The head of the registered ``loss`` (its callbacks, e.g. center loss's, are left out)."""
    return build_loss(loss, emb_dim, n_classes, settings)[0]


def _args_section(doc: str) -> dict[str, str]:
    """``{name: text}`` of a Google-style ``Args:`` section (``a, b: text`` names both)."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc).splitlines()
    if "Args:" not in lines:
        return out
    names: list[str] = []
    for line in lines[lines.index("Args:") + 1 :]:
        if not line.strip():
            break
        if not line.startswith("    "):
            break  # the section ended
        body = line[4:]
        if not body.startswith(" ") and ":" in body:  # "name: text" (continuations indent more)
            head, text = body.split(":", 1)
            names = [n.strip() for n in head.split(",")]
            for n in names:
                out[n] = text.strip()
        else:
            for n in names:
                out[n] += " " + body.strip()
    return out
