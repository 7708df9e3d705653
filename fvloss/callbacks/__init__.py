"""fastai callbacks that can be dropped into any Learner."""

from .center import CenterLoss, center_loss_term, center_update
from .checkpoint import Checkpoint, ResumeFrom, RunInterrupted, StopSignals
from .guard import DivergenceGuard, TrainingDiverged
from .precision import CPUAutocast, mixed_precision_cb

__all__ = [
    "CenterLoss",
    "Checkpoint",
    "ResumeFrom",
    "RunInterrupted",
    "StopSignals",
    "CPUAutocast",
    "DivergenceGuard",
    "TrainingDiverged",
    "center_loss_term",
    "center_update",
    "mixed_precision_cb",
]
