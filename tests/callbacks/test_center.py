"""Center loss: the term and the update rule on hand-computed numbers, and the callback inside a
tiny Learner (loss, center updates, skipped steps, where the centers live)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback, CancelStepException

from fvloss.callbacks import CPUAutocast
from fvloss.callbacks.center import CENTERS, CenterLoss, center_loss_term, center_update
from fvloss.data import face_dls
from fvloss.data.synthetic import SyntheticSpec, make_synthetic
from fvloss.learner import face_learner

# ----------------------------------------------------------------------------- the formulas

# Three 2-D features of classes 0, 1, 1; class 2 is absent from the batch.
FEATS = [[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]]
CENTERS0 = [[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]
TARGET = [0, 1, 1]


def test_center_loss_term_by_hand():
    feats, centers = torch.tensor(FEATS), torch.tensor(CENTERS0)
    target = torch.tensor(TARGET)
    # 1/2 ||x - c_y||^2: 1/2 (1 + 4) = 2.5; 1/2 ((3-1)^2 + (0-1)^2) = 2.5; 1/2 (1 + 1) = 1
    assert center_loss_term(feats, centers, target, "sum").item() == pytest.approx(6.0)
    assert center_loss_term(feats, centers, target, "mean").item() == pytest.approx(2.0)
    assert center_loss_term(feats, centers, target).item() == pytest.approx(2.0)  # default mean


def test_center_loss_term_gradient_by_hand():
    feats = torch.tensor(FEATS, requires_grad=True)
    centers = torch.tensor(CENTERS0)
    center_loss_term(feats, centers, torch.tensor(TARGET), "mean").backward()
    # d/dx_i of mean_i 1/2 ||x_i - c_yi||^2 = (x_i - c_yi) / 3
    expected = np.array([[1.0, 2.0], [2.0, -1.0], [-1.0, -1.0]]) / 3
    np.testing.assert_allclose(feats.grad.numpy(), expected, rtol=1e-6)


def test_center_loss_term_bf16_features_give_float32():
    feats = torch.tensor(FEATS).to(torch.bfloat16)
    term = center_loss_term(feats, torch.tensor(CENTERS0), torch.tensor(TARGET), "sum")
    assert term.dtype == torch.float32 and term.item() == pytest.approx(6.0)


def test_center_update_by_hand():
    centers = torch.tensor(CENTERS0)
    center_update(centers, torch.tensor(FEATS), torch.tensor(TARGET), alpha=0.5)
    # class 0: n=1, sum(c - x) = (-1, -2), delta = (-1, -2)/2, c = 0 - 0.5 delta = (0.25, 0.5)
    # class 1: n=2, sum(c - x) = (1-3, 1-0) + (1-0, 1-0) = (-1, 2), delta = (-1, 2)/3,
    #          c = (1, 1) - 0.5 (-1/3, 2/3) = (7/6, 2/3)
    # class 2: absent, unchanged
    expected = [[0.25, 0.5], [7 / 6, 2 / 3], [5.0, 5.0]]
    np.testing.assert_allclose(centers.numpy(), expected, rtol=1e-6)


def test_center_update_leaves_invalid_samples_out():
    """valid=False rows (non-finite features of a skipped fp16 step) count as absent."""
    feats = torch.tensor([*FEATS, [float("nan"), 1.0], [float("inf"), 0.0]])
    target = torch.tensor([*TARGET, 0, 2])
    ok = torch.isfinite(feats).all(1)
    a, b = torch.tensor(CENTERS0), torch.tensor(CENTERS0)
    center_update(a, feats, target, 0.5, valid=ok)
    center_update(b, torch.tensor(FEATS), torch.tensor(TARGET), 0.5)
    assert torch.equal(a, b)


def test_center_update_alpha_one_single_sample():
    # alpha=1, one sample: c <- c - (c - x)/2, halfway to x
    centers = torch.tensor([[2.0, -2.0], [9.0, 9.0]])
    center_update(centers, torch.tensor([[0.0, 0.0]]), torch.tensor([0]), alpha=1.0)
    np.testing.assert_allclose(centers.numpy(), [[1.0, -1.0], [9.0, 9.0]])


def test_center_loss_rejects_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        CenterLoss(3, 2, reduction="max")


# ----------------------------------------------------------------------------- in a Learner


def center_learner(dls, center_lam=None, center_alpha=None, **kw):
    settings = {k: v for k, v in (("lam", center_lam), ("alpha", center_alpha)) if v is not None}
    kw = {"arch": "resnet18", "emb_dim": 8, "val_pairs": None, "settings": settings, **kw}
    learn = face_learner(dls, loss="center", **kw)
    learn.remove_cb(learn.progress)  # no progress bars in test logs
    return learn


def centers_of(learn) -> torch.Tensor:
    return getattr(learn.model, CENTERS)


class Spy(Callback):
    """Records, for every training batch, the loss before and after CenterLoss's after_loss,
    the embeddings, the targets and the centers before and after the step."""

    order = CenterLoss.order - 1

    def __init__(self):
        self.rows: list[dict] = []
        self.after_step_calls = 0

    def before_fit(self):
        self._h = self.learn.model.embedder.register_forward_hook(self._grab)

    def _grab(self, mod, inp, out):
        self._feats = out.detach().clone()

    def after_loss(self):
        if self.training:
            self.rows.append(
                {
                    "loss0": self.learn.loss_grad.detach().clone(),
                    "feats": self._feats,
                    "y": self.learn.yb[0].clone(),
                    "centers0": centers_of(self.learn).clone(),
                }
            )

    def after_step(self):
        self.after_step_calls += 1

    def after_batch(self):
        if self.training and self.rows and "centers1" not in self.rows[-1]:
            self.rows[-1]["centers1"] = centers_of(self.learn).clone()

    def after_fit(self):
        self._h.remove()


class SpyAfter(Callback):
    """The loss after CenterLoss's after_loss."""

    order = CenterLoss.order + 1

    def __init__(self, spy: Spy):
        self.spy = spy

    def after_loss(self):
        if self.training:
            self.spy.rows[-1]["loss1"] = self.learn.loss_grad.detach().clone()
            self.spy.rows[-1]["loss_rec"] = self.learn.loss.detach().clone()


def reference_update(centers, feats, y, alpha):
    """The paper's rule written as a loop."""
    out = centers.clone().double()
    for j in range(len(centers)):
        mask = y == j
        if mask.any():
            delta = (centers[j].double() - feats[mask].double()).sum(0) / (1 + mask.sum())
            out[j] = centers[j].double() - alpha * delta
    return out


def test_callback_adds_lam_term_and_moves_centers(dls):
    spy = Spy()
    learn = center_learner(dls, center_lam=0.25, center_alpha=0.5, cbs=[spy, SpyAfter(spy)])
    learn.fit(1, 1e-3)
    assert len(spy.rows) == len(dls.train) == 2
    for k, r in enumerate(spy.rows):
        term = center_loss_term(r["feats"], r["centers0"], r["y"], "mean")
        assert term.item() > 0
        torch.testing.assert_close(r["loss1"], r["loss0"] + 0.25 * term, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["loss_rec"], r["loss1"])  # what the Recorder sees
        expected = reference_update(r["centers0"], r["feats"], r["y"], 0.5)
        torch.testing.assert_close(r["centers1"].double(), expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(r["centers1"], r["centers0"])
        absent = torch.ones(dls.n_classes, dtype=torch.bool)
        absent[r["y"]] = False
        assert torch.equal(r["centers1"][absent], r["centers0"][absent])
        if k:  # the next batch starts from the previous batch's updated centers
            assert torch.equal(r["centers0"], spy.rows[k - 1]["centers1"])


def test_sum_reduction_in_learner(dls):
    spy = Spy()
    learn = center_learner(dls, cbs=[spy, SpyAfter(spy)])
    learn.cbs.filter(lambda c: isinstance(c, CenterLoss))[0].reduction = "sum"
    learn.fit(1, 1e-3)
    r = spy.rows[0]
    term = center_loss_term(r["feats"], r["centers0"], r["y"], "sum")
    torch.testing.assert_close(r["loss1"], r["loss0"] + 0.003 * term, rtol=1e-5, atol=1e-6)


class SkipSteps(Callback):
    """Cancels every optimizer step before CenterLoss sees it (like a GradScaler overflow)."""

    order = CenterLoss.order - 2

    def before_step(self):
        raise CancelStepException()


def test_no_center_update_on_a_skipped_step(dls):
    spy = Spy()
    learn = center_learner(dls, cbs=[SkipSteps(), spy])
    weights0 = {k: v.clone() for k, v in learn.model.named_parameters()}
    learn.fit(1, 1e-2)
    assert spy.after_step_calls == len(dls.train) == 2  # fastai still called after_step
    assert torch.count_nonzero(centers_of(learn)) == 0  # initial zeros, never moved
    for r in spy.rows:
        assert torch.equal(r["centers1"], r["centers0"])
    for k, v in learn.model.named_parameters():
        assert torch.equal(v, weights0[k]), k  # and the step really was skipped


def test_centers_are_a_model_buffer_not_a_parameter(dls):
    learn = center_learner(dls, wd=0.5, center_alpha=0.0)
    state = learn.model.state_dict()
    assert CENTERS in state and state[CENTERS].shape == (dls.n_classes, 8)
    assert CENTERS in dict(learn.model.named_buffers())
    centers_of(learn).fill_(1.0)
    learn.fit(1, 1e-2)
    centers = centers_of(learn)
    assert all(p is not centers for p in learn.model.parameters())
    ptrs = {p.data_ptr() for group in learn.opt.param_lists for p in group}
    assert centers.data_ptr() not in ptrs
    # alpha=0: the paper's rule does not move them, and weight decay must not either
    assert torch.equal(centers, torch.ones_like(centers))


def test_with_cpu_autocast(dls):
    # bf16 embeddings: the term and the update are computed in float32, the centers stay float32
    spy = Spy()
    learn = center_learner(dls, center_lam=0.25, cbs=[CPUAutocast(), spy, SpyAfter(spy)])
    learn.fit(1, 1e-3)
    r = spy.rows[0]
    assert r["feats"].dtype == torch.bfloat16
    term = center_loss_term(r["feats"], r["centers0"], r["y"], "mean")
    assert r["loss1"].dtype == torch.float32
    torch.testing.assert_close(r["loss1"], r["loss0"] + 0.25 * term, rtol=1e-5, atol=1e-6)
    centers = centers_of(learn)
    assert centers.dtype == torch.float32 and torch.isfinite(centers).all()
    expected = reference_update(r["centers0"], r["feats"].float(), r["y"], 0.5)
    torch.testing.assert_close(r["centers1"].double(), expected, rtol=1e-5, atol=1e-6)


def test_callback_needs_an_embedder_or_layer():
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from torch.utils.data import TensorDataset

    ds = TensorDataset(torch.randn(8, 4), torch.arange(8) % 2)
    dl = DataLoaders.from_dsets(ds, ds, bs=4, num_workers=0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    lossf = torch.nn.CrossEntropyLoss()
    learn = Learner(dl, model, loss_func=lossf, cbs=[CenterLoss(2, 3)])
    with pytest.raises(AttributeError, match="embedder"):
        with learn.no_bar():
            learn.fit(1)
    # with layer= it works on any model
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    learn2 = Learner(dl, model2, loss_func=lossf, cbs=[CenterLoss(2, 3, layer=lambda m: m[0])])
    with learn2.no_bar():
        learn2.fit(1, 1e-3)
    centers = getattr(model2, CENTERS)
    assert centers.shape == (2, 3) and torch.count_nonzero(centers) > 0


def test_gradient_accumulation_updates_once_per_real_step_with_every_batch(tmp_path):
    """With fastai's GradientAccumulation, one real step moves the centers with the features
    of every accumulated batch, and the batches in between do not move them."""
    from fastai.callback.training import GradientAccumulation

    root = make_synthetic(SyntheticSpec(6, 4, 32, 0), tmp_path / "syn", quiet=True)
    dls = face_dls(root, img_size=32, bs=4, num_workers=0, valid_pct=0.2)

    class Spy(Callback):
        order = 1  # before everything else in the loss/step events

        def before_fit(self):
            self.feats, self.targets, self.snapshots, self.steps = [], [], [], 0

        def after_pred(self):
            if self.training:
                self.feats.append(self.learn.model.embedder(self.learn.xb[0]).detach().float())

        def before_batch(self):
            if self.training:
                self.targets.append(self.learn.yb[0])
                self.snapshots.append(getattr(self.learn.model, CENTERS).clone())

    spy = Spy()
    learn = face_learner(
        dls, loss="center", arch="resnet18", emb_dim=8, val_pairs=None, settings={"alpha": 0.5}
    )
    learn.model.eval()  # BN in eval: re-running the embedder in the spy gives the same features
    learn.model.train = lambda mode=True: learn.model  # keep BN frozen during the fit
    learn.fit(1, 0.0, cbs=[GradientAccumulation(n_acc=8), spy])  # 2 batches of 4 per real step
    # lr 0: weights never move, so centers after the first real step (2 batches) are exactly
    # one update with both batches' features
    assert len(spy.snapshots) >= 3
    expected = spy.snapshots[0].clone()
    center_update(expected, torch.cat(spy.feats[:2]), torch.cat(spy.targets[:2]), 0.5)
    torch.testing.assert_close(spy.snapshots[2], expected)
    torch.testing.assert_close(spy.snapshots[1], spy.snapshots[0])  # no move after batch 1
