"""Paired bootstraps for several runs measured on the same items: ROC AUC over pairs
(:func:`paired_bootstrap`) and a per-probe rate such as rank-1 over probes
(:func:`paired_bootstrap_hits`).

The bootstrap is paired: each resample draws the item indices with replacement once and every
run is measured on that same resample, so what varies between runs is the model, not the luck of
the draw. Same and different pairs are drawn separately (a protocol fixes how many of each it
holds). AUCs of all resamples come from one sort per run (:func:`weighted_auc`). Pure numpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .metrics import roc_auc

__all__ = [
    "BootstrapResult",
    "Diff",
    "MAX_ALL_PAIRS",
    "bootstrap_weights",
    "choose_comparisons",
    "paired_bootstrap",
    "paired_bootstrap_hits",
    "weighted_auc",
]

MAX_ALL_PAIRS = 4  # up to this many runs every pair is compared; beyond, each run vs the first
_CHUNK_ELEMENTS = 1 << 21  # resamples x pairs per vectorised block: ~16 MB per float64 array


# ----------------------------------------------------------------------------- weighted AUC


class _Ranked:
    """One run's scores ready for weighted AUCs: its different-pair scores sorted once, and for
    every same pair how many different pairs score strictly below it (``lo``) or at most as
    high (``hi``). With weights, the different pairs below a same pair weigh
    ``C[lo] + (C[hi] - C[lo]) / 2`` (ties count one half), ``C`` the cumulative weights in
    sorted order: one cumsum and two gathers per resample, no re-sorting."""

    def __init__(self, s_pos: np.ndarray, s_neg: np.ndarray):
        self.order = np.argsort(s_neg, kind="stable")
        sorted_neg = s_neg[self.order]
        self.lo = np.searchsorted(sorted_neg, s_pos, side="left")
        self.hi = np.searchsorted(sorted_neg, s_pos, side="right")

    def auc(self, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
        """AUC per row of weights ``w_pos (B, n_pos)``, ``w_neg (B, n_neg)``; NaN for a row
        without weight on one side."""
        c = np.zeros((len(w_neg), w_neg.shape[1] + 1))
        np.cumsum(w_neg[:, self.order], axis=1, out=c[:, 1:])
        below2 = c[:, self.lo] + c[:, self.hi]  # twice the weight below, ties counted once
        num = np.einsum("bi,bi->b", w_pos, below2)
        den = 2.0 * w_pos.sum(axis=1) * c[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _split(scores, same) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(same, dtype=bool).reshape(-1)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s, y


def weighted_auc(scores, same, weights) -> float | np.ndarray:
    """ROC AUC with a non-negative weight per pair, for one weight vector ``(P,)`` or many
    ``(B, P)`` at once (e.g. bootstrap counts: pair ``k`` drawn ``w[k]`` times).

    Equals ``sklearn.metrics.roc_auc_score`` on the data with each pair repeated ``w[k]``
    times (ties count one half); NaN where a row gives no weight to the same or to the
    different pairs.
    """
    s, y = _split(scores, same)
    w = np.asarray(weights, dtype=np.float64)
    one = w.ndim == 1
    w = np.atleast_2d(w)
    if w.shape[1] != len(s):
        raise ValueError(f"weights for {w.shape[1]} pairs, scores for {len(s)}")
    if (w < 0).any():
        raise ValueError("weights must be non-negative")
    out = _Ranked(s[y], s[~y]).auc(w[:, y], w[:, ~y])
    return float(out[0]) if one else out


# ----------------------------------------------------------------------------- bootstrap


def _counts(rng: np.random.Generator, n: int, rows: int) -> np.ndarray:
    """``rows`` bootstrap resamples of ``n`` items as counts ``(rows, n)``: item ``k`` drawn
    ``counts[b, k]`` times in resample ``b``."""
    idx = rng.integers(0, n, size=(rows, n))
    idx += np.arange(rows)[:, None] * n  # one bincount for the whole block
    return np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def _stratified_counts(
    n_pos: int, n_neg: int, n_boot: int, seed: int, chunk: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Blocks of ``(w_pos, w_neg)`` bootstrap counts, same and different pairs drawn apart.

    Each class has its own random stream, consumed resample after resample, so the resamples
    do not depend on the block size.
    """
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMENTS // max(n_pos + n_neg, 1))
    rng_pos, rng_neg = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        yield _counts(rng_pos, n_pos, rows), _counts(rng_neg, n_neg, rows)


def bootstrap_weights(
    same, n_boot: int, seed: int = 0, chunk: int | None = None
) -> Iterator[np.ndarray]:
    """The resamples :func:`paired_bootstrap` uses, as blocks of counts ``(rows, P)`` per pair.

    Every resample holds as many same and as many different pairs as ``same`` does. The
    sequence depends on ``seed`` only, not on ``chunk``.
    """
    y = np.asarray(same, dtype=bool).reshape(-1)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    for w_pos, w_neg in _stratified_counts(len(pos), len(neg), n_boot, seed, chunk):
        w = np.zeros((len(w_pos), len(y)))
        w[:, pos], w[:, neg] = w_pos, w_neg
        yield w


@dataclass
class Diff:
    """``stat[a] - stat[b]`` (AUC, rank-1, ...) on the items as they are, and its bootstrap
    distribution summarised."""

    a: int
    b: int
    diff: float
    ci_low: float
    ci_high: float
    p_le_0: float  # share of resamples with stat[a] - stat[b] <= 0: a one-sided p-value
    n_le_0: int

    @property
    def verdict(self) -> int:
        """+1: ``a`` better (the interval lies above 0), -1: ``b`` better, 0: cannot tell."""
        return 1 if self.ci_low > 0 else -1 if self.ci_high < 0 else 0


@dataclass
class BootstrapResult:
    """All of a paired bootstrap: ``stats[r, b]`` is run ``r``'s statistic (AUC, rank-1) on
    resample ``b``."""

    n_boot: int
    seed: int
    level: float
    observed: np.ndarray  # (R,) the statistic on the items as they are
    stats: np.ndarray = field(repr=False)  # (R, n_boot)
    diffs: list[Diff] = field(default_factory=list)

    @property
    def aucs(self) -> np.ndarray:
        """``stats`` under the name :func:`paired_bootstrap` gives them."""
        return self.stats

    def auc_ci(self, r: int) -> tuple[float, float]:
        """Percentile interval of run ``r``'s statistic (its AUC for :func:`paired_bootstrap`)."""
        lo, hi = _percentiles(self.stats[r], self.level)
        return lo, hi


def _percentiles(x: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(x, [tail, 100.0 - tail])
    return float(lo), float(hi)


def choose_comparisons(
    aucs: Sequence[float], max_all: int = MAX_ALL_PAIRS
) -> list[tuple[int, int]]:
    """Which AUC differences to report, as ``(a, b)`` meaning ``AUC[a] - AUC[b]``.

    Up to ``max_all`` runs: every pair, the higher observed AUC first, so each line asks
    "is the apparent winner really better?" (at most 6 lines). More runs: each run against the
    first (the baseline, e.g. softmax), ``run - baseline``; all pairs would grow as n^2 lines
    and invite cherry-picking among many uncorrected intervals.
    """
    n = len(aucs)
    if n <= max_all:
        return [
            (i, j) if aucs[i] >= aucs[j] else (j, i) for i, j in itertools.combinations(range(n), 2)
        ]
    return [(j, 0) for j in range(1, n)]


def paired_bootstrap(
    scores: Sequence[np.ndarray],
    same,
    comparisons: Sequence[tuple[int, int]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    chunk: int | None = None,
) -> BootstrapResult:
    """Paired, stratified bootstrap of the AUCs of several runs scored on the same pairs.

    ``scores[r][k]`` is run ``r``'s score of pair ``k``; ``same[k]`` its label. Each resample
    (:func:`bootstrap_weights`) is applied to every run, and each comparison ``(a, b)`` (default
    :func:`choose_comparisons`) gets ``AUC[a] - AUC[b]`` on the pairs, the ``level`` percentile
    interval of the resampled differences and the share of them at or below 0. Cost: one sort
    per run, then O(runs x n_boot x pairs) in vectorised blocks.
    """
    y = np.asarray(same, dtype=bool).reshape(-1)
    runs = [_split(s, y)[0] for s in scores]
    if not runs:
        raise ValueError("no runs to bootstrap")
    if not y.any() or y.all():
        raise ValueError("need both same and different pairs")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    observed = np.array([roc_auc(s, y) for s in runs])
    if comparisons is None:
        comparisons = choose_comparisons(observed.tolist())
    ranked = [_Ranked(s[y], s[~y]) for s in runs]
    aucs = np.empty((len(runs), n_boot))
    done = 0
    for w_pos, w_neg in _stratified_counts(int(y.sum()), int((~y).sum()), n_boot, seed, chunk):
        for r, rk in enumerate(ranked):
            aucs[r, done : done + len(w_pos)] = rk.auc(w_pos, w_neg)
        done += len(w_pos)
    return _result(observed, aucs, comparisons, seed, level)


def _result(observed: np.ndarray, stats: np.ndarray, comparisons, seed: int, level: float):
    """Summarise the resampled statistics ``stats (R, B)`` for each comparison ``(a, b)``."""
    n_boot = stats.shape[1]
    diffs = []
    for a, b in comparisons:
        d = stats[a] - stats[b]
        lo, hi = _percentiles(d, level)
        n_le = int((d <= 0).sum())
        diffs.append(Diff(a, b, float(observed[a] - observed[b]), lo, hi, n_le / n_boot, n_le))
    return BootstrapResult(n_boot, seed, level, observed, stats, diffs)


def paired_bootstrap_hits(
    hits: Sequence[np.ndarray],
    comparisons: Sequence[tuple[int, int]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    chunk: int | None = None,
) -> BootstrapResult:
    """Paired bootstrap of a per-probe rate (rank-1: 1 where the probe's identity came first)
    for several runs searched with the same probes.

    ``hits[r]`` is run ``r``'s ``(n,)`` outcomes, or ``(m, n)`` for a configuration trained
    with ``m`` seeds: its rate is the mean over seeds and probes, and a resample draws probes
    (columns), so the seeds of a configuration share each draw. Comparisons as in
    :func:`paired_bootstrap` (default :func:`choose_comparisons` of the observed rates).
    """
    mats = [np.atleast_2d(np.asarray(h, dtype=np.float64)) for h in hits]
    if not mats:
        raise ValueError("no runs to bootstrap")
    n = mats[0].shape[1]
    if n == 0 or any(h.shape[1] != n for h in mats):
        raise ValueError(f"every run needs the same probes, got {[h.shape[1] for h in mats]}")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    # Sums over seeds, not means: 0/1 hits stay integers, so every resample's sum is exact
    # whatever order BLAS adds in, and two runs with the same hits differ by exactly 0.
    vals = np.stack([h.sum(axis=0) for h in mats], axis=1)  # (n, R)
    scale = np.array([n * len(h) for h in mats], dtype=np.float64)
    observed = vals.sum(axis=0) / scale
    if comparisons is None:
        comparisons = choose_comparisons(observed.tolist())
    stats = np.empty((len(mats), n_boot))
    rng = np.random.default_rng(seed)
    chunk = chunk or max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        stats[:, start : start + rows] = (_counts(rng, n, rows) @ vals / scale).T
    return _result(observed, stats, comparisons, seed, level)
