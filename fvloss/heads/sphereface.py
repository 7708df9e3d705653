"""SphereFace: angular softmax, A-Softmax (Liu et al., "SphereFace: Deep Hypersphere Embedding
for Face Recognition", CVPR 2017, https://arxiv.org/abs/1704.08063)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .base import MarginHead

__all__ = ["SphereFaceHead"]


class SphereFaceHead(MarginHead):
    """Logits ``||x|| cos(theta_j)``, target ``||x|| psi(theta_y)`` with
    ``psi = (-1)^k cos(m theta) - 2k`` on ``theta in [k pi/m, (k+1) pi/m]``; weights normalised,
    no bias, no scale ``s``. Paper defaults ``m=4`` and the authors' Caffe annealing: the target
    is ``(lambda ||x|| cos + ||x|| psi) / (1 + lambda)``, ``lambda = max(lambda_min,
    base (1 + gamma it)^-power)`` at training forward ``it`` (base=1000, gamma=0.12, power=1,
    lambda_min=5). ``base=0, lambda_min=0`` is plain A-Softmax.

    Args:
        m: the multiplicative angular margin, an integer.
        base, gamma, power: the annealing lambda = base (1 + gamma it)^-power.
        lambda_min: lambda's floor (0 with base 0: plain A-Softmax).
    """

    # studies (fvloss study) search each setting within (low, high, log scale)
    search: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "lambda_min": (1.0, 10.0, True),
        "gamma": (0.05, 0.5, True),
    }

    margins: dict[str, float] = {}  # an integer m, eased in by its own lambda annealing instead

    def __init__(
        self,
        emb_dim: int,
        n_classes: int,
        m: int = 4,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
    ):
        if int(m) != m or m < 1:
            raise ValueError(f"SphereFace's m is a positive integer, got {m!r}")
        super().__init__(emb_dim, n_classes, s=1.0, m=m)
        self.m, self.base, self.gamma = int(m), base, gamma
        self.power, self.lambda_min = power, lambda_min
        self.register_buffer("it", torch.zeros((), dtype=torch.long))  # saved: a resume continues

    def lam(self) -> torch.Tensor:
        """The current lambda, a tensor on the buffer's device (no host sync)."""
        lam = self.base * (1.0 + self.gamma * self.it.float()) ** -self.power
        return lam.clamp_min(self.lambda_min)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # counted before use, as the Caffe layer's iter_: the first training forward is it=1
        if self.training:
            with torch.no_grad():
                self.it += 1
        return super().logits(emb, labels)

    def target_logit(self, cos_t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        # cos(m theta) = T_m(cos theta), Chebyshev's recurrence: polynomial in cos, so finite
        # gradients at cos = +-1 where d acos / d cos is infinite
        prev, cos_mt = torch.ones_like(cos_t), cos_t
        for _ in range(self.m - 1):
            prev, cos_mt = cos_mt, 2 * cos_t * cos_mt - prev
        with torch.no_grad():  # k is piecewise constant; psi is C1 across the interval ends
            k = (self.m * torch.acos(cos_t) / math.pi).floor().clamp(0, self.m - 1)
        psi = (1 - 2 * (k % 2)) * cos_mt - 2 * k
        lam = self.lam().to(cos_t.dtype)
        return (lam * cos_t + psi) / (1 + lam)

    def margin_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, norm: torch.Tensor | None = None
    ) -> torch.Tensor:
        # every logit is ||x|| times its (modified) cosine: A-Softmax keeps the feature norm
        z = super().margin_logits(cos, labels, norm)
        return z if norm is None else norm * z

    def extra_repr(self) -> str:
        base = super().extra_repr().split(", s=", 1)[0]  # s is unused
        return f"{base}, m={self.m}, lambda_min={self.lambda_min:.3g}, base={self.base:.3g}"
