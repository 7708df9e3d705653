"""``face_learner``: a fastai ``Learner`` for face-embedding training in one call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastai.callback.progress  # noqa: F401  (adds the progress bars to every Learner)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle and lr_find)
import torch
from fastai.callback.core import Callback
from fastai.learner import Learner, Recorder
from fastai.optimizer import Adam

from .callbacks.center import CenterLoss
from .callbacks.margin import MarginSchedule
from .callbacks.timing import TimeBreakdown
from .eval.callback import HeldOutPairs, VerifyPairs
from .heads import Head, MarginHead, make_head
from .model import EmbeddingNet, FaceNet
from .seeded import SetEpoch

__all__ = ["face_learner", "FaceLoss", "HideValidLoss", "LOSSES"]

LOSSES = ("softmax", "center", "arcface", "cosface")


class FaceLoss:
    """The Learner's loss: the head's loss on training batches.

    In eval mode ``FaceNet`` returns embeddings and the validation identities are not classes
    of the head, so there is no classification loss to compute; validation reports verification
    metrics instead (see :class:`HideValidLoss`). A class rather than a lambda so that
    ``learn.export`` can pickle it.
    """

    def __init__(self, head: Head):
        self.head = head

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.head.training:
            return pred.new_zeros(())
        return self.head.loss(pred, target)


class HideValidLoss(Callback):
    """Drops fastai's ``valid_loss`` column, which means nothing for a held-out-identity split,
    so the progress table shows train_loss and the verification metrics."""

    order = Recorder.order + 1  # after the Recorder has built its names / appended its values,
    # before ProgressCallback (60) prints the header

    def before_fit(self) -> None:
        names = list(self.recorder.metric_names)
        if "valid_loss" in names:
            names.remove("valid_loss")
            self.recorder.metric_names = type(self.recorder.metric_names)(names)

    def before_validate(self) -> None:
        self._n = len(self.recorder.log)

    def after_validate(self) -> None:
        log = list(self.recorder.log)
        if self.recorder.valid_metrics and len(log) > self._n:
            del log[self._n]  # the Recorder appends the valid loss first, then the metrics
            self.recorder.log = type(self.recorder.log)(log)


def face_learner(
    dls,
    loss: str = "arcface",
    arch: str = "resnet34",
    emb_dim: int = 128,
    pretrained: bool = False,
    dropout: float = 0.0,
    head_kwargs: dict[str, Any] | None = None,
    center_lam: float = 0.003,
    center_alpha: float = 0.5,
    margin_hold: float = 0.0,
    margin_warmup: float = 0.0,
    n_classes: int | None = None,
    val_pairs: int | None = 3000,
    val_seed: int = 0,
    opt_func: Callable = Adam,
    wd: float = 0.0,
    channels_last: bool = True,
    compile: bool = False,
    cbs: list[Callback] | None = None,
    metrics: list | None = None,
    **kwargs: Any,
) -> Learner:
    """A ``Learner`` that trains ``EmbeddingNet(arch, emb_dim)`` with the cost function ``loss``.

    Args:
        dls: ``DataLoaders`` from :func:`fvloss.data.face_dls` (or any with integer labels;
            then pass ``n_classes``).
        loss: ``"softmax"``, ``"center"`` (softmax + :class:`CenterLoss`), ``"arcface"``,
            ``"cosface"``.
        head_kwargs: passed to the head, e.g. ``{"s": "auto", "m": 0.5}`` for ArcFace.
        val_pairs: verification pairs drawn from the validation identities every epoch (AUC,
            10-fold accuracy, TAR@FAR, EER in the progress table); ``None`` to skip.
        val_seed: the seed of that draw (the recipes pass the run's seed).
        margin_hold, margin_warmup: ArcFace/CosFace margin schedule as fractions of training
            (:class:`~fvloss.callbacks.margin.MarginSchedule`); 0, 0 = the full margin throughout.
        wd: weight decay; 0 like the assignment's ``torch.optim.Adam``.
        channels_last: NHWC weights, faster for convolutions on CPU and tensor cores.
        compile: ``torch.compile`` the body in place (its weights keep their names, so
            checkpoints and ``model.pth`` do not change). Measured slower on this project's
            2-core CPU (0.87-0.93x eager, ``bench/cpu_defaults.py``): off by default.

    In eval mode ``learn.model`` returns embeddings: ``learn.get_preds()`` embeds a DataLoader.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    n_classes = n_classes or getattr(dls, "n_classes", None) or dls.c
    head = make_head(loss, emb_dim, n_classes, **(head_kwargs or {}))
    model = FaceNet(EmbeddingNet(arch, emb_dim, pretrained=pretrained, dropout=dropout), head)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.embedder.compile()
    # epoch e's shuffle and augmentation (fvloss.seeded); where each epoch's seconds go
    cbs = [SetEpoch(), TimeBreakdown(), *(cbs or [])]
    if loss == "center":
        cbs.append(CenterLoss(n_classes, emb_dim, lam=center_lam, alpha=center_alpha))
    if (margin_hold or margin_warmup) and isinstance(head, MarginHead):
        cbs.append(MarginSchedule(margin_hold, margin_warmup))
    metrics = list(metrics or [])
    if val_pairs:
        # held-out identities first: their columns lead the table, protocols' (cbs) follow
        cbs = [VerifyPairs(HeldOutPairs(n_pairs=val_pairs, seed=val_seed)), *cbs, HideValidLoss()]
    learn = Learner(
        dls,
        model,
        loss_func=FaceLoss(head),
        opt_func=opt_func,
        wd=wd,
        cbs=cbs,
        metrics=metrics,
        **kwargs,
    )
    return learn
