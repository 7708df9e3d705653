"""Moved to :mod:`fvloss.eval.metrics` (and the ROC plots to :mod:`fvloss.eval.plots`); this
name stays so that existing imports keep working."""

from .eval.metrics import *  # noqa: F403
from .eval.metrics import __all__ as _metrics_all
from .eval.plots import plot_roc, roc_figure

__all__ = [*_metrics_all, "plot_roc", "roc_figure"]
