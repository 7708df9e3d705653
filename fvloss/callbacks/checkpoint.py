"""Checkpoints a run resumes from exactly, after a kill at any moment.

A checkpoint is ONE file, ``checkpoints/last.pth``, replaced by one atomic rename: the model's
weights (with center-loss centers and heads' buffers), the optimizer's state, and the record
of where training stands: ``epoch`` and ``batch`` (the next batch to train), the epochs' metric
values, and the run's *training state*: the random generators (Python, numpy, torch, CUDA),
the Recorder's smoothed loss, the fp16 grad scaler and the state of every callback that has
``state_dict`` / ``load_state_dict`` (the divergence guard). ``last.json`` beside it is a
readable copy of the record.

:class:`Checkpoint` writes it at every epoch's end, every ``every_steps`` steps and every
``every_minutes`` minutes, and when :class:`StopSignals` saw a SIGTERM / SIGINT (then it raises
:class:`RunInterrupted`). :class:`ResumeFrom` puts a loaded checkpoint back into a fresh
Learner: ``fit(..., start_epoch=epoch)`` skips the finished epochs (their values restored in
the table), the loader (:class:`~fvloss.data.seeded.SeededDL`) starts the interrupted epoch at
``batch`` without loading the batches before it, and the training progress, the generators and
the callbacks' states are what they were. Since the batches are functions of (seed, epoch,
image), the resumed run then computes exactly what the uninterrupted one did: the same final
weights, bit for bit, on a CPU (tested).
"""

from __future__ import annotations

import io
import json
import math
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.torch_core import get_model
from fastcore.foundation import L

from ..heads.partial_fc import sharded_parameters
from ..jsonio import atomic_write, write_json
from ..ranks import any_rank, is_main, world_size
from ..runs import _load_weights
from .timing import timed
from .verify import NA  # NaN that prints n/a (JSON kept it as null)

__all__ = [
    "Checkpoint",
    "ResumeFrom",
    "RunInterrupted",
    "StopSignals",
    "load_checkpoint",
    "restore_weights",
]

LAST = "last"  # checkpoints/last.pth (everything), last.json (its record)


class RunInterrupted(RuntimeError):
    """A run stopped by a signal after writing its checkpoint; ``signum`` says which."""

    def __init__(self, signum: int, where: str, path: Path):
        self.signum = signum
        name = signal.Signals(signum).name
        # kept apart from args: fastai prefixes the args of an exception raised in a callback
        self.message = (
            f"{name} {where}; checkpoint written to {path}. "
            f"Continue with: fvloss train --resume {path.parent.parent}"
        )
        super().__init__(self.message)


class StopSignals:
    """While active (``with StopSignals() as stop:``), SIGTERM and SIGINT do not kill the
    process but ask :class:`Checkpoint` to write a checkpoint after the step in progress and
    stop the run. A second signal acts as usual (Ctrl-C twice: ``KeyboardInterrupt`` now).
    Outside the main thread, where Python cannot set handlers, it does nothing."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals, self.signum, self._old = signals, None, {}

    def __enter__(self) -> StopSignals:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        self._restore()  # the next one acts as it would without us
        print(
            f"\n[fvloss] {signal.Signals(signum).name}: writing a checkpoint after this step, "
            "then stopping (send it again to stop at once, without one)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def __exit__(self, *exc) -> None:
        self._restore()


# -- the training state ------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every global generator's state, in types ``torch.load(weights_only=True)`` reads."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _stateful(learn: Learner) -> dict[str, Callback]:
    """The Learner's callbacks that carry state across steps (a ``state_dict`` method of their
    own: fastai's attribute delegation would find the model's), by name."""
    out: dict[str, Callback] = {}
    for cb in learn.cbs:
        if callable(getattr(type(cb), "state_dict", None)):
            name, k = cb.name, 1
            while name in out:
                name, k = f"{cb.name}_{k}", k + 1
            out[name] = cb
    return out


def training_state(learn: Learner) -> dict[str, Any]:
    """What besides weights and optimizer a run needs to continue exactly from here."""
    state: dict[str, Any] = {
        "rng": rng_state(),
        "callbacks": {n: cb.state_dict() for n, cb in _stateful(learn).items()},
    }
    rec = getattr(learn, "recorder", None)
    if rec is not None and hasattr(rec, "smooth_loss"):
        state["smooth_loss"] = [int(rec.smooth_loss.count), rec.smooth_loss.val.detach().clone()]
    scaler = getattr(learn, "scaler", None)  # fastai's MixedPrecision (fp16)
    if scaler is not None and hasattr(scaler, "state_dict"):
        state["scaler"] = scaler.state_dict()
    return state


def _jsonable(v):
    """A recorder value as the record keeps it: a float, ``None`` for n/a, or a string."""
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return None if math.isnan(v) else v  # not available (NA): null in JSON, n/a on resume


class Checkpoint(Callback):
    """Write ``checkpoints/last.pth`` at every epoch's end, every ``every_steps`` training steps
    and every ``every_minutes`` minutes (0 turns either off), and, when ``stop`` (a
    :class:`StopSignals`) has seen a signal, after the step in progress, then raise
    :class:`RunInterrupted`. No checkpoint is written while the divergence guard counts
    exploding steps (``learn.diverging``): the one on disk stays the last good one.

    Mid-epoch checkpoints need a training loader that can start an epoch at a batch
    (``set_epoch(epoch, start_batch)``, :class:`~fvloss.data.seeded.SeededDL`); with another, this
    checkpoints at epochs' ends only, and says so.

    ``trained_s``: seconds a resumed run trained before this fit (its checkpoint's
    ``train_s``); each checkpoint records the run's training seconds so far, so a run's
    training time adds up over every process that worked on it.
    """

    order = 61  # after the Recorder (50), ParamScheduler and the progress bar (60): the
    # step's loss, lr and values are recorded

    def __init__(
        self,
        lr: float,
        every_steps: int = 0,
        every_minutes: float = 15.0,
        stop: StopSignals | None = None,
        trained_s: float = 0.0,
    ):
        self.lr, self.every_steps, self.every_minutes, self.stop = (
            lr,
            every_steps,
            every_minutes,
            stop,
        )
        self.trained_s = trained_s

    # -- events --------------------------------------------------------------------------
    def before_fit(self) -> None:
        self.active = not hasattr(self.learn, "lr_finder")
        self.mid_epoch = hasattr(self.dls.train, "set_epoch")
        if self.active and not self.mid_epoch and (self.every_steps or self.every_minutes):
            warnings.warn(
                f"{type(self.dls.train).__name__} cannot start an epoch at a batch: "
                "checkpoints at epochs' ends only (use fvloss.data.seeded.SeededDL for more)",
                stacklevel=2,
            )
        self._last_save, self._steps, self._at_train_end = time.monotonic(), 0, None
        self._due = False  # a checkpoint due while gradients accumulate, written at the step
        self._t_fit = time.monotonic()

    def before_epoch(self) -> None:
        self._cancelled = False

    def after_cancel_epoch(self) -> None:
        self._cancelled = True  # e.g. an epoch skipped by fit(start_epoch=...) on resume

    def after_batch(self) -> None:
        if not self.active:
            return
        if not self.training:  # a signal during validation: save where training ended
            self._together(False)
            if self._signalled() and self.mid_epoch and self._at_train_end is not None:
                self._save(self.epoch, len(self.dls.train), self._at_train_end)
                self._interrupt("during the validation of epoch " + str(self.epoch))
            return
        self._steps += 1
        batch = getattr(self.dl, "start_batch", 0) + self.iter + 1
        due = (
            self._due
            or (self.every_steps and self._steps % self.every_steps == 0)
            or (
                self.every_minutes and time.monotonic() - self._last_save >= 60 * self.every_minutes
            )
        )
        if getattr(self.learn, "accumulating", False):  # gradients pending (callbacks.optim
            self._due = bool(due)  # .Accumulate) are not in a checkpoint: wait for the step
            return
        self._due = False
        due = self._together(due)
        if self.mid_epoch and (due or self._signalled()):
            self._save(self.epoch, batch)
        if self._signalled() and self.mid_epoch:  # (else at the epoch's end)
            self._interrupt(f"at epoch {self.epoch}, batch {batch}")

    def after_train(self) -> None:
        if self.active:  # for a signal during validation: training's end is where to resume
            self._at_train_end = training_state(self.learn)

    def after_epoch(self) -> None:
        if self._cancelled or not self.active:
            return
        self._save(self.epoch + 1, 0)
        self._at_train_end = None
        if self._signalled():
            self._interrupt(f"after epoch {self.epoch}")

    # -- helpers -------------------------------------------------------------------------
    def _together(self, due: bool) -> bool:
        """Under several ranks, one decision for all (a clock, a signal seen by one of them):
        writing gathers a sharded head's blocks, a collective every rank must join. The
        signal is then taken on every rank too."""
        if world_size() == 1:
            return bool(due)
        signalled = self._signalled()
        flags = any_rank([bool(due), signalled], device=self.dls.device)
        if flags[1] and not signalled and self.stop is not None:
            self.stop.signum = signal.SIGTERM  # another rank's: stop with it
        return flags[0]

    def _signalled(self) -> bool:
        return self.stop is not None and self.stop.signum is not None

    def _interrupt(self, where: str) -> None:
        raise RunInterrupted(self.stop.signum, where, self.path_)

    @property
    def path_(self) -> Path:
        return self.learn.path / self.learn.model_dir / f"{LAST}.pth"

    def _save(self, epoch: int, batch: int, train_state: dict | None = None) -> None:
        guard = getattr(self.learn, "divergence_guard", None)
        if callable(getattr(guard, "flush", None)):
            guard.flush()  # judge every step before this one first (raises if one failed)
        if self._together(getattr(self.learn, "diverging", False)):
            return  # keep the last good checkpoint (a rank's diverging: every rank's)
        with timed(self.learn, "checkpoint"):  # (TimeBreakdown's share of the epoch)
            self._write(epoch, batch, train_state)

    def _write(self, epoch: int, batch: int, train_state: dict | None) -> None:
        model, opt = model_state(self.learn)  # every rank: a sharded head gathers its blocks
        if not is_main():  # under DDP every rank holds the same model: rank 0 writes it
            return
        meta = {
            "epoch": epoch,  # the epoch to resume at ...
            "batch": batch,  # ... and its first batch to train (0: a new epoch)
            "n_iter": len(self.dls.train),
            "world_size": world_size(),  # processes: an epoch boundary resumes on any number
            "lr": self.lr,
            "train_s": round(self.trained_s + time.monotonic() - self._t_fit, 1),  # so far
            "values": [list(map(_jsonable, v)) for v in self.recorder.values if len(v)],
        }
        state = {
            "model": model,
            "meta": meta,
            "train_state": train_state or training_state(self.learn),
        }
        if opt is not None:
            state["opt"] = opt
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.path_, buf.getvalue(), fsync=True)
        write_json(self.path_.with_suffix(".json"), meta, indent=None)  # readable copy
        self._last_save = time.monotonic()


class ResumeFrom(Callback):
    """Continue a fit exactly where the checkpoint ``state`` (from :func:`load_checkpoint`)
    stopped: pass it with ``fit(n, start_epoch=state["meta"]["epoch"], cbs=[ResumeFrom(state)])``
    after :func:`restore_weights`. The skipped epochs show their recorded values (marked
    ``restored``) in the table and ``recorder.values``."""

    order = 0  # before_train: after TrainEvalCallback (-10) and SetEpoch (-5) start the epoch;
    # before_batch: before anything of the step (the margin schedule, 5; autocast, 10) runs

    def __init__(self, state: dict[str, Any]):
        meta = state["meta"]
        self.epoch0, self.batch0 = int(meta["epoch"]), int(meta.get("batch", 0))
        self.n_iter0 = meta.get("n_iter")
        self.world0 = int(meta.get("world_size", 1))
        self.values = list(meta.get("values", []))
        self.train_state = state.get("train_state")
        self._done, self._rng_pending, self._logger = False, False, None

    def after_cancel_epoch(self) -> None:
        if self.epoch >= len(self.values):
            return
        vals = [NA if v is None else v for v in self.values[self.epoch]]
        # the Recorder stores and prints its log after this: give it the epoch's values, and
        # "restored" where the epoch's time would be
        self.recorder.log = L([self.epoch, *vals])
        self._add_time, self.recorder.add_time = self.recorder.add_time, False
        self._logger = self.learn.logger
        self.learn.logger = lambda log: self._logger([*log, "restored"])

    def before_epoch(self) -> None:
        self._unwrap()

    def after_fit(self) -> None:
        self._unwrap()

    def _unwrap(self) -> None:
        if self._logger is not None:
            self.learn.logger, self._logger = self._logger, None
            self.recorder.add_time = self._add_time

    def before_train(self) -> None:
        if self._done or self.epoch != self.epoch0:
            return
        self._done = True
        n_iter = len(self.dls.train)
        if self.batch0 and self.world0 != world_size():
            raise ValueError(
                f"cannot resume mid-epoch on {world_size()} process(es): the checkpoint was "
                f"written on {self.world0}, at batch {self.batch0} of epoch {self.epoch0}; resume "
                "on that many, or from a checkpoint at an epoch's end (any number resumes there)"
            )
        if self.batch0 and self.n_iter0 is not None and n_iter != self.n_iter0:
            raise ValueError(
                f"cannot resume mid-epoch: an epoch is now {n_iter} batches, it was "
                f"{self.n_iter0} (another batch size or data set?)"
            )
        # the training progress, by the same additions TrainEvalCallback makes per batch, so
        # that the lr and margin schedules read the same floats as in the uninterrupted run
        for _ in range(self.batch0):
            self.learn.pct_train += 1.0 / (n_iter * self.n_epoch)
        self.learn.train_iter = self.epoch0 * n_iter + self.batch0
        if self.batch0:
            if not hasattr(self.dls.train, "set_epoch"):
                raise ValueError("cannot resume mid-epoch: the loader has no set_epoch")
            self.dls.train.set_epoch(self.epoch0, start_batch=self.batch0)
        ts = self.train_state
        if ts is None:  # a checkpoint from before training states were saved
            return
        for name, cb in _stateful(self.learn).items():
            if name in ts["callbacks"]:
                cb.load_state_dict(ts["callbacks"][name])
        if "smooth_loss" in ts:
            count, val = ts["smooth_loss"]
            self.recorder.smooth_loss.count = count
            self.recorder.smooth_loss.val = val.to(self.recorder.smooth_loss.val.device)
        if "scaler" in ts and getattr(self.learn, "scaler", None) is not None:
            self.learn.scaler.load_state_dict(ts["scaler"])
        if self.batch0:
            # the loader's iterator, made after this event, draws from torch's generator; in
            # the uninterrupted run it did so at the epoch's start, before the saved state
            self._rng_pending = True
        else:
            set_rng_state(ts["rng"])

    def before_batch(self) -> None:
        if self.training:
            self._restore_rng()

    def before_validate(self) -> None:
        self._restore_rng()  # an epoch resumed after its last batch goes straight here

    def _restore_rng(self) -> None:
        if self._rng_pending:
            self._rng_pending = False
            set_rng_state(self.train_state["rng"])


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint (``checkpoints/last.pth``, or the run folder holding it) with
    ``weights_only`` (no code in the file runs). A truncated or foreign file is a ``ValueError``
    naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / f"{LAST}.pth"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from (none was written yet?)")
    try:
        state = _load_weights(path, map_location=map_location)
    except ValueError as e:
        raise ValueError(f"{path}: cannot resume from this checkpoint ({e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: cannot resume from this checkpoint (no model weights in it)")
    state.setdefault("meta", None)
    if state["meta"] is None:
        state["meta"] = _old_record(path.with_suffix(".json"))
    try:
        int(state["meta"]["epoch"]), float(state["meta"]["lr"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot resume from this checkpoint (bad record: {e})") from None
    state["path"] = path
    return state


def model_state(learn: Learner) -> tuple[dict, dict | None]:
    """The model's and the optimizer's state as a checkpoint holds them: whatever the number of
    ranks, a sharded head's blocks (its hooks) and their optimizer moments are whole
    ``(n_classes, ...)`` matrices. Under several ranks every rank calls it together."""
    model = get_model(learn.model)
    weights = model.state_dict()
    if learn.opt is None:
        return weights, None
    opt = learn.opt.state_dict()
    own = {id(p): head for _, p, head in sharded_parameters(model) if head.world > 1}
    if own:
        params = [p for p, *_ in learn.opt.all_params()]

        def gathered(p, st):
            if id(p) not in own:
                return st
            return {k: own[id(p)].gather_rows(v) if _rows_of(v, p) else v
                    for k, v in sorted(st.items())}  # fmt: skip

        if isinstance(opt["state"], dict):  # torch's (OptimWrapper): {index: state}, indexes
            # numbering the parameters in group order, as all_params lists them
            opt["state"] = {i: gathered(params[i], st) for i, st in sorted(opt["state"].items())}
        else:  # fastai's: one state per parameter, in order
            opt["state"] = [gathered(p, st) for p, st in zip(params, opt["state"], strict=True)]
    return weights, opt


def _param_states(opt) -> dict:
    """``{parameter: its state}`` of a fastai optimiser or of the torch one an ``OptimWrapper``
    wraps (the wrapper's own ``state`` is fastai bookkeeping the step never reads)."""
    inner = getattr(opt, "opt", None)
    return inner.state if isinstance(inner, torch.optim.Optimizer) else opt.state


def _regrouped(sd: dict, learn: Learner) -> dict:
    """A fastai optimiser state written with one parameter group (before ``wd_exclude`` and
    ``head_lr`` made groups) for this learner's groups: its per-parameter states, listed in the
    model's order, are matched to the parameters they belong to."""
    groups = learn.opt.param_lists
    if "hypers" not in sd or len(sd["hypers"]) != 1 or len(groups) == 1:
        return sd
    model_order = [p for p in get_model(learn.model).parameters() if p.requires_grad]
    if len(model_order) != len(sd["state"]):
        return sd  # not that layout: load_state_dict says what does not fit
    state = {id(p): st for p, st in zip(model_order, sd["state"], strict=True)}
    return {"state": [state[id(p)] for g in groups for p in g],
            "hypers": [dict(sd["hypers"][0]) for _ in groups]}  # fmt: skip


def _rows_of(v: Any, p: torch.Tensor) -> bool:
    """``v`` is per-row state of ``p`` (a moment of its shape)."""
    return isinstance(v, torch.Tensor) and v.ndim == p.ndim and v.shape[1:] == p.shape[1:]


def restore_weights(learn: Learner, state: dict[str, Any]) -> None:
    """Load a checkpoint's model and optimizer state into ``learn`` (a ``ValueError`` naming the
    file when they do not fit this model)."""
    try:
        get_model(learn.model).load_state_dict(state["model"])
        if "opt" in state:
            if learn.opt is None:
                learn.create_opt()
            learn.opt.load_state_dict(_regrouped(state["opt"], learn))
            states = _param_states(learn.opt)
            for _, p, head in sharded_parameters(get_model(learn.model)):  # this rank's rows
                st = states[p]  # (the checkpoint's own dict: not edited in place)
                mine = {k: head.own_rows(v) for k, v in st.items() if _rows_of(v, p)}
                mine = {k: v.clone() if v.shape != st[k].shape else v for k, v in mine.items()}
                states[p] = {**st, **mine}
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # another model
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{state.get('path', 'checkpoint')}: cannot resume from this checkpoint "
            f"({type(e).__name__}: {first[:200]})"
        ) from None


def _old_record(path: Path) -> dict:
    """The record of a checkpoint written before it moved into the ``.pth``."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: no readable checkpoint record ({e})") from None
