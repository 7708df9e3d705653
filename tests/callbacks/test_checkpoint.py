"""Exact resume (fvloss.callbacks.checkpoint): a run killed or stopped at any moment and resumed
ends with the weights of the uninterrupted run, bit for bit, on a CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed

from fvloss.callbacks.checkpoint import (
    Checkpoint,
    ResumeFrom,
    RunInterrupted,
    StopSignals,
    load_checkpoint,
    restore_weights,
)
from fvloss.callbacks.guard import DivergenceGuard
from fvloss.callbacks.schedule import Schedule
from fvloss.data import face_dls
from fvloss.data.synthetic import SyntheticSpec, make_synthetic
from fvloss.learner import face_learner
from fvloss.recipes import center

EPOCHS, LR = 2, 1e-3


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    return make_synthetic(SyntheticSpec(8, 6, 32, 0), tmp_path_factory.mktemp("syn"), quiet=True)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical results need a fixed number of threads
    yield
    torch.set_num_threads(n)


def learner(syn: Path, path: Path, loss: str, seed: int = 0, preload: str = "off", **kw):
    set_seed(seed)
    # 9 batches an epoch; preload "off": per-image Albumentations, "on": device augmentation
    dls = face_dls(syn, img_size=32, bs=4, num_workers=0, seed=0, preload=preload)
    # dropout and a margin warm-up: the model draws random numbers, the schedule moves per step
    return face_learner(
        dls, loss=loss, arch="resnet18", emb_dim=16, dropout=0.2, margin_warmup=0.3,
        val_pairs=50, path=path, model_dir="checkpoints", cbs=[DivergenceGuard()], **kw,
    )  # fmt: skip


class Kill(Callback):
    """Dies like a killed process: in the middle of step ``at`` (gradients computed, not
    applied), with an exception no fastai handler catches and no after_* event runs."""

    order = 100

    def __init__(self, at: int):
        self.at, self.n = at, 0

    def after_backward(self) -> None:
        self.n += 1
        if self.n == self.at:
            raise SystemExit("killed")


def weights(learn) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(syn, tmp_path_factory) -> dict:
    """The uninterrupted runs, per loss: final weights and the table's values."""
    out = {}
    torch.set_num_threads(1)
    for loss, preload in (("center", "off"), ("arcface", "off"), ("center", "on")):
        learn = learner(syn, tmp_path_factory.mktemp(f"ref-{loss}"), loss, preload=preload)
        learn.fit_one_cycle(EPOCHS, LR, cbs=[Checkpoint(LR, 0, 0)])
        out[loss, preload] = (weights(learn), str(learn.recorder.values))
    return out


def resume(syn: Path, run: Path, loss: str, drop_train_state: bool = False, preload: str = "off"):
    """A fresh process's resume: another global seed, so only what the checkpoint restores
    can make it match."""
    state = load_checkpoint(run)
    if drop_train_state:
        state.pop("train_state")
    learn = learner(syn, run, loss, seed=1234, preload=preload)
    restore_weights(learn, state)
    cb = ResumeFrom(state)
    learn.fit_one_cycle(EPOCHS, LR, start_epoch=cb.epoch0, cbs=[Checkpoint(LR, 0, 0), cb])
    return learn, state["meta"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss,at,every,preload",
    [
        # mid epoch 0 (centers: a buffer moved per step)
        ("center", 4, {"every_steps": 1}, "off"),
        # first step of epoch 1: the epoch-end checkpoint
        ("arcface", 10, {"every_steps": 1}, "off"),
        # mid epoch 1, a checkpoint a step older than the kill
        ("arcface", 16, {"every_steps": 2}, "off"),
        # by time: every step here
        ("center", 13, {"every_minutes": 1e-9}, "off"),
        # preloaded images, augmented on the device in batches
        ("center", 13, {"every_steps": 1}, "on"),
    ],
)
def test_resume_after_a_kill_anywhere_ends_with_the_same_weights(
    syn, tmp_path, reference, loss, at, every, preload
):
    learn = learner(syn, tmp_path, loss, preload=preload)
    with pytest.raises(SystemExit):
        learn.fit_one_cycle(
            EPOCHS, LR, cbs=[Checkpoint(LR, **{"every_steps": 0, **every}), Kill(at)]
        )
    resumed, meta = resume(syn, tmp_path, loss, preload=preload)
    assert (meta["epoch"], meta["batch"]) == {4: (0, 3), 10: (1, 0), 16: (1, 5), 13: (1, 3)}[at]
    ref_weights, ref_values = reference[loss, preload]
    assert same(weights(resumed), ref_weights)
    assert str(resumed.recorder.values) == ref_values  # the table, restored epochs included


# the papers' way: torch's SGD with Nesterov momentum and L2 decay on all but norm layers, the
# head at 2x the lr, a poly schedule with a warm-up, clipping, two batches a step
PAPERS = dict(opt="sgd", nesterov=True, wd=5e-4, wd_exclude=["norm"], head_lr=2.0, clip=5.0,
              accum=2)  # fmt: skip
POLY = Schedule("poly", 0.01, warmup_steps=4, power=2.0)


@pytest.mark.slow
def test_sgd_poly_accumulation_and_clipping_resume_exactly(syn, tmp_path, tmp_path_factory):
    ref = learner(syn, tmp_path_factory.mktemp("ref-sgd"), "arcface", **PAPERS)
    ref.fit_schedule(EPOCHS, POLY, cbs=[Checkpoint(LR, 0, 0)])
    learn = learner(syn, tmp_path, "arcface", **PAPERS)
    with pytest.raises(SystemExit):  # dies in epoch 1's batch 2, its gradients pending
        learn.fit_schedule(EPOCHS, POLY, cbs=[Checkpoint(LR, every_steps=1), Kill(12)])
    state = load_checkpoint(tmp_path)
    # checkpoints wait for the step: the last one is after batch 1 (the step), not batch 2
    assert (state["meta"]["epoch"], state["meta"]["batch"]) == (1, 2)
    resumed = learner(syn, tmp_path, "arcface", seed=1234, **PAPERS)
    restore_weights(resumed, state)
    cb = ResumeFrom(state)
    resumed.fit_schedule(EPOCHS, POLY, start_epoch=cb.epoch0, cbs=[Checkpoint(LR, 0, 0), cb])
    assert same(weights(resumed), weights(ref))
    assert resumed.recorder.hps["lr"][-1] == ref.recorder.hps["lr"][-1]


@pytest.mark.slow
def test_a_checkpoint_from_before_parameter_groups_loads_into_them(syn, tmp_path):
    """Runs written with one fastai Adam group (before wd_exclude) resume with the default
    groups: each parameter gets its own moments back."""
    old = learner(syn, tmp_path, "center", wd_exclude=[])  # one group, as before
    old.fit(1, LR, cbs=[Checkpoint(LR, 0, 0)])
    state = load_checkpoint(tmp_path)
    assert len(state["opt"]["hypers"]) == 1
    new = learner(syn, tmp_path, "center")  # norm and bias spared: two groups
    assert len(new.opt.param_lists if new.opt else new.param_groups.params) == 2
    restore_weights(new, state)
    by_param = dict(zip([id(p) for p in old.model.parameters()], old.opt.state_dict()["state"]))
    for p_old, p_new in zip(old.model.parameters(), new.model.parameters(), strict=True):
        saved = by_param[id(p_old)]
        for k, v in new.opt.state[p_new].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, saved[k]), k


@pytest.mark.slow
def test_without_the_training_state_a_resume_is_not_exact(syn, tmp_path, reference):
    """The test above can fail: the generators, loss smoothing and callbacks' states matter."""
    learn = learner(syn, tmp_path, "center")
    with pytest.raises(SystemExit):
        learn.fit_one_cycle(EPOCHS, LR, cbs=[Checkpoint(LR, every_steps=1), Kill(13)])
    resumed, _ = resume(syn, tmp_path, "center", drop_train_state=True)
    assert not same(weights(resumed), reference["center", "off"][0])


class SignalAt(Callback):
    """Sends this process ``sig`` at the ``n``-th ``event`` of ``epoch``, as a cluster's
    scheduler would (before Checkpoint, 61, sees the event)."""

    order = 55

    def __init__(self, event: str, epoch: int, n: int = 1, sig: int = signal.SIGTERM):
        self.event, self.at_epoch, self.n, self.sig, self.seen = event, epoch, n, sig, 0

    def _fire(self, event: str) -> None:
        if event == self.event and self.epoch == self.at_epoch:
            self.seen += 1
            if self.seen == self.n:
                os.kill(os.getpid(), self.sig)  # the handler runs here, in the main thread

    def after_batch(self) -> None:
        if self.training:
            self._fire("after_batch")

    def before_validate(self) -> None:
        self._fire("before_validate")


@pytest.mark.slow
@pytest.mark.parametrize(
    "event,epoch,n,sig,where",
    [
        # mid-epoch: checkpoint after the step in progress
        ("after_batch", 0, 5, signal.SIGTERM, (0, 5)),
        ("after_batch", 1, 2, signal.SIGINT, (1, 2)),  # Ctrl-C
        # during validation: resume where training ended
        ("before_validate", 1, 1, signal.SIGTERM, (1, 9)),
    ],
)
def test_a_signal_writes_a_checkpoint_and_stops(
    syn, tmp_path, reference, event, epoch, n, sig, where
):
    learn = learner(syn, tmp_path, "arcface")
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopSignals() as stop, pytest.raises(RunInterrupted) as e:
        ckpt = Checkpoint(LR, every_steps=0, every_minutes=0, stop=stop)
        learn.fit_one_cycle(EPOCHS, LR, cbs=[ckpt, SignalAt(event, epoch, n=n, sig=sig)])
    assert e.value.signum == sig and "--resume" in e.value.message
    assert {s: signal.getsignal(s) for s in before} == before  # handlers put back
    resumed, meta = resume(syn, tmp_path, "arcface")
    assert (meta["epoch"], meta["batch"]) == where
    assert same(weights(resumed), reference["arcface", "off"][0])


# -- the command line, in real processes ----------------------------------------------------
def _argv(syn: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(syn), "--img-size", "32", "--arch", "resnet18", "--emb-dim", "16",
        "--bs", "4", "--epochs", str(EPOCHS), "--lr", str(LR), "--val-pairs", "50",
        "--dropout", "0.2", "--precision", "fp32", "--threads", "1", "--workers", "0",
        "--progress", "false", "--run-dir", str(out), *extra,
    ]  # fmt: skip


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fvloss.recipes.center", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path, epoch: int, batch: int) -> dict:
    """Poll the run's record until a checkpoint at (epoch, >= batch) exists."""
    record, t0 = run / "checkpoints" / "last.json", time.time()
    while time.time() - t0 < 300:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it was killed:\n{proc.stdout.read()}")
        try:
            meta = json.loads(record.read_text())
        except (OSError, ValueError):
            meta = None
        if meta and (meta["epoch"], meta["batch"]) >= (epoch, batch) and meta["batch"] > 0:
            return meta
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no checkpoint appeared in 300 s")


@pytest.fixture(scope="module")
def cli_reference(syn, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("cli") / "ref"
    assert center.main(_argv(syn, run)) == 0
    return torch.load(run / "model.pth", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_command_line_run_resumes_to_the_same_model(syn, tmp_path, cli_reference, sig):
    run = tmp_path / "run"
    proc = _start(_argv(syn, run, "--checkpoint-steps", "1"))
    _wait_for_checkpoint(proc, run, 1, 2)  # mid epoch 1, whatever moment the signal meets
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:  # a clean stop: its checkpoint, a message, the shell's 143
        assert proc.returncode == 128 + signal.SIGTERM, out
        assert "stopped: SIGTERM at epoch 1" in out and "--resume" in out and "Traceback" not in out
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (run / "model.pth").exists()
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    assert meta["epoch"] == 1 and 0 < meta["batch"] < meta["n_iter"]
    assert center.main(["--resume", str(run), "--progress", "false"]) == 0
    resumed = torch.load(run / "model.pth", weights_only=True)
    assert same(resumed, cli_reference)
