"""ROC curves, training curves, score histograms, error-versus-reject curves and the hardest pairs, built on matplotlib's object API (no pyplot state in library code)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .metrics import VerificationResult, _thin_roc

__all__ = [
    "plot_reject",
    "plot_roc",
    "reject_figure",
    "roc_figure",
    "score_histogram_figure",
    "training_figure",
    "worst_pairs_figure",
]


def roc_figure(
    curves: Mapping[str, VerificationResult | tuple],
    title: str | None = None,
    log_fpr: bool = False,
):
    """A matplotlib ``Figure`` with one ROC line per ``{label: result or (fpr, tpr, auc)}``.

    Built on ``matplotlib.figure.Figure`` (Agg canvas) rather than pyplot, so it neither needs
    a display nor changes the backend of a notebook that imports fvloss.
    """
    fig = Figure(figsize=(5.5, 5), dpi=120)
    ax = fig.add_subplot()
    for label, c in curves.items():
        fpr, tpr, auc = (c.fpr, c.tpr, c.auc) if isinstance(c, VerificationResult) else c
        fpr, tpr = np.asarray(fpr), np.asarray(tpr)
        keep = _thin_roc(fpr, tpr, 4000)
        ax.plot(fpr[keep], tpr[keep], lw=1.5, label=f"{label} (AUC {auc:.4f})")
    if log_fpr:
        ax.set_xscale("log")
        ax.set_xlim(1e-4, 1)
    else:
        ax.plot([0, 1], [0, 1], ls=":", lw=1, color="grey")
        ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (FPR)")
    ax.set_ylabel("true accept rate (TPR)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_roc(
    curves: Mapping[str, VerificationResult | tuple],
    path: str | Path,
    title: str | None = None,
    log_fpr: bool = False,
) -> Path:
    """Write overlaid ROC curves ``{label: result or (fpr, tpr, auc)}`` to an image file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    roc_figure(curves, title=title, log_fpr=log_fpr).savefig(path)
    return path


def training_figure(history: Sequence[Mapping[str, Any]]):
    """Training curves of a run's ``history`` (metrics.json): the training loss, and each
    verification metric (held-out ``auc``/``acc``, protocols' ``<name>_auc``) per epoch."""
    fig = Figure(figsize=(10, 4), dpi=110)
    loss_ax, ver_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for key in ("train_loss", "valid_loss"):
        ys = [h.get(key) for h in history]
        if any(_finite(y) for y in ys):
            loss_ax.plot(epochs, [y if _finite(y) else np.nan for y in ys], marker="o", label=key)
    keys = [
        k for k in (history[0] if history else {}) if k == "auc" or k == "acc" or k.endswith("_auc")
    ]
    for key in keys:
        ys = [h.get(key) for h in history]
        pts = [(e, y) for e, y in zip(epochs, ys, strict=True) if _finite(y)]
        if pts:
            ver_ax.plot(*zip(*pts, strict=True), marker="o", label=key)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    ver_ax.set(xlabel="epoch", ylabel="AUC / accuracy", title="verification")
    for ax in (loss_ax, ver_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def score_histogram_figure(scores: np.ndarray, same: np.ndarray, threshold: float | None = None,
                           title: str | None = None):  # fmt: skip
    """Histograms of same-identity and different-identity pair scores, the threshold marked."""
    fig = Figure(figsize=(5.5, 4), dpi=120)
    _histogram(fig.add_subplot(), scores, same, threshold, title or "pair scores")
    fig.tight_layout()
    return fig


def score_histograms_figure(runs: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]]):
    """One :func:`score_histogram_figure` panel per ``{label: (scores, same, threshold)}``, on
    shared axes (``fvloss compare``)."""
    n = max(len(runs), 1)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), dpi=110)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax, (label, (scores, same, thr)) in zip(axes.flat, runs.items(), strict=False):
        _histogram(ax, scores, same, thr, label)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def _histogram(ax, scores, same, threshold, title: str) -> None:
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    bins = np.linspace(min(scores.min(), -1.0), max(scores.max(), 1.0), 60)
    ax.hist(scores[same], bins=bins, alpha=0.6, label=f"same identity ({int(same.sum())})")
    ax.hist(scores[~same], bins=bins, alpha=0.6, label=f"different ({int((~same).sum())})")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="cosine similarity", ylabel="pairs", title=title)
    ax.legend(fontsize="small")


def worst_pairs_figure(pairs, scores: np.ndarray, load: Callable[[int], np.ndarray], k: int = 4,
                       threshold: float | None = None):  # fmt: skip
    """The ``k`` hardest false accepts (different people, highest scores) and false rejects
    (the same person, lowest scores) as image pairs, side by side; ``load(i)`` reads
    ``pairs.paths[i]``. With a ``threshold``, pairs it classifies right are called the hardest
    different / same instead."""
    scores = np.asarray(scores, dtype=np.float64)
    diff, same = np.flatnonzero(~pairs.same), np.flatnonzero(pairs.same)
    accepts = diff[np.argsort(-scores[diff])][:k]
    rejects = same[np.argsort(scores[same])][:k]
    # one row per rank: the k-th false accept (left pair) beside the k-th false reject (right)
    n_rows = max(len(accepts), len(rejects), 1)
    fig = Figure(figsize=(8.0, 2.2 * n_rows), dpi=100)
    axes = fig.subplots(n_rows, 4, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for col, kind, picked in ((0, "false accept", accepts), (2, "false reject", rejects)):
        for r, p in enumerate(picked):
            wrong = threshold is None or (scores[p] >= threshold) == (kind == "false accept")
            if not wrong:  # the hardest of its kind, yet on the right side of the threshold
                kind = "hardest different" if col == 0 else "hardest same"
            for c, i in enumerate(pairs.index[p]):
                ax = axes[r][col + c]
                ax.imshow(load(int(i)))
                name = Path(str(pairs.paths[int(i)])).name
                ax.set_title(name if c else f"{kind} {scores[p]:.3f}\n{name}", fontsize=7)
    suffix = f" (threshold {threshold:.3f})" if threshold is not None else ""
    fig.suptitle(f"hardest pairs{suffix}", fontsize=9)
    fig.tight_layout()
    return fig


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_reject(
    ax, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], what: str
) -> None:
    """Error-versus-reject curves overlaid on ``ax``: ``label -> (share rejected, error)``;
    ``what`` names the error (e.g. "FNMR at FMR=0.01")."""
    for label, (rejected, error) in curves.items():
        ax.plot(rejected, error, marker="o", label=label)
    ax.set(xlabel="share rejected (lowest quality first)", ylabel="error", title=what)
    ax.legend(fontsize=7)


def reject_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], what: str
) -> Figure:
    """:func:`plot_reject` alone in a figure (``fvloss compare``'s ``reject.png``)."""
    fig = Figure(figsize=(5.5, 4), dpi=110)
    plot_reject(fig.subplots(), curves, what)
    fig.tight_layout()
    return fig
