"""Experiment tracking through fastai's own callbacks: ``--log csv|tensorboard|wandb``.

``csv`` (the default) writes ``RUN/history.csv``, one row per epoch, the columns of the table
the run prints (fastai's ``CSVLogger``). ``tensorboard`` writes event files into
``RUN/tensorboard`` (fastai's ``TensorBoardCallback``: the loss per step and the metrics per
epoch; no model trace, no images). ``wandb`` logs to Weights & Biases (fastai's
``WandbCallback``), the only one that contacts a server, and only when asked (``WANDB_MODE=
offline`` keeps it local). The last two need their packages; a missing one is an error before
anything is read, saying what to install. Only rank 0 logs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback
from fastai.callback.progress import CSVLogger

__all__ = ["TRACKERS", "check_trackers", "tracking_cbs"]

TRACKERS = ("csv", "tensorboard", "wandb", "none")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_trackers(names: Sequence[str]) -> None:
    """An unknown tracker, or one whose package is not installed, is an error naming it."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"log: unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
        package = _PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(f"--log {name} needs the {package} package: pip install {package}")


def tracking_cbs(names: Sequence[str], run_dir: Path, config: dict[str, Any]) -> list[Callback]:
    """The callbacks logging a run into ``run_dir`` (``config``: what wandb records)."""
    check_trackers(names)
    cbs: list[Callback] = []
    if "csv" in names:
        cbs.append(CSVLogger(Path(run_dir).resolve() / "history.csv"))
    if "tensorboard" in names:  # the extras' packages: imported only when asked for
        from fastai.callback.tensorboard import TensorBoardCallback

        log_dir = Path(run_dir) / "tensorboard"
        cbs.append(TensorBoardCallback(log_dir=log_dir, trace_model=False, log_preds=False))
    if "wandb" in names:
        import wandb
        from fastai.callback.wandb import WandbCallback

        if wandb.run is None:  # fastai's callback logs into the current run
            wandb.init(project="fvloss", name=Path(run_dir).name, dir=str(run_dir), config=config)
        cbs.append(WandbCallback(log_preds=False, log_model=False, log_dataset=False))
    return cbs
