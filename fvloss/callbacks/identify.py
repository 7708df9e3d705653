"""Per-epoch 1:N identification: rank-k (and TPIR@FPIR in open set) as progress-table columns.

The same columns-and-history machinery as verification (:class:`~.epoch_eval.EpochEvaluation`),
measuring :func:`fvloss.eval.identify.identify` on an
:class:`~fvloss.eval.idsets.IdentificationSet` (e.g. CFP's frontal gallery and profile
probes): a loss can rank differently for 1:N than for 1:1, and this shows it while training.
In a run: ``val_identify = "../shared/data/cfp"`` (with ``val_identify_root``) or an identity
folder; columns ``id_rank1``, ``id_rank5``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from fastai.torch_core import get_model

from ..eval.identify import DEFAULT_FPIRS, IdentificationResult, identify, probe_key
from ..eval.idsets import IdentificationSet
from ..eval.load import as_embedder
from ..eval.metrics import far_key
from ..eval.score import _embed, _PathLoader
from ..ranks import rank, world_size
from .epoch_eval import EpochEvaluation
from .timing import timed

__all__ = ["IdentifyEvery", "identify_columns"]


def identify_columns(max_rank: int = 10, fpirs: Sequence[float] = DEFAULT_FPIRS) -> list[str]:
    """Every number an :class:`IdentifyEvery` can show: ``rank1`` .. and ``tpir@1e-1`` .."""
    ranks = [f"rank{r}" for r in (1, 5, 10) if r <= max_rank]
    return ranks + [f"tpir@{far_key(f)}" for f in fpirs]


class IdentifyEvery(EpochEvaluation):
    """Identify ``idset``'s probes among its gallery every ``every`` epochs (and the last).

    Images are embedded with ``transform`` after fastai's validation pass (decoded once and
    kept in memory with ``cache``); ``best`` is the best rank-1. ``embedder(learn)`` picks the
    module (default ``learn.model``).
    """

    best_key = "rank1"

    def __init__(
        self,
        idset: IdentificationSet,
        transform: Callable[[np.ndarray], torch.Tensor],
        every: int = 1,
        prefix: str = "id_",
        columns: Sequence[str] = ("rank1", "rank5"),
        max_rank: int = 10,
        fpirs: Sequence[float] = DEFAULT_FPIRS,
        flip: bool = False,
        batch_size: int = 256,
        cache: bool = True,
        embedder: Callable | None = None,
    ):
        super().__init__(every, prefix, columns)
        known = identify_columns(max_rank, fpirs)
        unknown = [c for c in self.columns if c not in known]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; choose from {known}")
        if not idset.gallery or not idset.probes:
            raise ValueError(f"{idset.name}: needs gallery and probe images")
        self.idset, self.transform, self.flip = idset, transform, flip
        self.max_rank, self.fpirs, self.batch_size = max_rank, tuple(fpirs), batch_size
        self.embedder, self.image_cache = embedder, ({} if cache else None)
        self.paths = idset.gallery + idset.probes

    def evaluate(
        self, model: torch.nn.Module | None = None, shared: bool = False
    ) -> IdentificationResult:
        """Identify now with ``model`` (default: the attached learner's embedder)."""
        if model is None:
            model = self.embedder(self.learn) if self.embedder else self.learn.model
        share = (rank(), world_size()) if shared and world_size() > 1 else (0, 1)
        if share[1] > 1:
            model = get_model(model)
        emb, _ = _embed(
            as_embedder(model, self.transform), _PathLoader(self.paths), [str(p) for p in self.paths],
            self.batch_size, self.flip, cache=self.image_cache, share=share,
        )  # fmt: skip
        if not np.isfinite(emb).all():
            raise ValueError("the model gives NaN or infinite embeddings (a diverged run?)")
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        g = len(self.idset.gallery)
        res = identify(
            emb[:g], self.idset.gallery_labels, emb[g:], self.idset.probe_labels,
            open_set=self.idset.open_set, max_rank=self.max_rank, fpirs=self.fpirs,
        )  # fmt: skip
        res.probe_key = probe_key(self.idset.probes, self.idset.probe_labels)
        return res

    def after_validate(self) -> None:
        if not (self.trained and self.due()):
            return
        try:
            with timed(self.learn, "scoring"):
                res = self.evaluate(shared=True)
        except ValueError as e:  # show n/a and let training go on, as VerifyPairs does
            warnings.warn(
                f"IdentifyEvery: epoch {self.learn.epoch}: {e}; not evaluated", stacklevel=1
            )
            self.current = {c: float("nan") for c in self.columns}
            return
        row = res.row()
        self.record({c: (v if v is not None else float("nan")) for c, v in row.items()}, res)
