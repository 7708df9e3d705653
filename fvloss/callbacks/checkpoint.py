"""Per-epoch checkpoints that a run can resume from."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastai.callback.core import Callback
from fastai.learner import Learner

from ..jsonio import write_json

__all__ = ["EpochCheckpoint", "load_checkpoint"]

LAST = "last"  # checkpoints/last.pth (weights + optimizer) and checkpoints/last.json


class EpochCheckpoint(Callback):
    """After every epoch, save model + optimizer to ``checkpoints/last.pth`` and the epoch
    number, lr and recorder values to ``last.json``; one file, replaced atomically, so a killed
    run loses at most the epoch in progress and never leaves a half-written checkpoint."""

    order = 61  # after the Recorder (50) and ProgressCallback (60): the epoch's values are final

    def __init__(self, lr: float, previous_values: list | None = None):
        self.lr, self.previous_values = lr, list(previous_values or [])

    def before_epoch(self) -> None:
        self._cancelled = False

    def after_cancel_epoch(self) -> None:
        self._cancelled = True  # e.g. an epoch skipped by fit(start_epoch=...) on resume

    def after_epoch(self) -> None:
        if self._cancelled or hasattr(self.learn, "lr_finder"):
            return
        d = self.learn.path / self.learn.model_dir
        d.mkdir(parents=True, exist_ok=True)
        self.learn.save(f"{LAST}.tmp", with_opt=True)
        os.replace(d / f"{LAST}.tmp.pth", d / f"{LAST}.pth")
        meta = {
            "epoch": self.epoch + 1,
            "lr": self.lr,
            # the epochs restored on resume log nothing here: keep theirs from the last record
            "values": [
                list(map(_jsonable, v))
                for v in [*self.previous_values, *(v for v in self.recorder.values if len(v))]
            ],
        }
        write_json(d / f"{LAST}.json", meta, indent=None)


def _jsonable(v):
    if v is None:  # a number that was not available (written as null), restored on resume
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def load_checkpoint(learn: Learner, run_dir: str | Path) -> tuple[int, float, list]:
    """Load ``run_dir``'s last checkpoint into ``learn``; returns (next epoch, lr, the recorder
    values of the epochs done)."""
    d = Path(run_dir) / learn.model_dir
    meta_path = d / f"{LAST}.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path}: no checkpoint to resume from (none finished an epoch yet?)"
        )
    try:
        meta = json.loads(meta_path.read_text())
        epoch, lr = int(meta["epoch"]), float(meta["lr"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: not an fvloss checkpoint record ({e})") from None
    try:
        learn.load(LAST, with_opt=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{d / (LAST + '.pth')}: checkpoint weights missing") from None
    except Exception as e:  # truncated, foreign (refused by weights_only), other model
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{d / (LAST + '.pth')}: cannot resume from this checkpoint "
            f"({type(e).__name__}: {first[:200]})"
        ) from None
    return epoch, lr, meta.get("values", [])
