"""Runs of one configuration over seeds: grouping, mean +- std, pooled scores.

A comparison of cost functions from one seed each ranks the seeds as much as the losses (the
README's celeba64 reruns moved AUCs by more than the gaps between losses). ``fvloss compare``
therefore groups runs whose ``config.json`` agree in everything but the seed (and what does
not change the experiment: folders, logging, the lr lr_find picked for that seed), reports each
group's mean and sample std per metric, and bootstraps the groups on their pooled pairs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Group", "IGNORED_KEYS", "config_key", "group_runs", "mean_std", "pool_scores"]

# Settings that do not make a different experiment: the seed (what a group varies), where the
# run was written, how it was logged or scheduled on the machine, and the lr that lr_find found
# for that seed (the configuration is "lr found by lr_find", which every seed shares).
IGNORED_KEYS = frozenset(
    {"seed", "run_dir", "resume", "out", "name", "lr", "progress", "workers", "threads",
     "checkpoint_steps", "checkpoint_minutes", "preload", "preload_share"}
)  # fmt: skip


def config_key(config: dict[str, Any]) -> str:
    """What identifies a run's configuration: its settings minus :data:`IGNORED_KEYS`."""
    kept = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    return json.dumps(kept, sort_keys=True, default=str)


@dataclass
class Group:
    """Runs (indices into the compared runs) of one configuration, ordered by seed."""

    label: str
    members: list[int]
    seeds: list[Any] = field(default_factory=list)


def group_runs(labels: Sequence[str], configs: Sequence[dict[str, Any]]) -> list[Group]:
    """Groups of runs sharing :func:`config_key`, in the order their first run was given.
    A group is labelled by its runs' ``name`` (or loss); runs without a config.json (ONNX
    models) stay groups of one under their own label."""
    keys: dict[str, Group] = {}
    for k, (label, cfg) in enumerate(zip(labels, configs)):
        key = config_key(cfg) if cfg else f"#{k}"
        g = keys.get(key)
        if g is None:
            name = str(cfg.get("name") or cfg.get("loss") or label) if cfg else label
            keys[key] = g = Group(name, [])
        g.members.append(k)
        g.seeds.append(cfg.get("seed") if cfg else None)
    groups = list(keys.values())
    for g in groups:
        order = sorted(range(len(g.members)), key=lambda i: str(g.seeds[i]))
        g.members, g.seeds = [g.members[i] for i in order], [g.seeds[i] for i in order]
    names = [g.label for g in groups]
    seen: dict[str, int] = {}
    for g in groups:  # two configurations with one name: tell them apart
        if names.count(g.label) > 1:
            seen[g.label] = seen.get(g.label, 0) + 1
            g.label = f"{g.label} #{seen[g.label]}"
    return groups


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample std (ddof 1; None for one value) and count of the finite values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None), len(v)


def pool_scores(
    scores: Sequence[np.ndarray], same: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """One group's first ``n`` runs' scores on the shared pairs, concatenated: ``n * P`` pooled
    pairs. Every group pools the same number of runs, so the pooled sets line up pair by pair
    and the paired bootstrap applies; it then treats each (seed, pair) as one draw, which
    ignores that one pair recurs across seeds (intervals a little narrow, as noted)."""
    if len(scores) < n:
        raise ValueError(f"need {n} runs to pool, got {len(scores)}")
    return np.concatenate([np.asarray(s) for s in scores[:n]]), np.tile(np.asarray(same), n)
