"""Moved to :mod:`fvloss.eval` (embedding: :mod:`~fvloss.eval.embed`; the per-epoch callback:
:mod:`~fvloss.eval.callback`; score files: :mod:`~fvloss.eval.report`; ``fvloss verify``:
:mod:`~fvloss.eval.verify_cli`); this name stays so that existing imports keep working."""

from .eval.callback import HeldOutPairs, VerifyPairs
from .eval.embed import embed_images, evaluate_pairs, model_device, score_pairs
from .eval.report import pairs_digest, write_outputs
from .eval.verify_cli import main

__all__ = [
    "HeldOutPairs",
    "VerifyPairs",
    "embed_images",
    "evaluate_pairs",
    "main",
    "model_device",
    "pairs_digest",
    "score_pairs",
    "write_outputs",
]
