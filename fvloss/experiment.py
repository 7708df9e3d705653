"""An experiment's settings resolved and checked: the :class:`~fvloss.config.Config` layers
merged (defaults < recipe < synthetic-set settings < experiment file < flags), each setting's
source kept, and everything checked against the registries (losses, bodies, precisions,
trackers) before any data is read.

Above the registries and below the runner (:mod:`fvloss.train`) and the command line
(:mod:`fvloss.cli.train`, which turns ``argv`` into the layers).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from .bodies import BODIES
from .callbacks.precision import PRECISIONS
from .callbacks.tracking import check_trackers
from .config import SYNTHETIC_OVERRIDES, Config, load_toml, merge
from .losses import LOSSES, loss_spec

__all__ = ["check_config", "load_experiment", "loss_settings", "resolve"]


def load_experiment(path: str | Path) -> dict[str, Any]:
    """An experiment file's settings (:func:`fvloss.config.load_toml`), its ``[loss]`` tables
    checked against the loss registry."""
    return load_toml(path, losses=LOSSES)


def loss_settings(cfg: Config) -> dict[str, Any]:
    """The trained loss's settings: the registry's defaults, then the config's table."""
    return {**loss_spec(cfg.loss).settings, **cfg.loss_settings.get(cfg.loss, {})}


def check_config(cfg: Config) -> None:
    """Errors a run would otherwise meet late (after the data scan, or after lr_find): the
    loss, its settings, the body, the schedule, the precision."""
    loss_spec(cfg.loss)
    for name, table in cfg.loss_settings.items():
        if name not in LOSSES:
            raise ValueError(f"settings for {name!r}, which is not a loss; known: {sorted(LOSSES)}")
        LOSSES[name].check(table)
    if cfg.partial_fc:
        if not 0 < cfg.partial_fc <= 1:
            raise ValueError(
                f"partial_fc is a sample rate in (0, 1] (0: off), got {cfg.partial_fc}"
            )
        if not loss_spec(cfg.loss).head.shardable:
            can = sorted(n for n, s in LOSSES.items() if s.head.shardable)
            raise ValueError(f"partial_fc shards the losses {can}; not {cfg.loss}")
    if cfg.arch not in BODIES and not cfg.arch.startswith("timm:"):
        raise ValueError(f"unknown arch {cfg.arch!r}; known: {sorted(BODIES)} or timm:NAME")
    limited = {f.name: f.metadata["choices"] for f in fields(Config) if f.metadata.get("choices")}
    check_trackers(cfg.log)  # a tracker whose package is missing: said before the data scan
    for key, allowed in {**limited, "precision": PRECISIONS}.items():
        value = getattr(cfg, key)
        if isinstance(value, list) and all(v in allowed for v in value):
            continue
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {getattr(cfg, key)!r}")


def _no_loss_clash(recipe: dict, toml: dict, flags: dict, prog: str) -> None:
    """A recipe module names its cost function; an experiment file or flag naming another is an
    error, not a silent switch (``python -m fvloss.recipes.arcface --config
    recipes/celeba64_softmax.toml`` used to train softmax)."""
    mine = recipe.get("loss")
    for where, d in (("the experiment file", toml), ("--loss", flags)):
        other = d.get("loss")
        if mine is not None and other is not None and other != mine:
            raise ValueError(
                f"{prog} trains {mine}, but {where} says loss = {other!r}: run "
                f"`python -m fvloss.recipes.{other}` or `fvloss train --loss {other}` instead, "
                "or leave loss out of it"
            )


def resolve(
    recipe: dict[str, Any] | None = None,
    toml: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    prog: str = "fvloss train",
) -> tuple[Config, dict[str, str]]:
    """Layer the defaults, a recipe's overrides, the synthetic set's settings (when no data is
    given), an experiment file's and the flags'; returns the checked config and a dict saying
    where each non-default setting came from (``recipe``, ``synthetic``, ``config``, ``flags``)."""
    recipe, toml, flags = recipe or {}, toml or {}, flags or {}
    layers: list[tuple[str, dict[str, Any]]] = [("recipe", recipe)]
    if flags.get("data", toml.get("data")) is None:
        layers.append(("synthetic", SYNTHETIC_OVERRIDES))
    layers += [("config", toml), ("flags", flags)]
    _no_loss_clash(recipe, toml, flags, prog)
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for src, d in layers:
        values = merge(values, d)
        source.update(dict.fromkeys(d, src))
    cfg = Config(**values)
    check_config(cfg)
    return cfg, source
