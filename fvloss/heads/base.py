"""Shared base classes of the classification heads.

A head is the cost function *and* the classifier weights it needs: ``head(emb, labels)`` returns
the loss. It lives in the model (``FaceNet.head``), so the Learner's optimizer trains its
weights and ``learn.save`` / ``learn.load`` / ``lr_find`` keep its weights and its buffers (the
EMA statistics of CurricularFace and AdaFace); the model itself always returns embeddings.

Override points, few on purpose (as pytorch-metric-learning's losses):

* :meth:`Head.logits` ``(emb, labels) -> (B, C)`` logits the cross-entropy sees;
* :meth:`Head.loss` ``(logits, labels, emb) -> scalar``, cross-entropy unless a paper adds a term;
* for cosine heads, :meth:`MarginHead.target_logit` ``(cos_t, norm) -> cos_t'``, the margin on
  each row's target cosine, which sees the embedding norm (AdaFace, MagFace).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Head", "MarginHead", "adacos_scale", "angular_margin", "feature_norm"]


def adacos_scale(n_classes: int) -> float:
    """AdaCos's fixed scale ``s = sqrt(2) * ln(C - 1)`` (Zhang et al., CVPR 2019,
    https://arxiv.org/abs/1905.00292): the smallest s that still lets the softmax reach a
    confident target probability with C classes. s=64 was chosen for 85k classes; with a few
    hundred it saturates the softmax and the margin losses stop learning."""
    if n_classes < 3:
        raise ValueError(f"the AdaCos scale needs at least 3 classes, got {n_classes}")
    return math.sqrt(2.0) * math.log(n_classes - 1)


def angular_margin(cos_t: torch.Tensor, m: float | torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``cos(theta + m)`` with ArcFace's fall-back ``cos - m sin(m)`` where ``theta + m > pi``.

    Through the identity ``cos*cos(m) - sin*sin(m)`` with ``sin = sqrt(1 - cos^2)`` clamped at
    ``eps``, as the ArcFace authors' code: its derivative is the exact ``sin(theta + m) /
    sin(theta)`` and stays finite at cos = +-1, where ``acos`` would give inf. Beyond
    ``theta + m > pi`` cos(theta + m) grows again with theta and would reward moving away from
    the class, hence the fall-back. ``m`` is a float or a per-row tensor (MagFace, ElasticFace).
    """
    m = torch.as_tensor(m, dtype=cos_t.dtype, device=cos_t.device)
    sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(eps))
    phi = cos_t * torch.cos(m) - sin_t * torch.sin(m)
    # theta + m > pi  <=>  cos_t < cos(pi - m)
    return torch.where(cos_t > torch.cos(math.pi - m), phi, cos_t - m * torch.sin(m))


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for bf16/fp16/fp32 inputs, float64 for float64 (tests against references)."""
    return x.double() if x.dtype == torch.float64 else x.float()


def feature_norm(emb: torch.Tensor) -> torch.Tensor:
    """``||x||`` per row, ``(B, 1)``, in float32 (float64 for float64) whatever the autocast."""
    return _wide(emb).norm(dim=1, keepdim=True)


class Head(nn.Module):
    """Base of all heads: ``forward(emb, labels) -> loss``.

    ``last_logits`` holds the latest batch's logits (detached), for a training accuracy:
    ``(head.last_logits.argmax(1) == labels).float().mean()``. Labels must be the head's classes
    ``0..n_classes-1``: held-out identities are embedded, never passed to a head.
    """

    n_classes: int
    last_logits: torch.Tensor | None = None
    #: whether Partial FC (:class:`~fvloss.heads.partial_fc.PartialFCHead`) can split this head's
    #: classes across ranks: only heads whose logits are the scaled cosines with a stateless
    #: margin on the target, so the margin applies block by block (not batch statistics as
    #: CurricularFace / AdaFace keep, nor k rows per class as sub-center ArcFace)
    shardable: ClassVar[bool] = False
    #: each of its settings' search range for a study (``fvloss study``): ``(low, high, log)``
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {}

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = self.logits(emb, labels)
        self.last_logits = z.detach()
        return self.loss(z, labels, emb)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The logits the cross-entropy sees (margins applied to each row's target class)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Cross-entropy in float32 (under autocast the logits may be bf16/fp16)."""
        return F.cross_entropy(_wide(logits), labels.long())


class MarginHead(Head):
    """Cosine classifier with a margin on the target class (ArcFace, CosFace and kin).

    Cosines between L2-normalised embeddings and L2-normalised class weights are computed in
    float32 even under autocast: near cos = 1 bf16 has ~3 significant digits, less than the
    margins act on. :meth:`target_logit` (the one override point of most heads) replaces each
    row's target cosine; the result is scaled by ``s``.

    Args:
        emb_dim: embedding width.
        n_classes: number of training identities.
        s: logit scale, or ``"auto"`` for :func:`adacos_scale` of ``n_classes``.
        m: the margin; a plain attribute, so a callback may schedule it (margin warm-up).
        n_sub: class weights per class (sub-center ArcFace); the cosine to a class is the best one.
    """

    #: the margins a warm-up (MarginSchedule) ramps in: ``{attribute: value without margin}``
    margins: dict[str, float] = {"m": 0.0}
    #: the class weights' initial standard deviation (N(0, std), as insightface)
    init_std: float = 0.01

    def __init__(self, emb_dim: int, n_classes: int, s: float | str, m: float, n_sub: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes * n_sub, emb_dim))
        nn.init.normal_(self.weight, std=self.init_std)
        self.n_classes, self.n_sub, self.m = n_classes, n_sub, float(m)
        self.s = adacos_scale(n_classes) if s == "auto" else float(s)

    def sub_cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """``(B, C, n_sub)`` cosines to each class weight (rows c*K .. c*K+K-1 of ``weight`` are
        class c's sub-centres), in float32 even under autocast."""
        with torch.autocast(device_type=emb.device.type, enabled=False):
            w = self.weight.double() if emb.dtype == torch.float64 else self.weight.float()
            cos = F.linear(F.normalize(_wide(emb)), F.normalize(w))
        return cos.view(len(cos), self.n_classes, self.n_sub)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` cosines to each class (the best sub-centre), clamped to [-1, 1]: rounding
        can push a cosine a hair past 1, where acos/sqrt-based margins give NaN."""
        return self.sub_cosine(emb).amax(dim=2).clamp(-1.0, 1.0)

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """The target class's cosine after the margin, ``(B, 1)``; ``norm`` is ``||x||``."""
        raise NotImplementedError

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.margin_logits(self.cosine(emb), labels, feature_norm(emb))

    def margin_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, norm: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled logits with the margin applied to each row's target column."""
        cos = _wide(cos)
        norm = cos.new_ones(len(cos), 1) if norm is None else norm
        idx = labels.long().unsqueeze(1)
        target = self.target_logit(cos.gather(1, idx), norm)
        return self.s * cos.scatter(1, idx, target)

    def extra_repr(self) -> str:
        sub = f", n_sub={self.n_sub}" if self.n_sub > 1 else ""
        return (
            f"emb_dim={self.weight.shape[1]}, n_classes={self.n_classes}{sub}, s={self.s:.3g}, "
            f"m={self.m:.3g}"
        )
