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
from .callbacks.schedule import SCHEDULES, Schedule
from .callbacks.tracking import check_trackers
from .config import SYNTHETIC_OVERRIDES, Config, load_toml, merge
from .data.synthetic import SyntheticSpec
from .losses import LOSSES, loss_spec
from .optim import make_opt_func

__all__ = ["check_config", "load_experiment", "loss_settings", "plan", "resolve", "scaled_lr"]


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
    _check_optimisation(cfg)


def _check_optimisation(cfg: Config) -> None:
    """The optimiser's and the schedule's settings, as their builders check them."""
    make_opt_func(cfg.opt, cfg.momentum, cfg.nesterov, cfg.beta2, cfg.eps)
    schedule_of(cfg, cfg.lr or 1.0)
    if cfg.lr_batch and cfg.lr is None:
        raise ValueError("lr_batch scales a given lr: set lr too (lr_find finds this run's own)")
    if cfg.lr_batch < 0 or cfg.accum < 1 or cfg.clip < 0 or cfg.head_lr <= 0:
        raise ValueError(
            f"need lr_batch >= 0, accum >= 1, clip >= 0, head_lr > 0; got {cfg.lr_batch}, "
            f"{cfg.accum}, {cfg.clip}, {cfg.head_lr}"
        )
    if cfg.init:  # said before the data scan, not after it
        path = Path(cfg.init.removeprefix("insightface:"))
        if not (path.is_file() if cfg.init.startswith("insightface:") else path.is_dir()):
            raise FileNotFoundError(
                f"init = {cfg.init!r}: no such run folder or insightface:FILE (weights to start from)"
            )
    if any(m > cfg.epochs for m in cfg.milestones):
        raise ValueError(f"milestones {cfg.milestones} go past the last epoch ({cfg.epochs})")


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


def scaled_lr(cfg: Config, world: int) -> float | None:
    """``cfg.lr``, scaled linearly from the global batch ``lr_batch`` it was given for to the
    run's (``bs`` x processes x ``accum``): a recipe's lr 0.1 for 1024 is 0.0125 for 128."""
    if not cfg.lr_batch or cfg.lr is None:
        return cfg.lr
    return cfg.lr * cfg.bs * world * cfg.accum / cfg.lr_batch


def schedule_of(cfg: Config, lr: float) -> Schedule:
    """The run's learning-rate schedule at peak ``lr``."""
    return Schedule(cfg.schedule, lr, cfg.warmup_epochs, cfg.warmup_steps, cfg.poly_power,
                    tuple(cfg.milestones), cfg.step_factor)  # fmt: skip


def plan(cfg: Config, world: int = 1) -> str:
    """``--dry-run``: the run's recipe, optimiser and schedule (steps, the lr at warm-up end, at
    each milestone and at the end, images seen) from the settings alone, without data. The
    data's size is the recipe's ``expect_images`` (or the embedded synthetic set's)."""
    if cfg.expect_images:
        n_images, n_ids, what = cfg.expect_images, cfg.expect_identities, "the recipe's data"
    elif cfg.data is None:
        spec = SyntheticSpec()
        n_images, n_ids = spec.n_identities * spec.images_per_identity, spec.n_identities
        what = "the embedded synthetic set"
    else:
        raise ValueError(
            "--dry-run needs the data set's size without reading it: set expect_images "
            "(and expect_identities) in the experiment file or as flags"
        )
    n_train = round(n_images * (1 - cfg.valid_pct))  # (identities are held out, not images)
    n_iter = n_train // (cfg.bs * world)  # batches an epoch on each process (drop_last)
    if n_iter < 1:
        raise ValueError(f"{n_train} training images make no batch of {cfg.bs} x {world}")
    lr = scaled_lr(cfg, world)
    step_batch = cfg.bs * world * cfg.accum
    lines = [f"recipe: {cfg.name or cfg.loss}" + (f" ({cfg.source})" if cfg.source else "")]
    lines += [
        f"{k}: {v}" for k, v in (("published", cfg.published), ("hardware", cfg.hardware)) if v
    ]
    ids = f", {n_ids:,} identities" if n_ids else ""
    lines += [
        f"data: {n_images:,} images{ids} ({what}); {n_train:,} trained on (valid_pct {cfg.valid_pct:g})",
        f"model: {cfg.arch}, {cfg.emb_dim}-d, {cfg.loss} {loss_settings(cfg)}"
        + (f", partial_fc {cfg.partial_fc:g}" if cfg.partial_fc else ""),
        f"optimiser: {cfg.opt}, momentum {cfg.momentum:g}" + (", nesterov" if cfg.nesterov else "")
        + f", wd {cfg.wd:g} (spared: {', '.join(cfg.wd_exclude) or 'none'}), head lr x{cfg.head_lr:g}"
        + (f", clip {cfg.clip:g} ({cfg.clip_part})" if cfg.clip else "") + f", precision {cfg.precision}",
        f"batch: {cfg.bs} per process x {world} process(es) x accum {cfg.accum} = {step_batch} per step",
    ]  # fmt: skip
    if lr is None:
        lines.append("lr: lr_find's suggestion (found at the start of the run): no curve yet")
        return "\n".join(lines)
    given = f" (lr {cfg.lr:g} given for a batch of {cfg.lr_batch})" if cfg.lr_batch else ""
    sched = schedule_of(cfg, lr)
    total = n_iter * cfg.epochs
    lines += [
        f"lr: {lr:.6g}{given}; schedule {cfg.schedule} ({SCHEDULES[cfg.schedule]})",
        f"steps: {n_iter:,} batches an epoch x {cfg.epochs} epochs = {total:,} "
        f"({total // cfg.accum:,} optimiser steps); images seen: {total * cfg.bs * world:,}",
        "",
        f"| {'landmark':<20} | {'batch':>10} | {'epoch':>7} | {'lr':>10} |",
        f"|{'-' * 22}|{'-' * 11}:|{'-' * 8}:|{'-' * 11}:|",
    ]
    for name, step in sched.milestone_steps(n_iter, cfg.epochs):
        lr_k = sched.lr_at(step, n_iter, cfg.epochs)
        lines.append(f"| {name:<20} | {step:>10,} | {step / n_iter:>7.2f} | {lr_k:>10.4g} |")
    return "\n".join(lines)
