"""face_learner for every loss: outputs, the progress table, save/load and lr_find."""

from __future__ import annotations

import math

import pytest
import torch
from fastai.callback.core import Callback

from fvloss.callbacks.center import CENTERS, CenterLoss
from fvloss.heads import ArcFaceHead, CosFaceHead, SoftmaxHead
from fvloss.learner import LOSSES, FaceLearner, FaceRecorder, face_learner

EMB = 8


def learner(dls, loss, **kw):
    kw = {"arch": "resnet18", "emb_dim": EMB, "val_pairs": None, **kw}
    learn = face_learner(dls, loss=loss, **kw)
    learn.remove_cb(learn.progress)  # no progress bars in test logs
    learn.logger = lambda *a: None
    return learn


def state(learn) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


HEAD_TYPES = {
    "softmax": SoftmaxHead,
    "center": SoftmaxHead,
    "arcface": ArcFaceHead,
    "cosface": CosFaceHead,
}


@pytest.mark.parametrize("loss", list(HEAD_TYPES))
def test_model_returns_embeddings_in_every_mode(dls, loss):
    learn = learner(dls, loss)
    assert type(learn.model.head) is HEAD_TYPES[loss]
    assert learn.loss_func is learn.model.head  # the head is the loss, and part of the model
    assert any(isinstance(c, CenterLoss) for c in learn.cbs) == (loss == "center")
    x = torch.randn(4, 3, 32, 32)
    learn.model.eval()
    with torch.no_grad():
        emb_eval = learn.model(x)
    learn.model.train()
    assert emb_eval.shape == learn.model(x).shape == (4, EMB)
    # the head takes (embeddings, labels) and returns the loss; its logits stay for accuracy
    y = torch.arange(4) % dls.n_classes
    loss_value = learn.loss_func(learn.model(x), y)
    assert loss_value.ndim == 0 and torch.isfinite(loss_value)
    assert learn.model.head.last_logits.shape == (4, dls.n_classes)


@pytest.mark.slow
def test_every_registered_loss_trains(dls):
    for loss in LOSSES:
        learn = learner(dls, loss)
        learn.fit(1, 1e-3)
        assert math.isfinite(learn.recorder.values[-1][0]), loss


def test_unknown_loss_or_setting(dls):
    with pytest.raises(ValueError, match="triplet"):
        face_learner(dls, loss="triplet", arch="resnet18")
    with pytest.raises(ValueError, match="unknown setting 'margin' of loss 'arcface'"):
        face_learner(dls, loss="arcface", arch="resnet18", settings={"margin": 0.5})


def test_settings_reach_the_head(dls):
    learn = learner(dls, "arcface", settings={"s": "auto", "m": 0.3, "easy_margin": True})
    head = learn.model.head
    assert head.s == pytest.approx(math.sqrt(2) * math.log(dls.n_classes - 1))
    assert (head.m, head.easy_margin, head.n_classes) == (0.3, True, dls.n_classes)


@pytest.mark.parametrize("loss", list(HEAD_TYPES))
def test_one_epoch_progress_table(dls, loss):
    learn = learner(dls, loss, val_pairs=50)
    assert isinstance(learn, FaceLearner) and learn.held_out
    assert isinstance(learn.recorder, FaceRecorder)
    learn.fit(1, 1e-3)
    names = list(learn.recorder.metric_names)
    assert names == ["epoch", "train_loss", "auc", "acc", "tar@1e-3", "eer", "time"]
    assert "valid_loss" not in names
    values = learn.recorder.values
    assert len(values) == 1 and len(values[0]) == len(names) - 2  # no epoch, no time
    row = dict(zip(names[1:-1], values[0]))
    assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
    assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["eer"] <= 1.0
    # get_preds embeds the validation set
    preds, _ = learn.get_preds()
    assert preds.shape == (len(dls.valid_ds), EMB)


def test_validation_of_training_identities_has_a_valid_loss(dls):
    """Outside face_dls's identity split (validation images of the head's own classes, as in
    another project's DataLoaders), fastai's loop runs as is: valid_loss is the head's loss."""
    # a head with a class for every identity, so the validation labels are its classes too
    learn = learner(dls, "softmax", val_pairs=None, held_out=False, n_classes=len(dls.vocab))
    assert type(learn.recorder).__name__ == "Recorder"
    learn.fit(1, 1e-3)
    assert list(learn.recorder.metric_names) == ["epoch", "train_loss", "valid_loss", "time"]
    valid_loss = learn.recorder.values[0][1]
    assert math.isfinite(valid_loss) and valid_loss > 0


def test_held_out_validation_never_calls_the_head(dls):
    learn = learner(dls, "arcface", val_pairs=None)
    calls = []
    learn.model.head.register_forward_hook(lambda m, i, o: calls.append(m.training))
    learn.fit(1, 1e-3)
    assert calls and all(calls)  # training batches only
    assert list(learn.recorder.metric_names) == ["epoch", "train_loss", "time"]
    preds, _ = learn.get_preds()
    assert preds.shape == (len(dls.valid_ds), EMB)


# ----------------------------------------------------------------------------- save / load


# heads with buffers: CurricularFace's t, AdaFace's norm statistics, SphereFace's step count
@pytest.mark.parametrize("loss", ["arcface", "center", "adaface", "curricularface", "sphereface"])
def test_save_load_round_trip(dls, tmp_path, loss):
    learn = learner(dls, loss, path=tmp_path)
    learn.fit(1, 1e-3)
    saved = state(learn)
    if loss == "center":
        assert torch.count_nonzero(saved[CENTERS]) > 0  # trained centers, not the zeros
    learn.save("ck")
    assert (tmp_path / "models" / "ck.pth").exists()
    fresh = learner(dls, loss, path=tmp_path)
    before = state(fresh)
    w = "head.fc.weight" if loss == "center" else "head.weight"
    assert not torch.equal(before[w], saved[w])
    fresh.load("ck")  # before any fit: the centers buffer already exists
    assert_same_state(state(fresh), saved)
    opt_a, opt_b = learn.opt.state_dict(), fresh.opt.state_dict()
    assert len(opt_a["state"]) == len(opt_b["state"])
    for sa, sb in zip(opt_a["state"], opt_b["state"]):
        assert sa.keys() == sb.keys()
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                assert torch.equal(sa[k], sb[k]), k
    # and the loaded learner trains on
    fresh.fit(1, 1e-3)
    assert math.isfinite(fresh.recorder.values[-1][0])


# ----------------------------------------------------------------------------- lr_find


class SeeBeforeRestore(Callback):
    """Keeps the model state at the end of lr_find, before LRFinder puts the weights back."""

    order = 55  # LRFinder (a ParamScheduler) is 60

    def after_fit(self):
        self.state = {k: v.detach().clone() for k, v in self.learn.model.state_dict().items()}


@pytest.mark.parametrize("loss", ["arcface", "center", "adaface", "curricularface", "sphereface"])
def test_lr_find_restores_everything(dls, loss):
    learn = learner(dls, loss)
    if loss == "center":
        getattr(learn.model, CENTERS).normal_()
    before = state(learn)
    spy = SeeBeforeRestore()
    learn.add_cb(spy)
    sugg = learn.lr_find(num_it=5, show_plot=False)
    assert sugg.valley > 0 and len(learn.recorder.lrs) >= 5
    # lr_find did move weights, BN statistics and centers ...
    moved = [k for k in before if not torch.equal(before[k], spy.state[k])]
    assert "embedder.neck.0.running_mean" in moved
    assert any(k.startswith("head.") for k in moved)
    if loss == "center":
        assert CENTERS in moved
    buffers = {"adaface": "head.batch_mean", "curricularface": "head.t", "sphereface": "head.it"}
    if loss in buffers:
        assert buffers[loss] in moved  # the head's state moved too
    # ... and put every one of them back
    assert_same_state(state(learn), before)
