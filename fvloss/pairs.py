"""Moved to :mod:`fvloss.eval.protocols`; this name stays so that existing imports keep
working."""

from .eval.protocols import *  # noqa: F403
from .eval.protocols import __all__  # noqa: F401
