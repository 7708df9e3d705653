"""One per-epoch verification callback for every pair source.

:class:`VerifyPairs` scores ``learn.model``'s embeddings during ``fit`` and shows the numbers as
progress-table columns, whatever the pairs are:

* :class:`HeldOutPairs`: same / different pairs drawn once (seeded) among the validation
  identities; the embeddings come from fastai's own validation pass, so it costs no extra
  forward pass (what ``face_learner`` adds by default, columns ``auc acc tar@1e-3 eer``);
* a :class:`~fvloss.eval.protocols.PairSet` from any protocol (an LFW pair file, CFP-FP, an
  insightface ``.bin``): its images are embedded after the validation pass (columns behind a
  prefix, e.g. ``pairs_auc``).

Both give one set of column names (:func:`column_names`) and the same history and bests.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from fastai.torch_core import get_model

from ..eval.metrics import (
    DEFAULT_FARS,
    VerificationResult,
    metric_key,
    pairs_from_labels,
    verify_scores,
)
from ..eval.protocols import PairSet
from ..eval.report import write_outputs
from ..eval.score import score_pairs
from ..ranks import rank, world_size
from .epoch_eval import NA, EpochEvaluation, NotAvailable
from .timing import timed

__all__ = ["DEFAULT_COLUMNS", "NA", "HeldOutPairs", "NotAvailable", "VerifyPairs", "column_names"]

DEFAULT_COLUMNS = ("auc", "acc", "tar@1e-3", "eer")
Transform = Callable[[np.ndarray], torch.Tensor]


def column_names(fars: Sequence[float] = DEFAULT_FARS) -> list[str]:
    """Every number a :class:`VerifyPairs` can show: keys of ``VerificationResult.scalars()``."""
    return ["auc", "acc", "acc_std", "eer", "threshold", *(metric_key(f) for f in fars)]


def _column(name: str) -> str:
    return name.replace("tar@far=", "tar@")  # the name fvloss < 0.2 used


class HeldOutPairs:
    """Pairs among the validation identities: up to ``n_pairs`` (half same, half different),
    drawn with ``seed`` once and kept, so every epoch scores the same comparisons."""

    def __init__(self, n_pairs: int = 3000, seed: int = 0):
        self.n_pairs, self.seed = n_pairs, seed
        self._pairs: tuple[np.ndarray, np.ndarray] | None = None
        self._n = -1

    def draw(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(index (P, 2), same (P,))`` into ``labels``; redrawn only if the set changes size."""
        if self._pairs is None or self._n != len(labels):
            self._pairs, self._n = pairs_from_labels(labels, self.n_pairs, self.seed), len(labels)
        return self._pairs

    def __repr__(self) -> str:
        return f"HeldOutPairs(n_pairs={self.n_pairs}, seed={self.seed})"


class VerifyPairs(EpochEvaluation):
    """Score ``learn.model`` on verification pairs during ``fit``, every ``every`` epochs.

    ``pairs`` is a :class:`HeldOutPairs` (embeddings of fastai's validation pass) or a
    :class:`PairSet` (its images embedded with ``transform`` after the validation pass). The
    numbers named by ``columns`` (:func:`column_names`: ``auc``, ``acc``, ``acc_std``, ``eer``,
    ``threshold``, ``tar@1e-3``, ...) appear, prefixed with ``prefix``, as progress-table
    columns and in ``learn.recorder.values``; epochs that are not evaluated (and unresolved
    TARs) show NaN. The last epoch is always evaluated. After the fit, ``best`` and
    ``best_epoch`` hold the best AUC and its epoch, ``best_result`` its full result, ``last``
    the latest one and ``history`` a list of ``(epoch, scalars)``; ``out_dir`` also writes
    ``{prefix}epoch{NNN}.json/.png`` per evaluation.

    ``embedder(learn)`` picks the module to evaluate (default ``learn.model``); in eval mode it
    must map image batches to embeddings. A :class:`PairSet` is scored only inside ``fit``
    after a validation pass; held-out pairs also on ``learn.validate()``. ``lr_find`` leaves
    the columns NaN. ``best*`` and ``history`` restart with each ``fit``.
    """

    def __init__(
        self,
        pairs: PairSet | HeldOutPairs,
        transform: Transform | None = None,
        every: int = 1,
        flip: bool = False,
        prefix: str = "",
        columns: Sequence[str] = DEFAULT_COLUMNS,
        batch_size: int = 256,
        num_workers: int = 0,
        n_folds: int = 10,
        fars: Sequence[float] = DEFAULT_FARS,
        cache: bool = False,
        out_dir: str | Path | None = None,
        embedder: Callable | None = None,
    ):
        super().__init__(every, prefix, [_column(c) for c in columns])
        if isinstance(pairs, PairSet) and transform is None:
            raise ValueError("a PairSet needs the transform its images are embedded with")
        self.pairs, self.transform, self.flip = pairs, transform, flip
        self.batch_size, self.num_workers, self.n_folds = batch_size, num_workers, n_folds
        self.fars, self.out_dir, self.embedder = tuple(fars), out_dir, embedder
        known = column_names(self.fars)
        unknown = [c for c in self.columns if c not in known]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; choose from {known}")
        self.image_cache: dict | None = {} if cache else None
        self._embs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @property
    def held_out(self) -> bool:
        return isinstance(self.pairs, HeldOutPairs)

    # -- scoring ------------------------------------------------------------------------------
    def _scores(
        self, model: torch.nn.Module | None, shared: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores, same, folds or None)`` of the pairs; ``shared``: during a fit on several
        ranks, each embeds its share of the protocol's images (then they are gathered)."""
        if self.held_out:
            if not self._embs:
                raise ValueError("held-out pairs are scored from a validation pass; none ran")
            emb = torch.cat(self._embs)
            index, same = self.pairs.draw(torch.cat(self._labels).numpy())
            self.last_pairs = self._held_out_pairs(index, same, len(emb))
            return (emb[index[:, 0]] * emb[index[:, 1]]).sum(1).double().numpy(), same, None
        if model is None:
            if self.learn is None:
                raise ValueError("VerifyPairs is not attached to a Learner: pass the model")
            model = self.embedder(self.learn) if self.embedder else self.learn.model
        share = (rank(), world_size()) if shared and world_size() > 1 else (0, 1)
        if share[1] > 1:  # the module itself: DDP's forward would sync buffers, a collective
            model = get_model(model)  # each rank makes as many times as its share of batches
        scores, kept = score_pairs(
            model,
            self.pairs,
            self.transform,
            batch_size=self.batch_size,
            flip=self.flip,
            num_workers=self.num_workers,
            cache=self.image_cache,
            share=share,
        )
        self.last_pairs = kept  # the pairs scored (less unreadable ones), for the figures
        return scores, kept.same, kept.folds

    def _held_out_pairs(self, index: np.ndarray, same: np.ndarray, n: int) -> PairSet | None:
        """The drawn held-out pairs as a :class:`PairSet` over ``dls.valid_images`` (``face_dls``
        sets it: the validation images in loader order), for the hardest-pairs figure; ``None``
        when the learner's data has no such list or it does not match the embeddings."""
        images = getattr(getattr(self.learn, "dls", None), "valid_images", None)
        if images is None or len(images) != n:
            return None
        return PairSet(images.names, index, same, source="held-out identities", images=images,
                       name="held-out")  # fmt: skip

    def evaluate(self, model: torch.nn.Module | None = None) -> VerificationResult:
        """Score ``model`` (default: the attached learner's embedder) on the pairs now."""
        scores, same, folds = self._scores(model)
        return verify_scores(scores, same, folds, self.n_folds, self.fars)

    # -- events (the rest: EpochEvaluation) ---------------------------------------------------
    def before_validate(self) -> None:
        self._embs, self._labels = [], []
        if self.held_out:
            self.current = {}

    def after_batch(self) -> None:
        if self.training or not self.held_out:
            return
        pred = self.learn.pred[0] if isinstance(self.learn.pred, (tuple, list)) else self.learn.pred
        self._embs.append(F.normalize(pred.detach().float(), dim=1).cpu())
        self._labels.append(self.learn.yb[0].detach().cpu())

    def _gather(self) -> None:
        """Under several processes each rank embedded its share of the validation set (items
        ``r, r + W, ...``, the first ones repeated to equal shares: ``EpochOrder.shard(pad=
        True)``): put every rank's together, in the loader's order, repeats cut, on every rank.
        Each image is embedded once, by one rank."""
        w, dl = world_size(), getattr(self.learn, "dl", None)
        if w == 1 or getattr(dl, "world_size", 1) == 1 or not self._embs:
            return
        dev = getattr(self.learn.dls, "device", None) or "cpu"  # NCCL gathers device tensors
        out = []
        for t in (torch.cat(self._embs), torch.cat(self._labels)):
            t = t.to(dev)
            parts = [torch.empty_like(t) for _ in range(w)]
            dist.all_gather(parts, t.contiguous())
            out.append(torch.stack(parts, 1).flatten(0, 1)[: dl.n].cpu())  # k*W + r: loader order
        self._embs, self._labels = [out[0]], [out[1]]

    def after_validate(self) -> None:
        if self.held_out:
            self._gather()
        epoch, due = getattr(self.learn, "epoch", 0), self.due()
        if self.held_out:
            if not self._embs or not (due or not self.trained):
                return
        elif not (self.trained and due):
            return
        with timed(self.learn, "scoring"):  # (TimeBreakdown's share of the epoch)
            scores, same, folds = self._scores(None, shared=True)
        n_bad = int((~np.isfinite(scores)).sum())
        if n_bad:
            # A diverged model gives NaN embeddings: show NaN columns and let training go on
            # (stopping it is the job of the loss and of callbacks such as TerminateOnNaN).
            warnings.warn(
                f"VerifyPairs: epoch {epoch}: {n_bad} of {len(scores)} scores are not finite; "
                "not evaluated",
                stacklevel=1,
            )
            self.current = {k: math.nan for k in self.columns}
            return
        if same.all() or not same.any():
            return  # too few validation identities for both kinds of pair: nothing to measure
        with timed(self.learn, "scoring"):
            result = verify_scores(scores, same, folds, self.n_folds, self.fars)
        self.record(result.scalars(), result)
        self.last_scores, self.last_same = scores, same  # the histogram's (write_pair_figures)
        if self.out_dir is not None and self.trained:
            source = "held-out identities" if self.held_out else self.pairs.source
            meta = {"epoch": epoch, "pairs": source, "flip": self.flip}
            write_outputs(result, self.out_dir, f"{self.prefix}epoch{epoch:03d}", meta)
