"""Per-epoch checkpoints that a run can resume from.

A checkpoint is ONE file, ``checkpoints/last.pth``: the model's weights, the optimizer's state
and the record (epoch, lr, the epochs' metric values) together, replaced by one atomic rename,
so a kill at any moment leaves the previous checkpoint or the new one, never weights of one
epoch with the record of another. ``last.json`` beside it is a readable copy of the record,
written after it; resuming reads the record from the ``.pth`` (``last.json`` only for
checkpoints made before the record moved into it).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.torch_core import get_model

from ..jsonio import atomic_write, write_json

__all__ = ["EpochCheckpoint", "load_checkpoint"]

LAST = "last"  # checkpoints/last.pth (weights + optimizer + record), last.json (its record)


class EpochCheckpoint(Callback):
    """After every epoch, save model + optimizer + record (epoch number, lr, recorder values)
    to ``checkpoints/last.pth``; one file, replaced atomically, so a killed run loses at most
    the epoch in progress and never leaves a half-written or mismatched checkpoint."""

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
        meta = {
            "epoch": self.epoch + 1,
            "lr": self.lr,
            # the epochs restored on resume log nothing here: keep theirs from the last record
            "values": [
                list(map(_jsonable, v))
                for v in [*self.previous_values, *(v for v in self.recorder.values if len(v))]
            ],
        }
        state = {"model": get_model(self.learn.model).state_dict(), "meta": meta}
        if self.learn.opt is not None:
            state["opt"] = self.learn.opt.state_dict()
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(d / f"{LAST}.pth", buf.getvalue())
        write_json(d / f"{LAST}.json", meta, indent=None)  # a readable copy; resume reads the .pth


def _jsonable(v):
    if v is None:  # a number that was not available (written as null), restored on resume
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def load_checkpoint(learn: Learner, run_dir: str | Path) -> tuple[int, float, list]:
    """Load ``run_dir``'s last checkpoint into ``learn``; returns (next epoch, lr, the recorder
    values of the epochs done). Loaded with ``weights_only`` (no code in the file runs)."""
    from ..runs import _load_weights

    d = Path(run_dir) / learn.model_dir
    path = d / f"{LAST}.pth"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no checkpoint to resume from (none finished an epoch yet?)"
        )
    try:
        state = _load_weights(path, map_location=learn.dls.device)
    except ValueError as e:
        raise ValueError(f"{path}: cannot resume from this checkpoint ({e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: cannot resume from this checkpoint (no model weights in it)")
    meta = state.get("meta") or _old_record(d / f"{LAST}.json")
    try:
        epoch, lr = int(meta["epoch"]), float(meta["lr"])
        get_model(learn.model).load_state_dict(state["model"])
        if "opt" in state:
            if learn.opt is None:
                learn.create_opt()
            learn.opt.load_state_dict(state["opt"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # another model, a bad record
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{path}: cannot resume from this checkpoint ({type(e).__name__}: {first[:200]})"
        ) from None
    return epoch, lr, meta.get("values", [])


def _old_record(path: Path) -> dict:
    """The record of a checkpoint written before it moved into the ``.pth``."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: no readable checkpoint record ({e})") from None
