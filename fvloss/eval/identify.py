"""1:N identification: who is this probe, among the gallery's enrolled identities?

Terms (as NIST FRVT and IJB-B/C 1:N use them):

* the **gallery** holds entries (images or pooled templates) with identity labels; an identity
  may have several entries, and it is ranked by its best-scoring one;
* a **mated** probe's identity is enrolled; its **rank** is 1 + the number of other
  identities with an entry scoring strictly above its identity's best entry (ties favour the
  probe); the **CMC** at rank r is the share of mated probes with rank <= r (closed set);
* a **non-mated** probe's identity is not enrolled (open set): any candidate it returns above
  the threshold is a false positive. **FPIR(t)** is the share of non-mated probes whose top
  score is >= t; **TPIR(t)** the share of mated probes at rank 1 whose score is >= t
  (insightface's ``ijb_1n.py`` reports TPIR at FPIR = 1e-2 and 1e-1). An FPIR below
  ``1 / (non-mated probes)`` cannot be resolved: its TPIR is ``None`` with the reason;
* **distractors** (:func:`distractor_scaling`): faces of people who are none of the probes,
  added to the gallery as MegaFace does, each its own identity.

Search is :mod:`fvloss.eval.search` (FAISS): a probe needs only its ``max_rank x m`` best
entries (``m``: the most entries an identity has), because ``max_rank`` identities cannot
fill more, so a rank beyond ``max_rank`` is known without scoring the whole gallery.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import _FAR_TOL, _far_cut, _Sweep, far_key
from .search import INDEXES, SearchIndex, build_index

__all__ = [
    "DEFAULT_FPIRS",
    "DEFAULT_RANKS",
    "IdentificationResult",
    "ProbeRanks",
    "ScalingPoint",
    "distractor_scaling",
    "format_identification",
    "identify",
    "probe_key",
    "probe_ranks",
]

DEFAULT_RANKS = (1, 5, 10)
DEFAULT_FPIRS = (1e-3, 1e-2, 1e-1)


def _labels(labels: Sequence[Any], n: int, what: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{what}: {len(a)} labels for {n} embeddings")
    return a


def _width(x: Any, what: str) -> int:
    shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{what}: expected embeddings of shape (n, d), got {shape}")
    return int(shape[1])


@dataclass
class ProbeRanks:
    """Each probe's search outcome: ``rank`` of its identity (``inf``: not enrolled, or beyond
    the ranks searched), ``genuine`` (its identity's best score; ``-inf`` when unknown),
    ``top`` (the best score of any entry) and ``mated`` (its identity is enrolled)."""

    rank: np.ndarray
    genuine: np.ndarray
    top: np.ndarray
    mated: np.ndarray


def _first_of_each(hit_labels: np.ndarray) -> np.ndarray:
    """``True`` where a row's label appears for the first time in that row (left to right:
    an identity's best entry in a search result)."""
    order = np.argsort(hit_labels, axis=1, kind="stable")
    s = np.take_along_axis(hit_labels, order, axis=1)
    first_sorted = np.ones_like(s, dtype=bool)
    first_sorted[:, 1:] = s[:, 1:] != s[:, :-1]
    first = np.zeros_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


def probe_ranks(
    gallery: Any,
    gallery_labels: Sequence[Any],
    probes: Any,
    probe_labels: Sequence[Any],
    index: SearchIndex,
    max_rank: int = max(DEFAULT_RANKS),
) -> ProbeRanks:
    """Rank each probe's identity among the enrolled identities, up to ``max_rank``.

    ``index`` holds the ``gallery`` rows (labelled ``gallery_labels``). Each mated probe's
    genuine score is computed exactly; the identities above it come from the index's best
    ``max_rank x m`` entries: if all of them score above it, its rank is beyond ``max_rank``.
    """
    gl = _labels(gallery_labels, index.ntotal, "gallery")
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    pl = _labels(probe_labels, len(probes), "probes")
    if _width(probes, "probes") != index.dim:
        raise ValueError(
            f"probes are {probes.shape[1]}-d but the gallery is {index.dim}-d: "
            "embed both with the same model"
        )
    ids, gi = np.unique(gl, return_inverse=True)
    pos = np.minimum(np.searchsorted(ids, pl), len(ids) - 1)
    mated = ids[pos] == pl
    genuine = np.full(len(pl), -np.inf)
    if mated.any():
        genuine[mated] = _genuine_best(gallery, gl, probes[mated], pl[mated])
    k = min(max_rank * int(np.bincount(gi).max()), index.ntotal)
    scores, rows = index.search(probes, k)
    hit = np.where(rows >= 0, gi[np.maximum(rows, 0)], -1)
    own = np.where(mated, pos, -2)[:, None]
    above = (hit >= 0) & (hit != own) & (scores > genuine[:, None]) & _first_of_each(hit)
    rank = 1.0 + above.sum(axis=1)
    # Every searched entry above the genuine score: at least max_rank identities are (rank
    # unknown beyond that) unless the search covered the whole gallery.
    cut_off = (k < index.ntotal) & (scores[:, -1] > genuine)
    rank[cut_off | ~mated] = np.inf
    return ProbeRanks(rank, genuine, scores[:, 0].astype(np.float64), mated)


@dataclass
class IdentificationResult:
    """Closed-set CMC over the mated probes and open-set TPIR over FPIR (with non-mated ones).

    ``cmc[r - 1]``: share of mated probes at rank <= r. ``tpir[fpir]``: ``None`` with
    ``reasons[fpir]`` where too few non-mated probes resolve that FPIR. ``curve``: (FPIR, TPIR)
    points of the open-set curve, thinned.
    """

    n_gallery: int
    n_identities: int
    n_mated: int
    n_nonmated: int
    cmc: list[float]
    tpir: dict[float, float | None] = field(default_factory=dict)
    thresholds: dict[float, float | None] = field(default_factory=dict)
    reasons: dict[float, str] = field(default_factory=dict)
    curve: tuple[list[float], list[float]] = ([], [])
    probes: ProbeRanks | None = field(default=None, repr=False)  # each probe's outcome
    probe_key: str | None = None  # which probes, in which order (:func:`probe_key`)

    def rank(self, r: int) -> float:
        """Share of mated probes whose identity is among the first ``r``."""
        if not 1 <= r <= len(self.cmc):
            raise ValueError(f"rank {r} was not searched (1..{len(self.cmc)})")
        return self.cmc[r - 1]

    def row(self, ranks: Sequence[int] = DEFAULT_RANKS) -> dict[str, float | None]:
        """Paper-style columns: ``rank1``, ``rank5``, ... and ``tpir@fpir=1e-1`` ..."""
        out: dict[str, float | None] = {
            f"rank{r}": self.rank(r) for r in ranks if r <= len(self.cmc)
        }
        out.update({f"tpir@{far_key(fpir)}": v for fpir, v in self.tpir.items()})
        return out

    def to_json(self) -> dict[str, Any]:
        d = {
            k: getattr(self, k)
            for k in ("n_gallery", "n_identities", "n_mated", "n_nonmated", "cmc")
        }
        d["tpir"] = {str(f): v for f, v in self.tpir.items()}
        d["thresholds"] = {str(f): v for f, v in self.thresholds.items()}
        d["reasons"] = {str(f): v for f, v in self.reasons.items()}
        d["curve"] = {"fpir": self.curve[0], "tpir": self.curve[1]}
        if self.probes is not None:  # per probe, so that runs on the same probes pair up
            d["probe_key"] = self.probe_key
            d["probe_rank"] = [int(r) if math.isfinite(r) else None for r in self.probes.rank]
            d["probe_mated"] = self.probes.mated.tolist()
        return d


def probe_key(probes: Sequence[Any], labels: Sequence[Any] = ()) -> str:
    """A short fingerprint of the probes in order (and their labels): two results can be
    compared probe by probe (a paired bootstrap of rank-1) only when their keys match.

    Paths count relative to their common folder, so one set read from two places (``data/x``
    and ``/abs/data/x``) has one key; a set with an unreadable probe skipped has another.
    """
    names = [str(p) for p in probes]
    try:
        root = os.path.commonpath(names) if len(names) > 1 else os.path.dirname(names[0])
        names = [os.path.relpath(n, root) if root else n for n in names]
    except (ValueError, IndexError):  # mixed absolute and relative paths, or none: as they are
        pass
    labs = [str(x) for x in labels] or [""] * len(names)
    if len(labs) != len(names):
        raise ValueError(f"probe_key: {len(labs)} labels for {len(names)} probes")
    h = hashlib.sha1(f"{len(names)}\n".encode())
    for n, lab in zip(names, labs):
        h.update(f"{n}\t{lab}\n".encode())
    return h.hexdigest()[:16]


def _open_set(ranks: ProbeRanks, fpirs: Sequence[float], res: IdentificationResult) -> None:
    """TPIR at each FPIR: positives are mated probes at rank 1 (scored by their genuine score),
    negatives the non-mated probes (by their top score); TPIR divides by all mated probes."""
    hit1 = ranks.mated & (ranks.rank == 1)
    s = np.r_[ranks.genuine[hit1], ranks.top[~ranks.mated]]
    y = np.r_[np.ones(hit1.sum(), bool), np.zeros(res.n_nonmated, bool)]
    sw = _Sweep(s, y)
    for fpir in fpirs:
        if res.n_nonmated * fpir * _FAR_TOL < 1:
            res.tpir[fpir] = res.thresholds[fpir] = None
            res.reasons[fpir] = (
                f"{res.n_nonmated} non-mated probes resolve FPIR down to "
                f"{1 / res.n_nonmated:.2g} only; FPIR {fpir:g} needs at least {math.ceil(1 / fpir)}"
            )
            continue
        cut = _far_cut(sw.fp, sw.n_neg, fpir)
        res.tpir[fpir] = float(sw.tp[cut] / res.n_mated) if cut >= 0 else 0.0
        res.thresholds[fpir] = sw.cut_threshold(cut)
    last = np.searchsorted(sw.fp, np.unique(sw.fp), side="right") - 1  # best TPIR per FPIR
    res.curve = ((sw.fp[last] / sw.n_neg).tolist(), (sw.tp[last] / res.n_mated).tolist())


def _check_closed(ranks: ProbeRanks, probe_labels: Sequence[Any]) -> None:
    if not ranks.mated.all():
        bad = np.asarray(probe_labels)[~ranks.mated]
        raise ValueError(
            f"closed-set identification: {len(bad)} probe(s) of identities with no gallery "
            f"entry (first: {bad.tolist()[0]!r}); enrol them or use open_set=True"
        )


def identify(
    gallery: Any,
    gallery_labels: Sequence[Any],
    probes: Any,
    probe_labels: Sequence[Any],
    open_set: bool = False,
    max_rank: int = max(DEFAULT_RANKS),
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    index: str | SearchIndex = "flat",
    **index_options,
) -> IdentificationResult:
    """Closed-set (and with ``open_set``, open-set) identification of L2-normalised ``probes``
    against the ``gallery`` (rows labelled ``gallery_labels``).

    Closed set: every probe's identity must be enrolled (a ValueError names the first that is
    not). Open set: such probes are the non-mated ones. ``index`` is a kind from
    :data:`fvloss.eval.search.INDEXES` (built here) or a filled :class:`SearchIndex`.
    """
    dim_g, dim_p = _width(gallery, "gallery"), _width(probes, "probes")
    if dim_g != dim_p:
        raise ValueError(
            f"gallery is {dim_g}-d but probes are {dim_p}-d: embed both with one model"
        )
    if len(probes) == 0:
        raise ValueError("no probes to identify")
    idx = index if isinstance(index, SearchIndex) else build_index(gallery, index, **index_options)
    ranks = probe_ranks(gallery, gallery_labels, probes, probe_labels, idx, max_rank)
    if not open_set:
        _check_closed(ranks, probe_labels)
    n_mated = int(ranks.mated.sum())
    if n_mated == 0:
        raise ValueError("no probe's identity is enrolled: nothing to rank")
    rk = ranks.rank[ranks.mated]
    res = IdentificationResult(
        n_gallery=idx.ntotal,
        n_identities=len(np.unique(np.asarray(gallery_labels))),
        n_mated=n_mated,
        n_nonmated=len(ranks.mated) - n_mated,
        cmc=[float(np.mean(rk <= r)) for r in range(1, max_rank + 1)],
        probes=ranks,
    )
    if res.n_nonmated:
        _open_set(ranks, fpirs, res)
    return res


def format_identification(res: IdentificationResult, label: str = "") -> str:
    """One paper-style line: rank-1/5/10 and TPIR@FPIR with the set's sizes."""
    head = f"{label}: " if label else ""
    cols = [f"{k}={'n/a' if v is None else f'{100 * v:.2f}%'}" for k, v in res.row().items()]
    sizes = (
        f"(gallery {res.n_gallery} entries of {res.n_identities} identities; "
        f"{res.n_mated} mated, {res.n_nonmated} non-mated probes)"
    )
    lines = [head + " ".join(cols) + " " + sizes]
    lines += [f"  tpir@fpir={f:g}: {why}" for f, why in res.reasons.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------- distractor scaling


@dataclass
class ScalingPoint:
    """Rank-k of the mated probes with ``distractors`` added, and the search time a query."""

    distractors: int
    cmc: list[float]
    ms_per_query: float

    def rank(self, r: int) -> float:
        return self.cmc[r - 1]


def _genuine_best(gallery: Any, gl: np.ndarray, probes: np.ndarray, pl: np.ndarray) -> np.ndarray:
    """Each probe's best score against its own identity's gallery entries (exact)."""
    out = np.empty(len(pl))
    for label in np.unique(pl):
        p = pl == label
        g = np.asarray(gallery[np.flatnonzero(gl == label)], dtype=np.float32)
        out[p] = (probes[p] @ g.T).max(axis=1)
    return out


def distractor_scaling(
    gallery: Any,
    gallery_labels: Sequence[Any],
    probes: Any,
    probe_labels: Sequence[Any],
    distractors: Any,
    sizes: Sequence[int],
    max_rank: int = max(DEFAULT_RANKS),
    index: str = "flat",
    **index_options,
) -> list[ScalingPoint]:
    """Closed-set CMC of ``probes`` as the first ``n`` rows of ``distractors`` join the gallery,
    for each ``n`` in ``sizes`` (MegaFace Challenge 1's curve).

    ``distractors`` may be a memory-mapped array: it is added in chunks to one growing index.
    A distractor counts as one more identity above a probe when it scores strictly above the
    probe's genuine best score. For ``index="flat"`` the index grows; an approximate kind is
    rebuilt at each size (IVF's cells are trained on the distractors present).
    """
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    gl = _labels(gallery_labels, len(gallery), "gallery")
    pl = _labels(probe_labels, len(probes), "probes")
    enrolled = probe_ranks(gallery, gl, probes, pl, build_index(gallery, "flat"), max_rank)
    _check_closed(enrolled, pl)
    if _width(distractors, "distractors") != probes.shape[1]:
        raise ValueError(
            f"distractors are {np.shape(distractors)[1]}-d but probes are {probes.shape[1]}-d"
        )
    sizes = sorted(set(int(s) for s in sizes))
    if sizes and (sizes[0] < 0 or sizes[-1] > len(distractors)):
        raise ValueError(f"distractor sizes must lie in 0..{len(distractors)}, got {sizes}")
    points: list[ScalingPoint] = []
    grown = INDEXES["flat"](probes.shape[1]) if index == "flat" else None
    for n in sizes:
        extra = np.zeros(len(probes))
        ms = 0.0
        if n > 0:
            if grown is not None:
                grown.add(distractors[grown.ntotal : n])
                idx = grown
            else:
                idx = build_index(distractors[:n], index, **index_options)
            t0 = time.perf_counter()
            scores, _ = idx.search(probes, max_rank)
            ms = 1000 * (time.perf_counter() - t0) / len(probes)
            extra = (scores > enrolled.genuine[:, None]).sum(axis=1)
        rank = np.where(np.isfinite(enrolled.rank), enrolled.rank + extra, np.inf)
        points.append(
            ScalingPoint(n, [float(np.mean(rank <= r)) for r in range(1, max_rank + 1)], ms)
        )
    return points
