"""ROC figures, built on matplotlib's object API (no pyplot state in library code)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .metrics import VerificationResult, _thin_roc

__all__ = ["plot_roc", "roc_figure"]


def roc_figure(
    curves: Mapping[str, VerificationResult | tuple],
    title: str | None = None,
    log_fpr: bool = False,
):
    """A matplotlib ``Figure`` with one ROC line per ``{label: result or (fpr, tpr, auc)}``.

    Built on ``matplotlib.figure.Figure`` (Agg canvas) rather than pyplot, so it neither needs
    a display nor changes the backend of a notebook that imports fvloss.
    """
    from matplotlib.figure import Figure

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
