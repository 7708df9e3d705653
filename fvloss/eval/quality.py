"""Face image quality: error-versus-reject curves and the norm's response to degradation.

MagFace (Meng et al., CVPR 2021, https://arxiv.org/abs/2103.06627) and AdaFace (Kim et al.,
CVPR 2022, https://arxiv.org/abs/2204.00964) train the embedding's norm to carry image
quality. Two measurements test that claim on any model:

* **error versus reject** (Grother & Tabassi, "Performance of biometric quality measures",
  TPAMI 2007; ISO/IEC 29794-1): fix the threshold once, at a target false-match rate over all
  pairs; then reject the pairs whose quality (the lower of their two images') is lowest, a
  growing share at a time, and measure the false non-match rate of the genuine pairs left. A
  quality score that predicts errors makes the curve fall fast; a useless one leaves it flat.
  For identification, rejecting the lowest-quality probes and measuring the rank-1 error of
  those left is the same idea (:func:`reject_curve_identification`);
* **controlled degradation** (:func:`degrade`, :data:`DEGRADATIONS`): blur, downscaling, noise
  and occlusion applied to test images at known strengths; the Spearman correlation of the
  norm with the strength should be clearly negative if the norm tracks quality.

The quality of an image is its embedding's norm by default (``fvloss embed --out DIR`` keeps
it in ``norms.npy``), or any score column a file provides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .metrics import _far_cut, _Sweep

__all__ = [
    "DEGRADATIONS",
    "DEFAULT_REJECT",
    "NormResponse",
    "RejectCurve",
    "degrade",
    "norm_response",
    "reject_curve_identification",
    "reject_curve_verification",
    "spearman",
]

DEFAULT_REJECT = tuple(np.round(np.linspace(0.0, 0.5, 11), 3))  # 0%, 5%, ... 50% rejected


@dataclass
class RejectCurve:
    """``error[k]``: the error left after rejecting the lowest-quality ``rejected[k]`` share."""

    rejected: list[float]
    error: list[float]
    what: str  # "FNMR at FMR=1e-3 (threshold 0.312)", "rank-1 error"

    def area(self) -> float:
        """Mean error over the reject shares (lower: the quality predicts errors better)."""
        return float(np.mean(self.error))


def _keep_mask(quality: np.ndarray, share: float) -> np.ndarray:
    """All but the lowest-quality ``share`` (ties at the cut broken by position, stably)."""
    n_drop = int(round(share * len(quality)))
    keep = np.ones(len(quality), bool)
    keep[np.argsort(quality, kind="stable")[:n_drop]] = False
    return keep


def reject_curve_verification(
    scores: np.ndarray,
    same: np.ndarray,
    pair_quality: np.ndarray,
    fmr: float = 1e-3,
    rejected: Sequence[float] = DEFAULT_REJECT,
) -> RejectCurve:
    """FNMR at the threshold fixed at ``fmr`` over all pairs, as the lowest-quality pairs go.

    ``pair_quality``: one number a pair, usually the lower of its two images' qualities.
    """
    s, y = np.asarray(scores, np.float64), np.asarray(same, bool)
    q = np.asarray(pair_quality, np.float64)
    if not (len(s) == len(y) == len(q)):
        raise ValueError(
            f"{len(s)} scores, {len(y)} labels and {len(q)} qualities: one each a pair"
        )
    if y.all() or not y.any():
        raise ValueError("error-vs-reject needs genuine and impostor pairs")
    sw = _Sweep(s, y)
    if sw.n_neg * fmr < 1:
        raise ValueError(f"{sw.n_neg} impostor pairs cannot resolve FMR {fmr:g}")
    t = sw.cut_threshold(_far_cut(sw.fp, sw.n_neg, fmr))
    error = []
    for share in rejected:
        keep = _keep_mask(q, share) & y
        error.append(float(np.mean(s[keep] < t)) if keep.any() else float("nan"))
    return RejectCurve(
        [float(r) for r in rejected], error, f"FNMR at FMR={fmr:g} (threshold {t:.4f})"
    )


def reject_curve_identification(
    rank: np.ndarray, probe_quality: np.ndarray, rejected: Sequence[float] = DEFAULT_REJECT
) -> RejectCurve:
    """Rank-1 error of the mated probes left as the lowest-quality probes are rejected."""
    r, q = np.asarray(rank, np.float64), np.asarray(probe_quality, np.float64)
    if len(r) != len(q):
        raise ValueError(f"{len(r)} probe ranks and {len(q)} qualities")
    error = []
    for share in rejected:
        keep = _keep_mask(q, share)
        error.append(float(np.mean(r[keep] > 1)) if keep.any() else float("nan"))
    return RejectCurve([float(x) for x in rejected], error, "rank-1 error")


# ----------------------------------------------------------------------------- degradation


def _blur(img: np.ndarray, s: float) -> np.ndarray:
    """Gaussian blur, sigma ``s`` in pixels of a 112-px face (scaled to the image)."""
    sigma = s * img.shape[0] / 112
    return img if sigma <= 0 else cv2.GaussianBlur(img, (0, 0), sigma)


def _downscale(img: np.ndarray, s: float) -> np.ndarray:
    """Down by a factor ``s`` (>= 1) and back up: the detail of a smaller face."""
    if s <= 1:
        return img
    h, w = img.shape[:2]
    small = cv2.resize(
        img, (max(1, round(w / s)), max(1, round(h / s))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _noise(img: np.ndarray, s: float, seed: int = 0) -> np.ndarray:
    """Gaussian noise of standard deviation ``s`` grey levels (fixed seed: repeatable)."""
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, s, img.shape), 0, 255).astype(np.uint8)


def _occlude(img: np.ndarray, s: float) -> np.ndarray:
    """A grey band over the lower ``s`` share of the face (a mask, a scarf)."""
    out = img.copy()
    h = img.shape[0]
    if s > 0:
        out[h - int(round(s * h)) :] = 127
    return out


DEGRADATIONS: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], tuple[float, ...]]] = {
    "blur": (_blur, (0.0, 1.0, 2.0, 3.0, 4.0)),  # sigma, px of a 112-px face
    "downscale": (_downscale, (1.0, 2.0, 3.0, 4.0, 6.0)),  # factor
    "noise": (_noise, (0.0, 10.0, 20.0, 30.0, 40.0)),  # std, grey levels
    "occlusion": (_occlude, (0.0, 0.15, 0.3, 0.45, 0.6)),  # share of the face, from the chin up
}


def degrade(img: np.ndarray, kind: str, strength: float) -> np.ndarray:
    """``img`` (HxWx3 uint8 RGB) degraded by ``kind`` at ``strength`` (0 / 1: unchanged)."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}: choose one of {sorted(DEGRADATIONS)}")
    return DEGRADATIONS[kind][0](img, strength)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        _, tie = np.unique(v, return_inverse=True)  # ties share their average rank
        return (np.bincount(tie, r) / np.bincount(tie))[tie]

    a, b = ranks(np.asarray(x, np.float64)), ranks(np.asarray(y, np.float64))
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


@dataclass
class NormResponse:
    """How one degradation moves the norm: mean norm relative to the clean image's, per level,
    and Spearman's correlation of that relative norm with the strength (over all images)."""

    kind: str
    strengths: list[float]
    relative_norm: list[float]
    spearman: float


def norm_response(
    embed: Callable[[list[np.ndarray]], np.ndarray],
    images: Sequence[np.ndarray],
    kinds: Sequence[str] = tuple(DEGRADATIONS),
) -> list[NormResponse]:
    """Degrade every image at each level of each kind and measure the embedding norm.

    ``embed`` maps a list of HxWx3 uint8 RGB images to *unnormalised* embeddings (e.g.
    ``lambda xs: embed_arrays(model, xs)``). Level 0 of every kind is the clean image.
    """
    if not images:
        raise ValueError("no images to degrade")
    clean = np.linalg.norm(np.asarray(embed(list(images))), axis=1)
    out = []
    for kind in kinds:
        if kind not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {kind!r}: choose one of {sorted(DEGRADATIONS)}")
        levels = DEGRADATIONS[kind][1]
        rel = np.stack([
            np.linalg.norm(np.asarray(embed([degrade(x, kind, s) for x in images])), axis=1) / clean
            for s in levels
        ])  # fmt: skip
        x = np.repeat(np.asarray(levels, np.float64), len(images))
        out.append(
            NormResponse(kind, list(levels), rel.mean(axis=1).tolist(), spearman(x, rel.ravel()))
        )
    return out
