"""Face-verification metrics from similarity scores: pure numpy, no torch.

Everything here works on one descending sort of the scores: the ROC curve, its AUC, the
accuracy of every possible threshold and the false accepts below it are cumulative sums over
that order, so a full evaluation of a million pairs costs a sort plus a few passes per fold
(facenet's evaluation instead loops over 400 fixed thresholds per fold).

Conventions:

* higher score = more similar; a pair is predicted "same" when ``score >= threshold``;
* a chosen threshold sits midway between the lowest accepted and the highest rejected score
  of the pairs it was chosen on (``+inf``: accept none, ``-inf``: accept all); among thresholds
  of equal accuracy the highest wins;
* k-fold accuracy chooses the threshold on the other k-1 folds and measures on the held-out
  fold; mean and (population) standard deviation over folds, as LFW's protocol reports them;
* TAR@FAR is the best true-accept rate whose false-accept rate is <= FAR. With ``n`` different
  pairs the smallest non-zero FAR is ``1/n``, so a FAR below it cannot be resolved: the value
  is then ``None`` with a reason rather than a number that silently means "FAR = 0".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DEFAULT_FARS",
    "TarAtFar",
    "VerificationResult",
    "assign_folds",
    "cosine_scores",
    "far_key",
    "format_result",
    "pairs_from_labels",
    "metric_key",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "verify_scores",
]

DEFAULT_FARS = (1e-3, 1e-4)
_FAR_TOL = 1 + 1e-9  # so that FAR = 3/3000 counts as <= 1e-3 despite rounding


def metric_key(far: float) -> str:
    """The one name of a TAR@FAR number everywhere (progress-table columns, ``metrics.json``,
    ``compare.json``): ``tar@1e-3``."""
    return f"tar@{far_key(far)}"


def far_key(far: float) -> str:
    """Short text for a FAR: ``1e-3``, ``5e-4``, ``0.01`` -> ``1e-2``."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


# ----------------------------------------------------------------------------- inputs


def _check_inputs(scores, same) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(same).reshape(-1)
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("same must be boolean or 0/1")
        y = y.astype(bool)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    bad = ~np.isfinite(s)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(s)} scores are NaN or infinite")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(f"need both same and different pairs, got {n_pos} same of {len(y)}")
    return s, y


def assign_folds(same: np.ndarray, n_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Deterministic stratified fold ids for pairs without a fold layout.

    Same and different pairs are shuffled separately (``seed``) and dealt round-robin, so
    every fold gets the same share of each class (to within one pair).
    """
    same = np.asarray(same, dtype=bool).reshape(-1)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(same), dtype=np.int64)
    start = 0
    for cls in (True, False):
        idx = np.flatnonzero(same == cls)
        folds[idx[rng.permutation(len(idx))]] = (np.arange(len(idx)) + start) % n_folds
        start += len(idx)  # continue the deal where the other class stopped: even fold sizes
    return folds


def cosine_scores(embeddings, index) -> np.ndarray:
    """Cosine similarity of the embedding rows named by each ``(a, b)`` in ``index``."""
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
    return np.einsum("ij,ij->i", e[index[:, 0]], e[index[:, 1]])


def pairs_from_labels(labels, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw up to ``n_pairs`` distinct index pairs from identity labels, half same, half different.

    Deterministic for a given ``labels`` array and ``seed``. Returns ``(index (P, 2), same
    (P,))`` with the same-identity pairs first and ``index[:, 0] < index[:, 1]``. A same pair is
    a random sample that has a sibling plus a random sibling; a different pair is two random
    samples of different identities. ``P`` falls short of ``n_pairs`` only when the labels do
    not hold that many distinct pairs of a kind (e.g. every identity has one sample).
    """
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    # Samples grouped by identity: a sibling of ``a`` is a random non-zero offset away.
    by_id = np.argsort(inv, kind="stable")
    first = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.empty(n, dtype=np.int64)
    rank[by_id] = np.arange(n) - first[inv[by_id]]
    eligible = np.flatnonzero(counts[inv] >= 2)
    n_same_max = int((counts * (counts - 1) // 2).sum())
    n_diff_max = n * (n - 1) // 2 - n_same_max

    def draw_same(k: int) -> tuple[np.ndarray, np.ndarray]:
        a = eligible[rng.integers(0, len(eligible), k)]
        c = counts[inv[a]]
        b = by_id[first[inv[a]] + (rank[a] + rng.integers(1, c)) % c]
        return a, b

    def draw_diff(k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = rng.integers(0, n, k), rng.integers(0, n, k)
        keep = inv[a] != inv[b]
        return a[keep], b[keep]

    same_pairs = _distinct_pairs(draw_same, min(n_pairs // 2, n_same_max), n)
    diff_pairs = _distinct_pairs(draw_diff, min(n_pairs - n_pairs // 2, n_diff_max), n)
    index = np.concatenate([same_pairs, diff_pairs])
    same = np.r_[np.ones(len(same_pairs), bool), np.zeros(len(diff_pairs), bool)]
    return index, same


def _distinct_pairs(draw, k: int, n: int, max_rounds: int = 100) -> np.ndarray:
    """Up to ``k`` distinct unordered pairs from repeated calls of ``draw``, in draw order."""
    keys = np.empty(0, dtype=np.int64)
    for _ in range(max_rounds if k > 0 else 0):
        a, b = draw(max(2 * (k - len(keys)), 64))
        new = np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)
        keys = np.concatenate([keys, new])
        _, first_seen = np.unique(keys, return_index=True)
        keys = keys[np.sort(first_seen)]
        if len(keys) >= k:
            break
    keys = keys[:k]
    return np.stack([keys // n, keys % n], axis=1)


# ----------------------------------------------------------------------------- the sweep


def _midpoint(hi: float, lo: float) -> float:
    """A threshold strictly between two scores ``hi > lo`` (``>= t`` accepts hi, rejects lo)."""
    mid = 0.5 * (hi + lo)
    return float(mid if lo < mid <= hi else hi)  # adjacent floats: the mean may round to lo


class _Sweep:
    """The scores sorted once (descending) and cut into runs of equal score.

    Every threshold sits between two runs, so the cumulative counts at run ends give the
    true and false accepts of every possible threshold at once.
    """

    def __init__(self, s: np.ndarray, y: np.ndarray, folds: np.ndarray | None = None):
        order = np.argsort(-s)  # order within a run of equal scores does not matter
        ss, self.y = s[order], y[order]
        self.last = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])  # last pair of each run
        self.s_run = ss[self.last]
        self.neg_s_run = -self.s_run  # ascending, for searchsorted
        self.tp = np.cumsum(self.y)[self.last]  # same pairs with score >= s_run[m]
        self.fp = (self.last + 1) - self.tp
        self.n_pos, self.n_neg = int(self.tp[-1]), int(self.fp[-1])
        self.folds = None if folds is None else folds[order]

    def roc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fpr = np.r_[0.0, self.fp / self.n_neg]
        tpr = np.r_[0.0, self.tp / self.n_pos]
        return fpr, tpr, np.r_[np.inf, self.s_run]

    def auc(self) -> float:
        # Trapezoids in integer counts: exact up to the final division, ties included.
        tp = np.r_[0, self.tp]
        area = np.dot(np.diff(np.r_[0, self.fp]), tp[1:] + tp[:-1])
        return float(area) / (2.0 * self.n_pos * self.n_neg)

    def cut_threshold(self, m: int, has: np.ndarray | None = None) -> float:
        """Threshold accepting the pairs of runs ``0..m`` (``m = -1``: none).

        ``has[r]`` says run ``r`` holds a pair of the set the threshold is chosen on (a
        training set); the threshold sits midway between that set's lowest accepted and
        highest rejected score.
        """
        if m < 0:
            return math.inf
        if has is None:
            lo = m + 1 if m + 1 < len(self.s_run) else -1
            return -math.inf if lo < 0 else _midpoint(self.s_run[m], self.s_run[lo])
        head = has[m::-1]
        k = int(np.argmax(head))
        if not head[k]:
            return math.inf
        hi = m - k
        tail = has[m + 1 :]
        k = int(np.argmax(tail)) if len(tail) else 0
        if not len(tail) or not tail[k]:
            return -math.inf
        return _midpoint(self.s_run[hi], self.s_run[m + 1 + k])

    def counts_at(self, t: float, tp: np.ndarray, fp: np.ndarray) -> tuple[int, int]:
        """(true, false) accepts at threshold ``t`` from cumulative counts over runs."""
        r = int(np.searchsorted(self.neg_s_run, -t, side="right"))  # runs with s_run >= t
        return (int(tp[r - 1]), int(fp[r - 1])) if r else (0, 0)


def _best_cut(tp: np.ndarray, fp: np.ndarray) -> int:
    """Cut of highest accuracy (first = highest threshold on ties); -1 = accept none.

    Accuracy after run m is (tp + n_neg - fp) / n, so it is enough to maximise tp - fp,
    which is 0 for the cut that accepts nothing.
    """
    gain = tp - fp
    m = int(np.argmax(gain))
    return m if gain[m] > 0 else -1


def _far_cut(fp: np.ndarray, n_neg: int, far: float) -> int:
    """Lowest cut (most accepts) whose false accepts stay within ``far * n_neg``."""
    return int(np.searchsorted(fp, far * n_neg * _FAR_TOL, side="right")) - 1


# ----------------------------------------------------------------------------- results


@dataclass
class TarAtFar:
    """True-accept rate at a false-accept rate, on all pairs and by k-fold.

    ``tar``/``threshold``: the best TAR over all pairs with FAR <= ``far`` (``None`` with
    ``reason`` when there are too few different pairs). ``kfold_*``: the threshold is chosen on
    k-1 folds (FAR <= ``far`` there), TAR and FAR are measured on the held-out fold (facenet's
    "validation rate"); ``None`` with ``kfold_reason`` when some fold's other folds hold too
    few different pairs.
    """

    far: float
    tar: float | None
    threshold: float | None
    reason: str | None = None
    kfold_tar_mean: float | None = None
    kfold_tar_std: float | None = None
    kfold_far_mean: float | None = None
    kfold_reason: str | None = None


@dataclass
class VerificationResult:
    """All verification numbers for one pair set (see the module docstring for conventions)."""

    n_pairs: int
    n_same: int
    n_different: int
    auc: float
    acc_mean: float  # k-fold accuracy, threshold chosen on the other folds
    acc_std: float
    fold_acc: list[float]
    fold_thresholds: list[float]
    n_folds: int
    folds_from: str  # "file" or "assigned (seed S)"
    threshold: float  # the most accurate threshold on all pairs
    acc_at_threshold: float  # its accuracy on those same pairs (optimistic)
    eer: float
    tar_at_far: dict[float, TarAtFar]
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    roc_thresholds: np.ndarray = field(repr=False)
    n_skipped: int = 0
    skipped: list[str] = field(default_factory=list, repr=False)

    def scalars(self) -> dict[str, float]:
        """Flat numbers for tables and training logs; an unresolved TAR is NaN."""
        out = {
            "auc": self.auc,
            "acc": self.acc_mean,
            "acc_std": self.acc_std,
            "eer": self.eer,
            "threshold": self.threshold,
        }
        for far, t in self.tar_at_far.items():
            out[metric_key(far)] = math.nan if t.tar is None else t.tar
        return out

    def to_dict(self, max_roc_points: int = 1000) -> dict:
        """JSON-ready dict (infinities become ``None``); the ROC is thinned to ~``max_roc_points``."""
        keep = _thin_roc(self.fpr, self.tpr, max_roc_points)
        return {
            "n_pairs": self.n_pairs,
            "n_same": self.n_same,
            "n_different": self.n_different,
            "n_skipped": self.n_skipped,
            "skipped": self.skipped[:100],
            "auc": self.auc,
            "acc_mean": self.acc_mean,
            "acc_std": self.acc_std,
            "n_folds": self.n_folds,
            "folds_from": self.folds_from,
            "fold_acc": self.fold_acc,
            "fold_thresholds": [_finite(t) for t in self.fold_thresholds],
            "threshold": _finite(self.threshold),
            "acc_at_threshold": self.acc_at_threshold,
            "eer": self.eer,
            "tar_at_far": {
                far_key(far): {k: _finite(v) for k, v in vars(t).items()}
                for far, t in self.tar_at_far.items()
            },
            "roc": {
                "fpr": self.fpr[keep].tolist(),
                "tpr": self.tpr[keep].tolist(),
                "thresholds": [_finite(t) for t in self.roc_thresholds[keep].tolist()],
            },
        }


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _thin_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ~``max_points`` ROC points that keep the curve's shape.

    Points are taken at even steps of path length (so steep and flat parts both keep
    detail), plus the first point at or beyond each decade of FPR for log-scale plots.
    """
    n = len(fpr)
    if n <= max_points:
        return np.arange(n)
    path = np.r_[0.0, np.cumsum(np.abs(np.diff(fpr)) + np.abs(np.diff(tpr)))]
    steps = np.searchsorted(path, np.linspace(0.0, path[-1], max_points))
    decades = np.searchsorted(fpr, np.logspace(-6, 0, 25))
    return np.unique(np.clip(np.r_[0, steps, decades, n - 1], 0, n - 1))


# ----------------------------------------------------------------------------- entry point


def roc_curve(scores, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` at every distinct score, from (0, 0) at ``+inf``.

    The same points as ``sklearn.metrics.roc_curve(same, scores, drop_intermediate=False)``.
    """
    return _Sweep(*_check_inputs(scores, same)).roc()


def roc_auc(scores, same) -> float:
    """Area under the ROC curve (ties count one half, as in ``roc_auc_score``)."""
    return _Sweep(*_check_inputs(scores, same)).auc()


def _tar_entry(sw: _Sweep, far: float) -> TarAtFar:
    """TAR@FAR over all pairs of a sweep; ``None`` with the reason below the resolvable FAR."""
    if sw.n_neg * far * _FAR_TOL < 1:
        return TarAtFar(
            far,
            None,
            None,
            reason=f"{sw.n_neg} different pairs resolve FAR down to {1 / sw.n_neg:.2g} only; "
            f"FAR {far_key(far)} needs at least {math.ceil(1 / far)}",
        )
    cut = _far_cut(sw.fp, sw.n_neg, far)
    return TarAtFar(
        far,
        tar=float(sw.tp[cut] / sw.n_pos) if cut >= 0 else 0.0,
        threshold=sw.cut_threshold(cut),
    )


def tar_at_far(scores, same, fars: Sequence[float] = DEFAULT_FARS) -> dict[float, TarAtFar]:
    """The best TAR whose FAR is <= each of ``fars``, over all pairs (no folds: IJB's 1:1
    protocol), with the threshold that gives it; ``None`` with a reason where too few different
    pairs resolve the FAR."""
    sw = _Sweep(*_check_inputs(scores, same))
    return {far: _tar_entry(sw, far) for far in fars}


def _eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where FPR = 1 - TPR, linear between the two ROC points around it."""
    d = fpr - (1.0 - tpr)  # rises from -1 at (0, 0) to +1 at (1, 1)
    i = int(np.argmax(d >= 0))
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def verify_scores(
    scores,
    same,
    folds=None,
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
    seed: int = 0,
    skipped: Sequence[str] = (),
) -> VerificationResult:
    """All verification metrics for similarity ``scores`` of pairs labelled ``same``.

    ``folds`` gives a fold id per pair (e.g. LFW View 2's layout); without it ``n_folds``
    stratified folds are assigned with ``seed``. ``skipped`` lists pairs that could not be
    scored, carried into the result so that reports show them.
    """
    s, y = _check_inputs(scores, same)
    if folds is None:
        if n_folds < 2:
            raise ValueError("k-fold accuracy needs n_folds >= 2")
        fold_ids, folds_from = assign_folds(y, n_folds, seed), f"assigned (seed {seed})"
    else:
        folds = np.asarray(folds).reshape(-1)
        if len(folds) != len(s):
            raise ValueError(f"{len(folds)} fold ids for {len(s)} pairs")
        _, fold_ids = np.unique(folds, return_inverse=True)
        folds_from = "file"
    k = int(fold_ids.max()) + 1
    if k < 2:
        raise ValueError("k-fold accuracy needs at least 2 folds, the fold ids name one")
    sw = _Sweep(s, y, fold_ids)
    fpr, tpr, thresholds = sw.roc()

    fold_acc, fold_thr = [], []
    tar_folds: dict[float, list[tuple[float, float]]] = {far: [] for far in fars}
    short: dict[float, str] = {}
    for g in range(k):
        in_g = sw.folds == g
        n_g = np.cumsum(in_g)[sw.last]
        if n_g[-1] == 0:
            continue
        tp_g = np.cumsum(sw.y & in_g)[sw.last]
        fp_g = n_g - tp_g
        pos_g, neg_g = int(tp_g[-1]), int(fp_g[-1])
        tp_tr, fp_tr = sw.tp - tp_g, sw.fp - fp_g  # the other folds
        neg_tr = sw.n_neg - neg_g
        has_tr = np.diff(np.r_[0, (sw.last + 1) - n_g]) > 0  # run holds a pair of the other folds

        t = sw.cut_threshold(_best_cut(tp_tr, fp_tr), has_tr)
        ta, fa = sw.counts_at(t, tp_g, fp_g)
        fold_acc.append((ta + neg_g - fa) / (pos_g + neg_g))
        fold_thr.append(t)

        for far in fars:
            if neg_tr * far * _FAR_TOL < 1:
                short.setdefault(
                    far,
                    f"the folds other than fold {g + 1} hold {neg_tr} different pairs; "
                    f"FAR {far_key(far)} needs at least {math.ceil(1 / far)}",
                )
                continue
            if pos_g == 0 or neg_g == 0:
                continue
            t = sw.cut_threshold(_far_cut(fp_tr, neg_tr, far), has_tr)
            ta, fa = sw.counts_at(t, tp_g, fp_g)
            tar_folds[far].append((ta / pos_g, fa / neg_g))

    m = _best_cut(sw.tp, sw.fp)
    best_t = sw.cut_threshold(m)
    ta, fa = sw.counts_at(best_t, sw.tp, sw.fp)
    n = len(s)

    tar_at_far = {}
    for far in fars:
        entry = _tar_entry(sw, far)
        if far in short:
            entry.kfold_reason = short[far]
        elif tar_folds[far]:
            tars, fars_measured = np.array(tar_folds[far]).T
            entry.kfold_tar_mean = float(tars.mean())
            entry.kfold_tar_std = float(tars.std())
            entry.kfold_far_mean = float(fars_measured.mean())
        tar_at_far[far] = entry

    acc = np.array(fold_acc)
    return VerificationResult(
        n_pairs=n,
        n_same=sw.n_pos,
        n_different=sw.n_neg,
        auc=sw.auc(),
        acc_mean=float(acc.mean()),
        acc_std=float(acc.std()),
        fold_acc=acc.tolist(),
        fold_thresholds=fold_thr,
        n_folds=len(fold_acc),
        folds_from=folds_from,
        threshold=best_t,
        acc_at_threshold=(ta + sw.n_neg - fa) / n,
        eer=_eer(fpr, tpr),
        tar_at_far=tar_at_far,
        fpr=fpr,
        tpr=tpr,
        roc_thresholds=thresholds,
        n_skipped=len(skipped),
        skipped=list(skipped),
    )


def format_result(r: VerificationResult, title: str = "") -> str:
    """A short plain-text table of ``r``."""
    rows = [
        (
            "pairs",
            f"{r.n_pairs} ({r.n_same} same, {r.n_different} different), {r.n_skipped} skipped",
        ),
        ("ROC AUC", f"{r.auc:.4f}"),
        (
            "accuracy",
            f"{r.acc_mean:.4f} +- {r.acc_std:.4f} ({r.n_folds}-fold, folds {r.folds_from})",
        ),
        ("EER", f"{r.eer:.4f}"),
        ("threshold", f"{r.threshold:.4f} (accuracy {r.acc_at_threshold:.4f} on all pairs)"),
    ]
    for far, t in r.tar_at_far.items():
        value = f"{t.tar:.4f}" if t.tar is not None else f"n/a ({t.reason})"
        if t.kfold_tar_mean is not None:
            value += f"; k-fold {t.kfold_tar_mean:.4f} +- {t.kfold_tar_std:.4f}"
        rows.append((f"TAR@FAR={far_key(far)}", value))
    width = max(len(k) for k, _ in rows)
    lines = [title] if title else []
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
