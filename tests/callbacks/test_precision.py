"""Mixed precision per device: which callback is chosen, and what CPUAutocast really does."""

from __future__ import annotations

import pytest
import torch
from fastai.callback.core import (
    Callback,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
)
from fastai.callback.fp16 import MixedPrecision
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from torch import nn
from torch.utils.data import TensorDataset

from fvloss.callbacks import precision as P
from fvloss.callbacks.precision import CPUAutocast, mixed_precision_cb, probe_cpu_bf16
from fvloss.learner import face_learner

CPU = torch.device("cpu")


def tiny_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    )


# ----------------------------------------------------------------------------- the choice


def test_fp32_is_no_callback():
    cb, why = mixed_precision_cb("fp32", CPU)
    assert cb is None and "fp32" in why
    cb, why = mixed_precision_cb("fp32", "cuda")
    assert cb is None


def test_bf16_on_cpu_is_cpu_autocast():
    cb, why = mixed_precision_cb("bf16", CPU)
    assert isinstance(cb, CPUAutocast) and cb.dtype == torch.bfloat16
    assert "bf16" in why
    assert cb.order == MixedPrecision.order


def test_fp16_on_cpu_raises():
    with pytest.raises(ValueError, match="CUDA"):
        mixed_precision_cb("fp16", CPU)


def test_unknown_precision_raises():
    with pytest.raises(ValueError, match="precision"):
        mixed_precision_cb("fp8", CPU)


@pytest.mark.parametrize(
    ("precision", "mode"), [("auto", "fp16"), ("fp16", "fp16"), ("bf16", "bf16")]
)
def test_cuda_uses_fastai_mixed_precision(precision, mode):
    # choosing does not touch the GPU, so this runs anywhere
    cb, _ = mixed_precision_cb(precision, torch.device("cuda"))
    assert type(cb) is MixedPrecision and cb.amp_mode.value == mode


def test_other_devices_fall_back_to_fp32():
    cb, why = mixed_precision_cb("auto", torch.device("meta"))
    assert cb is None and "fp32" in why


def test_auto_on_cpu_real():
    model, x = tiny_model(), torch.randn(4, 3, 8, 8)
    cb, why = mixed_precision_cb("auto", CPU, model, x)
    assert cb is None or isinstance(cb, CPUAutocast)
    assert "probe" in why or "no native bf16" in why, why
    if isinstance(cb, CPUAutocast):
        assert "probe" in why


def test_auto_on_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_supported", lambda: False)
    monkeypatch.setattr(P, "probe_cpu_bf16", lambda *a, **k: pytest.fail("probe must not run"))
    cb, why = mixed_precision_cb("auto", CPU, tiny_model(), torch.randn(2, 3, 8, 8))
    assert cb is None and "no native bf16" in why


@pytest.mark.parametrize(
    ("bf16", "fp32", "chosen"), [(0.05, 0.1, True), (0.095, 0.1, False), (0.3, 0.1, False)]
)
def test_auto_on_cpu_follows_the_probe(monkeypatch, bf16, fp32, chosen):
    monkeypatch.setattr(P, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(P, "probe_cpu_bf16", lambda *a, **k: {"bf16": bf16, "fp32": fp32})
    cb, why = mixed_precision_cb("auto", CPU, tiny_model(), torch.randn(2, 3, 8, 8))
    assert isinstance(cb, CPUAutocast) if chosen else cb is None
    assert "probe" in why


def test_auto_on_cpu_without_a_sample(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_supported", lambda: True)
    cb, why = mixed_precision_cb("auto", CPU)
    assert cb is None and "probe" in why


def test_probe_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = tiny_model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = probe_cpu_bf16(model, torch.randn(4, 3, 8, 8) * 3 + 1, steps=1)
    assert set(t) == {"fp32", "bf16"} and all(v > 0 for v in t.values())
    assert not model.training  # mode restored
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:  # weights and BN running stats (which the probe's train-mode passes moved)
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- in a Learner


class Watch(Callback):
    """Records the dtype of a conv's output inside forward, of the prediction before and after
    CPUAutocast's after_pred, and whether autocast is on at each event."""

    def __init__(self, order: int):
        self.order, self.seen = order, []

    def before_fit(self):
        conv = self.learn.model.embedder.body.conv1
        self._h = conv.register_forward_hook(lambda m, i, o: self.seen.append(("conv", o.dtype)))

    def after_pred(self):
        self.seen.append((f"pred@{self.order}", self.learn.pred.dtype))

    def after_batch(self):
        self.seen.append(("autocast_after_batch", torch.is_autocast_enabled("cpu")))

    def after_fit(self):
        self._h.remove()


def test_cpu_autocast_in_a_learner(dls):
    early, late = Watch(CPUAutocast.order - 1), Watch(CPUAutocast.order + 1)
    learn = face_learner(
        dls,
        loss="softmax",
        arch="resnet18",
        emb_dim=8,
        val_pairs=None,
        cbs=[CPUAutocast(), early, late],
    )
    learn.remove_cb(learn.progress)
    learn.fit(1, 1e-3)
    seen = early.seen
    assert ("conv", torch.bfloat16) in seen and ("conv", torch.float32) not in seen
    # the softmax head's linear layer gives bf16 logits; CPUAutocast hands float32 on
    assert ("pred@9", torch.bfloat16) in seen
    assert ("pred@11", torch.float32) in late.seen
    assert ("pred@11", torch.bfloat16) not in late.seen
    assert ("autocast_after_batch", True) not in seen  # left after the loss, every batch
    assert not torch.is_autocast_enabled("cpu")
    assert torch.isfinite(torch.tensor(learn.recorder.values[-1][0]))
    # the weights stay float32: autocast only changes the compute dtype
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())


class CancelAfterPred(Callback):
    """Raises ``exc`` in after_pred of the first training batch: between CPUAutocast's
    before_batch (autocast entered) and its after_loss (autocast left)."""

    order = CPUAutocast.order + 1

    def __init__(self, exc):
        self.exc, self.done = exc, False

    def after_pred(self):
        if self.training and not self.done:
            self.done = True
            raise self.exc()


@pytest.mark.parametrize("exc", [CancelFitException, CancelEpochException, CancelTrainException])
def test_cpu_autocast_does_not_leak_when_cancelled(exc):
    ds = TensorDataset(torch.randn(16, 4), torch.arange(16) % 2)
    dls = DataLoaders.from_dsets(ds, ds, bs=4, num_workers=0)
    learn = Learner(
        dls,
        nn.Linear(4, 2),
        loss_func=nn.CrossEntropyLoss(),
        cbs=[CPUAutocast(), CancelAfterPred(exc)],
    )
    try:
        with learn.no_bar(), learn.no_logging():
            learn.fit(2, 1e-3)
        # autocast is thread-local state: a leak would make every later CPU op run in bf16
        assert not torch.is_autocast_enabled("cpu")
        x = torch.randn(3, 3)
        assert (x @ x).dtype == torch.float32
    finally:
        if torch.is_autocast_enabled("cpu"):  # don't poison the tests that follow
            torch.set_autocast_enabled("cpu", False)


def test_probe_results_are_cached_per_machine_and_model(tmp_path, monkeypatch):
    import fvloss.callbacks.precision as P

    calls = []

    def fake_probe(model, x, steps=3):
        calls.append(1)
        return {"fp32": 1.0, "bf16": 0.5}

    monkeypatch.setattr(P, "probe_cpu_bf16", fake_probe)
    monkeypatch.setattr(P, "cpu_bf16_supported", lambda: True)
    model, x = torch.nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8)
    cache = tmp_path / "probe.json"
    cb1, why1 = P.mixed_precision_cb("auto", CPU, model, x, cache=cache)
    cb2, why2 = P.mixed_precision_cb("auto", CPU, model, x, cache=cache)
    assert isinstance(cb1, P.CPUAutocast) and isinstance(cb2, P.CPUAutocast)
    assert len(calls) == 1 and "cached" in why2 and "cached" not in why1
    P.mixed_precision_cb("auto", CPU, model, torch.randn(2, 3, 16, 16), cache=cache)  # other shape
    assert len(calls) == 2
