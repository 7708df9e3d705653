"""Metrics per group of people or capture conditions: the value per group, its spread, the
worst-best gap and a bootstrap interval on the gap.

RFW (Wang et al., ICCV 2019) and BFW (Robinson et al., CVPRW 2020) report verification per
demographic group; the question is the same for pose, age or image quality. A pair belongs to
a group when both its images do (cross-group pairs are counted, not scored, as RFW does). One
threshold, fixed at a target FAR over all pairs, gives each group its FNMR and FMR: a system
deploys one threshold, so a group's error at it is what its members meet (BFW's point).

Groups come from an attribute file (``key,group`` rows: ``key`` an image path relative to
the images' root, or an identity folder name), or are built in: :func:`cfp_pose` (frontal or
profile, from CFP's paths). The gap's interval resamples pairs within each group (genuine
and impostor separately), so it says whether the gap could be noise.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import _far_cut, _Sweep, roc_auc

__all__ = [
    "GroupGap",
    "cfp_pose",
    "identification_by_group",
    "image_groups",
    "read_attributes",
    "verification_by_group",
]


def read_attributes(path: str | Path) -> dict[str, str]:
    """``key -> group`` from a CSV of ``key,group`` rows (an optional ``key,group`` header)."""
    path = Path(path)
    out: dict[str, tuple[str, int]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{n}: expected 'key,group', got {row}")
            key, group = row[0].strip(), row[1].strip()
            if n == 1 and (key.lower(), group.lower()) in (("key", "group"), ("path", "group")):
                continue
            first = out.setdefault(key, (group, n))
            if first[0] != group:
                raise ValueError(
                    f"{path}:{n}: {key!r} is {group!r} here, {first[0]!r} on line {first[1]}"
                )
    if not out:
        raise ValueError(f"{path}: no 'key,group' rows")
    return {k: g for k, (g, _) in out.items()}


def image_groups(
    paths: Sequence[str | Path], attributes: dict[str, str], root: str | Path | None = None
) -> list[str | None]:
    """Each image's group: its path relative to ``root`` (or as given), else its identity
    folder's name, else ``None`` (reported as unassigned)."""
    out: list[str | None] = []
    for p in paths:
        p = Path(p)
        rel = p.relative_to(root) if root is not None and p.is_relative_to(root) else p
        out.append(attributes.get(rel.as_posix(), attributes.get(p.parent.name)))
    return out


def cfp_pose(paths: Sequence[str | Path]) -> list[str | None]:
    """CFP's built-in groups: ``frontal`` or ``profile``, from ``.../<id>/<pose>/NN.jpg``."""
    return [
        Path(p).parent.name if Path(p).parent.name in ("frontal", "profile") else None
        for p in paths
    ]


@dataclass
class GroupGap:
    """``values[group]`` of one metric, its spread (population std over groups), the gap
    (best - worst) and the gap's bootstrap interval; ``extra`` holds other per-group columns."""

    metric: str
    values: dict[str, float]
    counts: dict[str, int]
    gap: float
    gap_ci: tuple[float, float]
    spread: float
    notes: list[str] = field(default_factory=list)
    extra: dict[str, dict[str, float]] = field(default_factory=dict)

    def worst(self) -> str:
        return min(self.values, key=self.values.get)

    def best(self) -> str:
        return max(self.values, key=self.values.get)

    def format(self) -> str:
        rows = [
            f"{'group':<16} {'n':>7} {self.metric:>10}" + "".join(f" {k:>10}" for k in self.extra)
        ]
        for g, v in self.values.items():
            cols = "".join(f" {self.extra[k][g]:10.4f}" for k in self.extra)
            rows.append(f"{g:<16} {self.counts[g]:>7} {v:10.4f}{cols}")
        lo, hi = self.gap_ci
        rows.append(
            f"gap ({self.best()} - {self.worst()}) {self.gap:.4f} [{lo:.4f}, {hi:.4f}] 95% bootstrap; "
            f"spread (std) {self.spread:.4f}"
        )
        return "\n".join(rows + self.notes)


def _gap(values: Sequence[float]) -> float:
    return float(np.max(values) - np.min(values))


def _ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    return float(np.quantile(samples, a)), float(np.quantile(samples, 1 - a))


def verification_by_group(
    scores: np.ndarray,
    same: np.ndarray,
    group_a: Sequence[str | None],
    group_b: Sequence[str | None],
    far: float = 1e-3,
    n_boot: int = 1000,
    seed: int = 0,
) -> GroupGap:
    """AUC per group (pairs whose two images share it), FNMR / FMR at one threshold fixed at
    ``far`` over all pairs, and the AUC gap with a bootstrap interval."""
    s, y = np.asarray(scores, np.float64), np.asarray(same, bool)
    ga, gb = np.asarray(group_a, dtype=object), np.asarray(group_b, dtype=object)
    if not (len(s) == len(y) == len(ga) == len(gb)):
        raise ValueError("scores, labels and both group columns need one entry a pair")
    sw = _Sweep(s, y)
    if sw.n_neg * far < 1:
        raise ValueError(f"{sw.n_neg} impostor pairs cannot resolve FAR {far:g}")
    t = sw.cut_threshold(_far_cut(sw.fp, sw.n_neg, far))
    within = (ga == gb) & (ga != None)  # noqa: E711 (elementwise on an object array)
    notes = []
    if (~within).any():
        unassigned = int(((ga == None) | (gb == None)).sum())  # noqa: E711
        cross = int((~within).sum()) - unassigned
        notes.append(
            f"not scored by group: {cross} cross-group pairs, {unassigned} with an unassigned image"
        )
    groups = sorted({g for g in ga[within]})
    members = {g: np.flatnonzero(within & (ga == g)) for g in groups}
    usable = {g: m for g, m in members.items() if y[m].any() and (~y[m]).any()}
    for g in sorted(set(groups) - set(usable)):
        notes.append(f"group {g!r}: {len(members[g])} pairs, not both genuine and impostor: no AUC")
    if len(usable) < 2:
        raise ValueError(
            f"per-group metrics need 2 groups with genuine and impostor pairs, got {len(usable)}"
        )
    auc = {g: roc_auc(s[m], y[m]) for g, m in usable.items()}
    fnmr = {g: float(np.mean(s[m][y[m]] < t)) for g, m in usable.items()}
    fmr = {g: float(np.mean(s[m][~y[m]] >= t)) for g, m in usable.items()}
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        vals = []
        for m in usable.values():
            pos, neg = m[y[m]], m[~y[m]]
            pick = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
            vals.append(roc_auc(s[pick], y[pick]))
        boot[b] = _gap(vals)
    return GroupGap(
        metric="auc", values=auc, counts={g: len(m) for g, m in usable.items()},
        gap=_gap(list(auc.values())), gap_ci=_ci(boot), spread=float(np.std(list(auc.values()))),
        notes=notes + [f"threshold {t:.4f} (FAR {far:g} over all {len(s)} pairs) for FNMR / FMR"],
        extra={"fnmr": fnmr, "fmr": fmr},
    )  # fmt: skip


def identification_by_group(
    rank: np.ndarray, probe_groups: Sequence[str | None], n_boot: int = 1000, seed: int = 0
) -> GroupGap:
    """Rank-1 per group of mated probes, its spread and the gap with a bootstrap interval."""
    r = np.asarray(rank, np.float64)
    g = np.asarray(probe_groups, dtype=object)
    if len(r) != len(g):
        raise ValueError(f"{len(r)} probe ranks and {len(g)} groups")
    groups = sorted({x for x in g if x is not None})
    if len(groups) < 2:
        raise ValueError(f"per-group metrics need at least 2 groups, got {groups}")
    members = {k: np.flatnonzero(g == k) for k in groups}
    hit = r == 1
    rank1 = {k: float(hit[m].mean()) for k, m in members.items()}
    rng = np.random.default_rng(seed)
    boot = [
        _gap([hit[rng.choice(m, len(m))].mean() for m in members.values()]) for _ in range(n_boot)
    ]
    notes = [f"{int((g == None).sum())} probes without a group"] if (g == None).any() else []  # noqa: E711
    return GroupGap(
        metric="rank1", values=rank1, counts={k: len(m) for k, m in members.items()},
        gap=_gap(list(rank1.values())), gap_ci=_ci(np.asarray(boot)),
        spread=float(np.std(list(rank1.values()))), notes=notes,
    )  # fmt: skip
