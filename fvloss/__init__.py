"""fvloss: train face-recognition embeddings with fastai and compare their cost functions.

Importing the package is cheap and has no side effects beyond one environment default:
albumentations checks PyPI for a newer release at import time (a network call and a
2 s timeout on machines without internet), so we switch that check off unless the
user already set the variable.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
