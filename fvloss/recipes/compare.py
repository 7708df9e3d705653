"""``fvloss compare RUN [RUN ...]``: trained runs side by side on one pair protocol.

With ``--pairs FILE --root DIR`` every run is measured on the same pairs: its per-pair scores
come from ``RUN/verify/<pairs-stem>.scores.npz`` when that file was made on this very pair set
(same images, labels and folds: :func:`fvloss.evaluate.pairs_digest`), with the same ``--flip``
and after the run's weights were last written; otherwise the run is scored now and the verify
outputs are written into its folder, so a rerun is cheap. The tool writes

* ``OUT/compare.md`` (also printed): one table of the runs (AUC, k-fold accuracy +- std,
  TAR@FAR=1e-3, EER, epochs, training time, images/s), a table of AUC differences with paired
  bootstrap confidence intervals, the pair file and the exact command line;
* ``OUT/roc.png``: the runs' ROC curves overlaid, AUCs in the legend;
* ``OUT/compare.json``: the same numbers for scripts.

Without ``--pairs`` the table comes from each run's ``metrics.json`` (its last epoch on pairs
drawn from its own validation identities): no ROC overlay and no bootstrap, since those need
per-pair scores on one shared pair set.

The bootstrap is paired: each resample draws the pair indices with replacement once and every
run is measured on that same resample, so what varies between runs is the model, not the luck of
the draw. Same and different pairs are drawn separately (a protocol fixes how many of each it
holds). AUCs of all resamples come from one sort per run (:func:`weighted_auc`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..pairs import PairFileError, PairSet, add_pair_options, read_pairs
from ..verify import VerificationResult, far_key, plot_roc, roc_auc, verify_scores

__all__ = [
    "AucDiff",
    "BootstrapResult",
    "RunScores",
    "bootstrap_weights",
    "choose_comparisons",
    "load_scores",
    "main",
    "paired_bootstrap",
    "weighted_auc",
]

TABLE_FAR = 1e-3
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
class AucDiff:
    """``AUC[a] - AUC[b]`` on the pairs, and its bootstrap distribution summarised."""

    a: int
    b: int
    diff: float
    ci_low: float
    ci_high: float
    p_le_0: float  # share of resamples with AUC[a] - AUC[b] <= 0: a one-sided p-value
    n_le_0: int

    @property
    def verdict(self) -> int:
        """+1: ``a`` better (the interval lies above 0), -1: ``b`` better, 0: cannot tell."""
        return 1 if self.ci_low > 0 else -1 if self.ci_high < 0 else 0


@dataclass
class BootstrapResult:
    """All of a paired bootstrap: ``aucs[r, b]`` is run ``r``'s AUC on resample ``b``."""

    n_boot: int
    seed: int
    level: float
    observed: np.ndarray  # (R,) AUC on the pairs as they are
    aucs: np.ndarray = field(repr=False)  # (R, n_boot)
    diffs: list[AucDiff] = field(default_factory=list)

    def auc_ci(self, r: int) -> tuple[float, float]:
        """Percentile interval of run ``r``'s AUC."""
        lo, hi = _percentiles(self.aucs[r], self.level)
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
    diffs = []
    for a, b in comparisons:
        d = aucs[a] - aucs[b]
        lo, hi = _percentiles(d, level)
        n_le = int((d <= 0).sum())
        diffs.append(AucDiff(a, b, float(observed[a] - observed[b]), lo, hi, n_le / n_boot, n_le))
    return BootstrapResult(n_boot, seed, level, observed, aucs, diffs)


# ----------------------------------------------------------------------------- run scores


@dataclass
class RunScores:
    """One run's per-pair scores on a pair set, and where they came from."""

    scores: np.ndarray
    same: np.ndarray
    folds: np.ndarray | None
    digest: str
    source: str


def _weights_file(run_dir: Path) -> Path | None:
    """The weights :func:`fvloss.runs.load_run` would read, if any."""
    for p in (run_dir / "model.pth", run_dir / "checkpoints" / "last.pth"):
        if p.is_file():
            return p
    return None


def load_scores(
    path: str | Path,
    digest: str | None = None,
    flip: bool | None = None,
    not_before: float | None = None,
) -> tuple[RunScores | None, str]:
    """Read a ``.scores.npz`` written by :func:`fvloss.evaluate.write_outputs`.

    Returns ``(scores, "")``, or ``(None, why)`` when the file is absent or unreadable, was
    made on other pairs than ``digest``, with another ``flip`` setting, or before the time
    ``not_before`` (the weights' modification time: the run has changed since).
    """
    path = Path(path)
    if not path.is_file():
        return None, "no cached scores"
    try:
        with np.load(path, allow_pickle=False) as z:
            scores = np.asarray(z["scores"], dtype=np.float64)
            same = np.asarray(z["same"], dtype=bool)
            folds = np.asarray(z["folds"], dtype=np.int64)
            file_digest = str(z["pairs_sha1"])
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    except (OSError, KeyError, ValueError) as e:
        return None, f"cached scores unreadable ({e})"
    if len(scores) != len(same) or (len(folds) and len(folds) != len(same)):
        return None, "cached scores malformed (array lengths differ)"
    if digest is not None and file_digest != digest:
        return None, "cached scores were made on other pairs"
    if flip is not None and bool(meta.get("flip", False)) != flip:
        return None, f"cached scores were made {'without' if flip else 'with'} --flip"
    if not_before is not None and path.stat().st_mtime < not_before:
        return None, "cached scores are older than the run's weights"
    source = f"cached {path.parent.name}/{path.name}"
    return RunScores(scores, same, folds if len(folds) else None, file_digest, source), ""


def _score_run(run_dir: Path, pairs: PairSet, stem: str, args: argparse.Namespace) -> RunScores:
    """Score ``pairs`` with the run's weights; write ``RUN/verify/<stem>.*`` like fvloss verify."""
    from ..evaluate import pairs_digest, score_pairs, write_outputs
    from ..runs import load_run  # torch and the model code, only when something must be scored

    run = load_run(run_dir, device=args.device)
    t0 = time.perf_counter()
    scores, kept = score_pairs(
        run.model,
        pairs,
        run.eval_transform,
        batch_size=args.batch_size,
        flip=args.flip,
        num_workers=args.num_workers,
        skip_missing=args.skip_missing,
    )
    seconds = time.perf_counter() - t0
    result = verify_scores(scores, kept.same, kept.folds, args.folds, skipped=kept.skipped)
    meta = {
        "run": str(run_dir),
        "pairs": str(args.pairs),
        "root": str(args.root or args.pairs.parent),
        "format": pairs.format,
        "flip": args.flip,
        "seconds": round(seconds, 3),
        "by": "fvloss compare",
    }
    write_outputs(result, run_dir / "verify", stem, meta, run_dir.name, scores, kept)
    return RunScores(
        scores, kept.same, kept.folds, pairs_digest(kept), f"scored now ({seconds:.1f} s)"
    )


# ----------------------------------------------------------------------------- one table row


@dataclass
class _Row:
    path: Path
    label: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    result: VerificationResult | None = None
    scores: RunScores | None = None

    @property
    def loss(self) -> str:
        return str(self.metrics.get("loss") or self.config.get("loss") or "?")

    def numbers(self) -> dict[str, Any]:
        """The table's numbers (None where unknown) and the reason for a missing TAR."""
        m = self.metrics
        out: dict[str, Any] = {
            "epochs": m.get("epochs", self.config.get("epochs")),
            "train_time_s": m.get("train_time_s"),
            "images_per_s": m.get("images_per_s"),
        }
        key = f"tar@far={far_key(TABLE_FAR)}"
        if self.result is not None:
            r = self.result
            tar = r.tar_at_far.get(TABLE_FAR)
            out |= {
                "auc": r.auc,
                "acc": r.acc_mean,
                "acc_std": r.acc_std,
                "n_folds": r.n_folds,
                key: tar.tar if tar else None,
                "tar_reason": tar.reason if tar else "not computed",
                "eer": r.eer,
            }
            return out
        final = m.get("final") or {}
        tar = _finite(final.get(f"tar@{far_key(TABLE_FAR)}"))
        reason = None
        if tar is None:
            n = self.config.get("val_pairs")
            reason = (
                f"not resolvable on the run's {n} validation pairs (about {n // 2} different; "
                f"FAR {far_key(TABLE_FAR)} needs at least {math.ceil(1 / TABLE_FAR)})"
                if isinstance(n, int) and n // 2 < math.ceil(1 / TABLE_FAR)
                else "not in metrics.json"
                if not final
                else "NaN in metrics.json"
            )
        out |= {
            "auc": _finite(final.get("auc")),
            "acc": _finite(final.get("acc")),
            "acc_std": None,  # metrics.json keeps the k-fold mean only
            "n_folds": 10,
            key: tar,
            "tar_reason": reason,
            "eer": _finite(final.get("eer")),
        }
        return out


def _finite(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _labels(runs: Sequence[Path], metrics: Sequence[dict], configs: Sequence[dict]) -> list[str]:
    """``name`` (else ``loss``) from metrics.json/config.json, else the folder name; where two
    runs would share a label (two softmax runs) the folder names tell them apart."""
    base = [
        str(m.get("name") or c.get("name") or m.get("loss") or c.get("loss") or p.name)
        for p, m, c in zip(runs, metrics, configs)
    ]
    labels = [b if base.count(b) == 1 else p.name for b, p in zip(base, runs)]
    seen: dict[str, int] = {}
    for k, lab in enumerate(labels):  # the same folder name under two parents
        if labels.count(lab) > 1:
            seen[lab] = seen.get(lab, 0) + 1
            labels[k] = f"{lab} #{seen[lab]}"
    return labels


# ----------------------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _f4(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _table(rows: Sequence[_Row], notes: list[str]) -> list[str]:
    """The runs table; reasons for n/a cells are appended to ``notes`` as footnotes."""
    nums = [r.numbers() for r in rows]
    k = nums[0]["n_folds"] if nums else 10
    far = far_key(TABLE_FAR)
    lines = [
        f"| run | loss | AUC | {k}-fold acc | TAR@FAR={far} | EER | epochs | training (min) "
        "| images/s |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row, n in zip(rows, nums):
        acc = _f4(n["acc"])
        if n["acc"] is not None:
            acc += f" ± {n['acc_std']:.4f}" if n["acc_std"] is not None else " ± n/a"
        tar = n[f"tar@far={far}"]
        if tar is None:
            reason = n["tar_reason"] or "unknown"
            if reason not in notes:
                notes.append(reason)
            tar_cell = f"n/a [{notes.index(reason) + 1}]"
        else:
            tar_cell = f"{tar:.4f}"
        t = n["train_time_s"]
        ips = n["images_per_s"]
        cells = [
            _md(row.label),
            _md(row.loss),
            _f4(n["auc"]),
            acc,
            tar_cell,
            _f4(n["eer"]),
            "n/a" if n["epochs"] is None else str(n["epochs"]),
            "n/a" if t is None else f"{t / 60:.1f}" if t >= 60 else f"{t / 60:.2f}",
            "n/a" if ips is None else f"{ips:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _p_text(d: AucDiff, n_boot: int) -> str:
    # 0 of B resamples is not p = 0: the bootstrap cannot resolve below 1/B.
    return f"< {1 / n_boot:.4f}" if d.n_le_0 == 0 else f"{d.p_le_0:.4f}"


def _bootstrap_lines(boot: BootstrapResult, labels: Sequence[str], all_pairs: bool) -> list[str]:
    pct = f"{100 * boot.level:g}%"
    how = (
        "every pair of runs, the higher observed AUC first"
        if all_pairs
        else f"each run against the baseline `{_md(labels[0])}` (more than {MAX_ALL_PAIRS} runs)"
    )
    lines = [
        f"## AUC differences (paired bootstrap, {boot.n_boot} resamples, seed {boot.seed})",
        "",
        "Each resample draws the pairs with replacement (same and different pairs separately, "
        "as the protocol fixes their numbers) and scores every run on it. ΔAUC = A − B on the "
        f"pairs as they are; {pct} percentile interval of the resampled differences; "
        "P(Δ* ≤ 0) = share of resamples where A is not better (one-sided bootstrap p-value). "
        f"Comparisons: {how}.",
        "",
        f"| A − B | ΔAUC | {pct} CI | P(Δ* ≤ 0) | reading |",
        "|:--|--:|:--:|--:|:--|",
    ]
    for d in boot.diffs:
        a, b = _md(labels[d.a]), _md(labels[d.b])
        reading = {1: f"{a} better", -1: f"{b} better", 0: "no clear difference"}[d.verdict]
        lines.append(
            f"| {a} − {b} | {d.diff:+.4f} | [{d.ci_low:+.4f}, {d.ci_high:+.4f}] "
            f"| {_p_text(d, boot.n_boot)} | {reading} |"
        )
    lines += [
        "",
        "Pairs that share an image are not independent; resampling pairs treats them as if they "
        "were, so these intervals are, if anything, a little narrow.",
    ]
    return lines


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fvloss compare",
        description="Put trained runs side by side: one Markdown table (AUC, k-fold accuracy, "
        "TAR@FAR, EER, training time), their ROC curves overlaid, and paired bootstrap "
        "confidence intervals on the AUC differences. Writes OUT/compare.md, roc.png and "
        "compare.json.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders")
    p.add_argument(
        "--pairs",
        type=Path,
        help="pair file scored by every run; without it: each run's metrics.json (table only)",
    )
    add_pair_options(p)
    p.add_argument("--out", type=Path, help="output folder (default: runs/compare-<pairs-stem>)")
    p.add_argument(
        "--bootstrap", type=int, default=2000, metavar="B", help="resamples (0: no bootstrap)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--labels", help="comma-separated run labels, in the order of the runs")
    p.add_argument(
        "--rescore", action="store_true", help="score every run again, ignoring cached scores"
    )
    p.add_argument(
        "--folds", type=int, default=10, help="folds when the pair file defines none (default 10)"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    return p


def _fail(message: str, code: int) -> int:
    print(f"fvloss compare: {message}", file=sys.stderr)
    return code


def _log(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)  # stdout is the Markdown


def _json_ready(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_ready(x) for x in v]
    if isinstance(v, np.generic):
        return _json_ready(v.item())
    return v


def main(argv: list[str] | None = None) -> int:
    """``fvloss compare``: 0 on success, 2 for bad input, 1 for unreadable images."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    command = shlex.join(["fvloss", "compare", *argv])
    for run in args.runs:
        if not run.is_dir():
            return _fail(f"run folder not found: {run}", 2)
    if args.bootstrap < 0:
        return _fail("--bootstrap must be >= 0", 2)
    metrics = [_read_json(r / "metrics.json") for r in args.runs]
    configs = [_read_json(r / "config.json") for r in args.runs]
    if args.labels is None:
        labels = _labels(args.runs, metrics, configs)
    else:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.runs) or len(set(labels)) != len(labels) or "" in labels:
            n = len(args.runs)
            return _fail(f"--labels needs {n} distinct names, got {args.labels!r}", 2)
    rows = [_Row(p, lab, m, c) for p, lab, m, c in zip(args.runs, labels, metrics, configs)]
    out = args.out or Path("runs") / f"compare-{args.pairs.stem if args.pairs else 'metrics'}"

    boot: BootstrapResult | None = None
    if args.pairs is None:
        title = f"# fvloss compare: {len(rows)} runs, their own validation numbers"
        body = _metrics_report(rows)
        doc: dict[str, Any] = {"mode": "metrics.json", "pairs": None, "bootstrap": None}
    else:
        title = f"# fvloss compare: {len(rows)} runs on `{args.pairs.name}`"
        made = _pairs_report(rows, args, out)
        if isinstance(made, int):
            return made
        body, doc, boot = made

    md = [title, "", *body, "", "Runs:", ""]
    for r in rows:
        where = f" — scores: {r.scores.source}" if r.scores else ""
        md.append(f"- `{_md(r.label)}`: `{r.path}`{where}")
    md += ["", f"Command (in `{os.getcwd()}`):", "", "```", command, "```", ""]
    text = "\n".join(md)

    doc = {"command": command, "cwd": os.getcwd(), **doc}
    doc["runs"] = [
        {
            "label": r.label,
            "run": str(r.path),
            "loss": r.loss,
            "scores": r.scores.source if r.scores else "metrics.json",
            **r.numbers(),
            **({"auc_ci": list(boot.auc_ci(k))} if boot is not None else {}),
        }
        for k, r in enumerate(rows)
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text)
    names = ["compare.md", *(["roc.png"] if args.pairs else []), "compare.json"]
    doc["outputs"] = [str(out / n) for n in names]
    text_json = json.dumps(_json_ready(doc), indent=1, allow_nan=False)
    (out / "compare.json").write_text(text_json + "\n")
    print(text)
    _log(f"wrote {', '.join(doc['outputs'])}")
    return 0


def _footnotes(notes: Sequence[str]) -> list[str]:
    return ["", *(f"[{k}] {n}" for k, n in enumerate(notes, 1))] if notes else []


def _metrics_report(rows: Sequence[_Row]) -> list[str]:
    """Table and notes from each run's ``metrics.json`` (no shared pairs)."""
    notes: list[str] = []
    lines = [*_table(rows, notes), *_footnotes(notes), ""]
    lines.append(
        "Numbers from each run's `metrics.json`: its last epoch, on pairs drawn from its own "
        "held-out validation identities (the k-fold std is not stored there). No ROC overlay and "
        "no bootstrap: they need per-pair scores of every run on one shared pair set; pass "
        "`--pairs FILE --root DIR`."
    )
    keys = ("data", "seed", "valid_pct", "val_pairs")
    setups = {tuple(str(r.config.get(k)) for k in keys) for r in rows}
    if len(setups) > 1:
        differ = [k for i, k in enumerate(keys) if len({s[i] for s in setups}) > 1]
        lines += [
            "",
            f"**Warning:** these runs differ in {', '.join(differ)}, so they were validated on "
            "different pairs: their numbers do not compare directly.",
        ]
    return lines


def _pairs_report(
    rows: Sequence[_Row], args: argparse.Namespace, out: Path
) -> tuple[list[str], dict[str, Any], BootstrapResult | None] | int:
    """Score (or reuse) every run on the pair file; table, ROC figure, bootstrap. Or an exit
    code."""
    try:
        pairs = read_pairs(args.pairs, args.root, args.format, args.skip_missing)
    except (PairFileError, ValueError) as e:
        return _fail(str(e), 2)
    code = _collect_scores(rows, pairs, args)
    if code:
        return code
    first = rows[0].scores
    if any(r.scores.digest != first.digest for r in rows):
        return _fail("the runs were scored on different pairs (different unreadable images?)", 2)
    for r in rows:
        s = r.scores
        r.result = verify_scores(s.scores, s.same, s.folds, args.folds)
    res = rows[0].result
    notes: list[str] = []
    lines = [*_table(rows, notes), *_footnotes(notes), ""]
    root = args.root or args.pairs.parent
    skipped = pairs.n_skipped + len(pairs) - res.n_pairs  # at reading + unreadable at scoring
    lines.append(
        f"Pairs: `{args.pairs}` ({pairs.format}, images under `{root}`): {res.n_pairs} pairs "
        f"({res.n_same} same, {res.n_different} different"
        + (f"; {skipped} of the file's pairs skipped" if skipped else "")
        + f"), {res.n_folds} folds {'from the file' if res.folds_from == 'file' else res.folds_from}"
        + f"; flip TTA {'on' if args.flip else 'off'}."
    )
    roc = plot_roc(
        {r.label: r.result for r in rows},
        out / "roc.png",
        title=f"{args.pairs.name}: {res.n_pairs} pairs",
    )
    lines += ["", f"ROC curves: `{roc.name}`.", ""]
    labels = [r.label for r in rows]
    boot = None
    if len(rows) < 2:
        lines.append("No bootstrap: it compares two or more runs.")
    elif args.bootstrap == 0:
        lines.append("No bootstrap (`--bootstrap 0`).")
    else:
        t0 = time.perf_counter()
        boot = paired_bootstrap(
            [r.scores.scores for r in rows], first.same, n_boot=args.bootstrap, seed=args.seed
        )
        _log(f"bootstrap: {args.bootstrap} resamples in {time.perf_counter() - t0:.2f} s")
        lines += _bootstrap_lines(boot, labels, len(rows) <= MAX_ALL_PAIRS)
    doc: dict[str, Any] = {
        "mode": "pairs",
        "pairs": {
            "file": str(args.pairs),
            "root": str(root),
            "format": pairs.format,
            "n_pairs": res.n_pairs,
            "n_same": res.n_same,
            "n_different": res.n_different,
            "n_skipped": skipped,
            "folds_from": res.folds_from,
            "sha1": first.digest,
            "flip": args.flip,
        },
        "bootstrap": None,
    }
    if boot is not None:
        doc["bootstrap"] = {
            "n_boot": boot.n_boot,
            "seed": boot.seed,
            "level": boot.level,
            "scheme": "paired; same and different pairs resampled separately",
            "comparisons": [
                {
                    "a": labels[d.a],
                    "b": labels[d.b],
                    "diff": d.diff,
                    "ci": [d.ci_low, d.ci_high],
                    "p_le_0": d.p_le_0,
                    "better": {1: labels[d.a], -1: labels[d.b], 0: None}[d.verdict],
                }
                for d in boot.diffs
            ],
        }
    return lines, doc, boot


def _collect_scores(rows: Sequence[_Row], pairs: PairSet, args: argparse.Namespace) -> int:
    """Fill ``row.scores`` from each run's cached scores or by scoring it; 0 or an exit code."""
    from ..evaluate import pairs_digest  # imports torch: only once pairs are to be compared
    from ..imageio import ImageReadError

    digest = pairs_digest(pairs)
    stem = args.pairs.stem
    for r in rows:
        weights = _weights_file(r.path)
        cached, why = (
            (None, "--rescore")
            if args.rescore
            else load_scores(
                r.path / "verify" / f"{stem}.scores.npz",
                digest,
                args.flip,
                weights.stat().st_mtime if weights else None,
            )
        )
        if cached is not None:
            r.scores = cached
            _log(f"{r.label}: {cached.source}")
            continue
        if weights is None or not (r.path / "config.json").is_file():
            return _fail(f"{r.path}: {why}, and no weights/config.json to score it with", 2)
        _log(f"{r.label}: scoring {len(pairs)} pairs ({why})")
        try:
            r.scores = _score_run(r.path, pairs, stem, args)
        except ImageReadError as e:
            return _fail(f"{e} (use --skip-missing to drop such pairs)", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
