"""fastai callbacks that can be dropped into any Learner."""

from .center import CenterLoss, center_loss_term, center_update
from .precision import CPUAutocast, mixed_precision_cb

__all__ = ["CenterLoss", "center_loss_term", "center_update", "CPUAutocast", "mixed_precision_cb"]
