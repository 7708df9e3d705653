"""``face_learner``: a fastai ``Learner`` for face-embedding training in one call."""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable
from typing import Any

import fastai.callback.progress  # noqa: F401  (adds the progress bars to every Learner)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle and lr_find)
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import LRFinder, ParamScheduler, valley
from fastai.learner import Learner, Recorder
from fastai.torch_core import get_model
from fastcore.foundation import L

from .callbacks.margin import MarginSchedule
from .callbacks.optim import Accumulate, ClipGradNorm, GroupHypers
from .callbacks.schedule import LRSchedule, Schedule
from .callbacks.timing import TimeBreakdown
from .callbacks.verify import HeldOutPairs, VerifyPairs
from .config import DEFAULTS
from .data.seeded import SetEpoch
from .losses import LOSSES, loss_spec
from .model import EmbeddingNet, FaceNet
from .optim import make_opt_func, param_groups

__all__ = ["face_learner", "FaceLearner", "FaceRecorder", "KeptLRFinder", "LOSSES"]


class FaceRecorder(Recorder):
    """fastai's Recorder for a learner whose validation set holds held-out identities: no
    ``valid_loss`` column (those identities are not classes of the head: there is no loss to
    average), so the table shows ``train_loss`` and the verification metrics. Everything else,
    and ``learn.recorder``, as fastai's."""

    @property
    def name(self) -> str:
        return "recorder"  # what fastai's pieces (progress bar, lr_find, plots) look up

    def before_fit(self) -> None:
        super().before_fit()
        self.metric_names = L(n for n in self.metric_names if n != "valid_loss")

    @property
    def _valid_mets(self) -> L:
        return L(m for m in super()._valid_mets if m is not self.loss)


class FaceLearner(Learner):
    """A ``Learner`` whose model returns embeddings and whose ``loss_func`` is the head.

    With ``held_out=True`` (face_dls's identity split) validation batches are embedded, never
    classified: the head is not called on identities it has no class for. Their embeddings
    (``learn.pred``) feed the verification metrics; ``get_preds()`` returns them. With
    ``held_out=False`` (validation images of the training identities) fastai's loop runs as is
    and ``valid_loss`` is the head's loss.
    """

    def __init__(self, *args: Any, held_out: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.held_out = held_out
        if held_out:
            self.remove_cb(Recorder)
            self.add_cb(FaceRecorder(train_metrics=False, valid_metrics=True))

    def lr_find(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 10,
        num_it: int = 100,
        stop_div: bool = True,
        show_plot: bool = True,
        suggest_funcs: tuple = (valley,),
    ):
        """fastai's ``lr_find`` (same arguments, same suggestions), with the weights restored
        from memory on every rank (:class:`KeptLRFinder`): under DDP every rank runs it together,
        one lr search over the global batch."""
        n_epoch = num_it // len(self.dls.train) + 1
        finder = KeptLRFinder(start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div)
        with self.no_logging():
            self.fit(n_epoch, cbs=finder)
        return self._lr_suggestions(num_it, show_plot, suggest_funcs)

    def _lr_suggestions(self, num_it: int, show_plot: bool, suggest_funcs: tuple | None):
        # fastai's: the recorded curve without its ends, cut at the first NaN
        lrs = torch.tensor(self.recorder.lrs[num_it // 10 : -5])
        losses = torch.tensor(self.recorder.losses[num_it // 10 : -5])
        if (nan := torch.nonzero(torch.isnan(losses.view(-1)))).numel():
            lrs, losses = lrs[: int(nan.min())], losses[: int(nan.min())]
        if suggest_funcs is None:
            return self.recorder.plot_lr_find() if show_plot else None
        funcs = suggest_funcs if isinstance(suggest_funcs, (tuple, list)) else (suggest_funcs,)
        names = [getattr(f, "__name__", None) or f.func.__name__ for f in funcs]  # (partials)
        found = [f(lrs, losses, num_it) for f in funcs]
        if show_plot:
            self.recorder.plot_lr_find(suggestions=[p for _, p in found], nms=names)
        return collections.namedtuple("SuggestedLRs", names)(*[lr for lr, _ in found])

    def fit_schedule(
        self, n_epoch: int, schedule: Schedule, start_epoch: int = 0, cbs: list | None = None
    ) -> None:
        """Fit ``n_epoch`` epochs under ``schedule`` (:class:`~fvloss.callbacks.schedule.Schedule`:
        ``one_cycle``, ``flat``, ``cosine``, ``poly`` or ``step``, with its warm-up), stepped
        per batch; what ``fvloss train`` runs."""
        self.fit(n_epoch, schedule.lr, start_epoch=start_epoch,
                 cbs=[LRSchedule(schedule, self.moms), *(cbs or [])])  # fmt: skip

    def _do_one_batch(self) -> None:
        if self.training or not self.held_out:
            return super()._do_one_batch()
        self.pred = self.model(*self.xb)
        self("after_pred")
        self("after_loss")  # no loss, but callbacks keep their event order


class KeptLRFinder(LRFinder):
    """fastai's ``LRFinder``, keeping the weights (and buffers: centers, heads' statistics) and
    the optimizer's state in memory instead of a file. fastai writes and reloads that file on
    rank 0 alone: under DDP the other ranks kept lr_find's weights and moments, and a sharded
    head's ``state_dict`` is a collective rank 0 cannot make alone. Here every rank restores
    its own."""

    @property
    def name(self) -> str:
        return "lr_finder"  # what callbacks look for (``hasattr(learn, "lr_finder")``)

    def before_fit(self) -> None:
        ParamScheduler.before_fit(self)
        model = get_model(self.learn.model)
        self.kept = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
        self.kept_opt = copy.deepcopy(self.learn.opt.state_dict())  # fit made one before this
        self.best_loss = float("inf")

    def after_fit(self) -> None:
        self.learn.opt.zero_grad()
        model = get_model(self.learn.model)
        with torch.no_grad():
            for t, k in zip((*model.parameters(), *model.buffers()), self.kept, strict=True):
                t.copy_(k)
        self.learn.opt.load_state_dict(self.kept_opt)
        self.kept = self.kept_opt = None


def face_learner(
    dls,
    loss: str = DEFAULTS.loss,
    arch: str = DEFAULTS.arch,
    emb_dim: int = DEFAULTS.emb_dim,
    pretrained: bool = DEFAULTS.pretrained,
    dropout: float = DEFAULTS.dropout,
    freeze_neck_scale: bool = DEFAULTS.freeze_neck_scale,
    settings: dict[str, Any] | None = None,
    partial_fc: float | None = DEFAULTS.partial_fc,
    margin_hold: float = DEFAULTS.margin_hold,
    margin_warmup: float = DEFAULTS.margin_warmup,
    n_classes: int | None = None,
    img_size: int | None = None,
    val_pairs: int | None = DEFAULTS.val_pairs,
    seed: int = DEFAULTS.seed,
    opt: str = DEFAULTS.opt,
    momentum: float = DEFAULTS.momentum,
    nesterov: bool = DEFAULTS.nesterov,
    beta2: float | None = DEFAULTS.beta2,
    eps: float | None = DEFAULTS.eps,
    wd: float = DEFAULTS.wd,
    wd_exclude: list[str] | tuple[str, ...] = tuple(DEFAULTS.wd_exclude),
    head_lr: float = DEFAULTS.head_lr,
    clip: float = DEFAULTS.clip,
    clip_part: str = DEFAULTS.clip_part,
    accum: int = DEFAULTS.accum,
    opt_func: Callable | None = None,
    channels_last: bool = DEFAULTS.channels_last,
    compile: bool = DEFAULTS.compile,
    held_out: bool | None = None,
    cbs: list[Callback] | None = None,
    metrics: list | None = None,
    **kwargs: Any,
) -> FaceLearner:
    """A ``Learner`` that trains ``EmbeddingNet(arch, emb_dim)`` with the cost function ``loss``.

    Every default is :data:`fvloss.config.DEFAULTS`' (what ``fvloss train`` uses), so
    ``face_learner(face_dls(root))`` builds the run ``fvloss train --data root`` builds;
    ``learn.settings`` records the settings it was built with, by their ``Config`` names.

    Args:
        dls: ``DataLoaders`` from :func:`fvloss.data.face_dls` (or any with integer labels;
            then pass ``n_classes``).
        loss: a registered loss (:data:`LOSSES`: ``"softmax"``, ``"center"``, ``"arcface"``,
            ``"cosface"``, ``"adaface"`` ...); its head is ``learn.model.head`` and
            ``learn.loss_func``, its callbacks (center loss's) are added.
        arch: a registered body (:data:`fvloss.bodies.BODIES`) or ``"timm:NAME"``.
        settings: the loss's settings over its defaults, e.g. ``{"s": "auto", "m": 0.5}`` for
            ArcFace (``fvloss.heads.loss_spec(loss).settings`` lists them); an unknown key is
            an error.
        partial_fc: a sample rate in (0, 1]: the head's classes split across the ranks and
            sampled per step (:class:`~fvloss.heads.partial_fc.PartialFCHead`: ArcFace, CosFace,
            the combined margin); 0 or None: the plain head.
        img_size: the input size, for bodies whose features are a flattened map (IR-ResNet,
            MobileFaceNet); default ``dls.img_size`` (face_dls), else 112.
        val_pairs: verification pairs drawn from the validation identities every epoch (AUC,
            10-fold accuracy, TAR@FAR, EER in the progress table); 0 or ``None`` to skip.
        seed: the seed of that draw (the runner passes the run's seed).
        margin_hold, margin_warmup: the margin schedule of heads with margins (``head.margins``)
            (:class:`~fvloss.callbacks.margin.MarginSchedule`); 0, 0 = the full margin throughout.
        opt, momentum, nesterov, beta2, eps: the optimiser (:data:`fvloss.optim.OPTIMIZERS`:
            ``"adam"`` fastai's, ``"adamw"`` and ``"sgd"`` torch's) and its settings;
            ``opt_func`` (any fastai ``opt_func``) replaces them.
        wd: weight decay; 0 like the assignment's ``torch.optim.Adam``.
        wd_exclude: parameters spared weight decay: ``"norm"``, ``"bias"``, ``"prelu"``
            (fastai's default: norm and bias; arcface_torch: none; AdaFace: norm).
        head_lr: the head's lr as a multiple of the body's (the lr you pass to ``fit``).
        freeze_neck_scale: the embedding BatchNorm's scale fixed at 1, as arcface_torch's
            iresnet (``features.weight.requires_grad = False``): its published runs need it.
        clip, clip_part: clip the gradient 2-norm of the embedder (``"body"``) or of
            everything (``"all"``) to ``clip`` before each step (0: off).
        accum: one optimiser step per ``accum`` batches (gradient accumulation).
        channels_last: NHWC weights, faster for convolutions on CPU and tensor cores.
        compile: ``torch.compile`` the body in place (its weights keep their names, so
            checkpoints and ``model.pth`` do not change). Measured slower on this project's
            2-core CPU (0.87-0.93x eager, ``bench/cpu_defaults.py``): off by default.
        held_out: whether the validation identities are others than the training ones (then
            validation embeds without a loss; see :class:`FaceLearner`); default: True for
            face_dls's identity split (``dls.valid_identities``), else False.

    ``learn.model`` returns embeddings in every mode: ``learn.get_preds()`` embeds a DataLoader.
    """
    spec = loss_spec(loss)
    n_classes = n_classes or getattr(dls, "n_classes", None) or dls.c
    head, loss_cbs = spec.build(emb_dim, n_classes, settings, partial_fc=partial_fc or None)
    img_size = img_size or getattr(dls, "img_size", None) or 112
    embedder = EmbeddingNet(
        arch, emb_dim, pretrained=pretrained, dropout=dropout, img_size=img_size
    )
    if freeze_neck_scale:  # arcface_torch's iresnet trains the embedding BN's shift only
        embedder.neck[-1].weight.requires_grad_(False)
    model = FaceNet(embedder, head)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.embedder.compile()
    # epoch e's shuffle and augmentation (fvloss.data.seeded); where each epoch's seconds go
    cbs = [SetEpoch(), TimeBreakdown(), *loss_cbs, *(cbs or [])]
    if (margin_hold or margin_warmup) and getattr(
        getattr(head, "margin_head", head), "margins", None
    ):
        cbs.append(MarginSchedule(margin_hold, margin_warmup))
    if val_pairs:
        # held-out identities first: their columns lead the table, protocols' (cbs) follow
        cbs = [VerifyPairs(HeldOutPairs(n_pairs=val_pairs, seed=seed)), *cbs]
    if held_out is None:
        held_out = hasattr(dls, "valid_identities")
    groups = param_groups(model, wd_exclude, head_lr)
    if not groups.plain:  # each group's lr multiple and weight-decay switch, at each step
        cbs.append(GroupHypers(groups.lr_mults, groups.decay))
    if clip:
        cbs.append(ClipGradNorm(clip, clip_part))
    if accum > 1:
        cbs.append(Accumulate(accum))
    learn = FaceLearner(
        dls,
        model,
        loss_func=head,
        opt_func=opt_func or make_opt_func(opt, momentum, nesterov, beta2, eps),
        splitter=groups.splitter,
        wd=wd,
        wd_bn_bias=True,  # fastai's own sparing of norm and bias: wd_exclude decides instead
        cbs=cbs,
        metrics=list(metrics or []),
        held_out=held_out,
        **kwargs,
    )
    learn.param_groups = groups
    learn.settings = {
        "loss": loss, "arch": arch, "emb_dim": emb_dim, "pretrained": pretrained,
        "dropout": dropout, "freeze_neck_scale": freeze_neck_scale, "loss_settings": {loss: {**spec.settings, **(settings or {})}},
        "partial_fc": partial_fc or 0.0, "margin_hold": margin_hold,
        "margin_warmup": margin_warmup, "val_pairs": val_pairs or 0, "seed": seed,
        "opt": opt, "momentum": momentum, "nesterov": nesterov, "beta2": beta2, "eps": eps,
        "wd": wd, "wd_exclude": list(wd_exclude), "head_lr": head_lr, "clip": clip,
        "clip_part": clip_part, "accum": accum, "channels_last": channels_last,
        "compile": compile,
    }  # fmt: skip
    return learn
