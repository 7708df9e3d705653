"""Verification metrics on the validation identities, as fastai metrics.

fastai's validation loop runs the model in eval mode, where a ``FaceNet`` returns embeddings;
the metrics here collect those embeddings and the identity labels, draw a fixed set of
same / different pairs once, and report verification numbers in the progress table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.learner import Metric

from .verify import pairs_from_labels, verify_scores

__all__ = ["ValidVerification", "valid_verification_metrics"]


class ValidVerification:
    """Shared state of the verification metrics: embeddings and labels of one validation pass."""

    def __init__(self, n_pairs: int = 3000, seed: int = 0):
        self.n_pairs, self.seed = n_pairs, seed
        self._pairs = None  # drawn once: the same pairs every epoch, so epochs compare
        self.reset()

    def reset(self) -> None:
        self.embs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self._result: dict[str, float] | None = None

    def accumulate(self, learn) -> None:
        pred = learn.pred
        if isinstance(pred, (tuple, list)):
            pred = pred[0]
        self.embs.append(F.normalize(pred.detach().float(), dim=1).cpu())
        self.labels.append(learn.yb[0].detach().cpu())

    def result(self) -> dict[str, float]:
        if self._result is None:
            emb = torch.cat(self.embs)
            labels = torch.cat(self.labels).numpy()
            if self._pairs is None or self._pairs[0].max(initial=-1) >= len(labels):
                self._pairs = pairs_from_labels(labels, self.n_pairs, self.seed)
            index, same = self._pairs
            scores = (emb[index[:, 0]] * emb[index[:, 1]]).sum(1).numpy()
            self._result = verify_scores(scores, same).scalars()
        return self._result


class _View(Metric):
    """One column of a :class:`ValidVerification`; only the first view accumulates."""

    def __init__(self, state: ValidVerification, key: str, name: str, owner: bool):
        self.state, self.key, self._name, self.owner = state, key, name, owner

    def reset(self) -> None:
        if self.owner:
            self.state.reset()

    def accumulate(self, learn) -> None:
        if self.owner:
            self.state.accumulate(learn)

    @property
    def value(self) -> float:
        if not self.state.embs:
            return float("nan")
        return self.state.result()[self.key]

    @property
    def name(self) -> str:
        return self._name


def valid_verification_metrics(n_pairs: int = 3000, seed: int = 0) -> list[Metric]:
    """fastai metrics: verification AUC, 10-fold accuracy, TAR@FAR=1e-3 and EER on pairs drawn
    from the validation set's identities."""
    state = ValidVerification(n_pairs, seed)
    cols = [("auc", "auc"), ("acc", "acc"), ("tar@far=1e-3", "tar@1e-3"), ("eer", "eer")]
    return [_View(state, key, name, owner=k == 0) for k, (key, name) in enumerate(cols)]
