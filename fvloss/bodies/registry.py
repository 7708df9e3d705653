"""The body registry: name -> builder ``(img_size, pretrained) -> nn.Module``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["BODIES", "BodySpec", "build_body", "register_body"]

Builder = Callable[[int, bool], nn.Module]


@dataclass(frozen=True)
class BodySpec:
    """A registered body: ``builder(img_size, pretrained)`` returns a module with an integer
    ``out_features`` (its output width) and, optionally, ``out_normalized = True`` when its
    output already passed a BatchNorm (IR-ResNet's BN-dropout-flatten: the neck then skips its
    first BN)."""

    name: str
    builder: Builder
    summary: str = ""


BODIES: dict[str, BodySpec] = {}


def register_body(name: str, builder: Builder, summary: str = "") -> BodySpec:
    """Make ``arch=name`` available to ``face_learner``, ``fvloss train --arch`` and configs."""
    BODIES[name] = spec = BodySpec(name, builder, summary)
    return spec


def build_body(name: str, img_size: int = 112, pretrained: bool = False) -> nn.Module:
    """The body ``name`` for ``img_size`` inputs; ``timm:NAME`` builds a timm model (an extra)."""
    if name.startswith("timm:"):
        from .timm import timm_body  # timm is an optional extra: imported only when asked for

        return timm_body(name[len("timm:") :], pretrained, img_size)
    if name not in BODIES:
        raise ValueError(
            f"unknown arch {name!r}; known: {sorted(BODIES)} or timm:NAME "
            "(add one with fvloss.bodies.register_body)"
        )
    body = BODIES[name].builder(img_size, pretrained)
    if not isinstance(getattr(body, "out_features", None), int):
        raise TypeError(f"body {name!r} has no integer out_features")
    return body
