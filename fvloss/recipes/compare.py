"""Moved to :mod:`fvloss.eval.compare` (the bootstrap to :mod:`fvloss.eval.bootstrap`); this
name stays so that existing imports and ``python -m fvloss.recipes.compare`` keep working."""

import sys

from ..eval.bootstrap import (
    AucDiff,
    BootstrapResult,
    bootstrap_weights,
    choose_comparisons,
    paired_bootstrap,
    weighted_auc,
)
from ..eval.compare import main
from ..eval.report import RunScores, load_scores

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

if __name__ == "__main__":
    sys.exit(main())
