"""Quality (fvloss.eval.quality): error-vs-reject against direct computations, the
degradations, Spearman against scipy, and the norm's response on a model whose norm is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from fvloss.eval.quality import (
    DEGRADATIONS,
    degrade,
    norm_response,
    reject_curve_identification,
    reject_curve_verification,
    spearman,
)


def test_verification_reject_curve_by_hand():
    # 10 genuine pairs: 8 at 0.9, two failures at 0.1 and 0.2 that have the lowest quality;
    # 20 impostors at 0.00 .. 0.38. FMR 0.05 allows one impostor: the threshold sits between
    # 0.38 and 0.36. Rejecting 10% of 30 pairs drops the three lowest: both failures.
    s = np.r_[[0.9] * 8, 0.1, 0.2, np.arange(20) * 0.02]
    y = np.r_[[True] * 10, [False] * 20]
    q = np.r_[[5.0] * 8, 0.1, 0.2, [1.0] * 19, 0.3]
    c = reject_curve_verification(s, y, q, fmr=0.05, rejected=[0.0, 1 / 30, 0.1, 0.5])
    assert c.error == pytest.approx([0.2, 1 / 9, 0.0, 0.0])  # 1/30: one failure gone, 9 left
    assert "FNMR at FMR=0.05 (threshold 0.37" in c.what
    assert c.area() == pytest.approx((0.2 + 1 / 9) / 4)


def test_verification_reject_curve_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    s = rng.normal(y * 1.0, 1.0)
    q = rng.random(400)
    c = reject_curve_verification(s, y, q, fmr=0.1)
    neg = np.sort(s[~y])[::-1]
    t = (neg[int(0.1 * len(neg))] + neg[int(0.1 * len(neg)) - 1]) / 2  # 10% above it
    for share, err in zip(c.rejected, c.error):
        keep = np.argsort(q, kind="stable")[int(round(share * 400)) :]
        gen = s[keep][y[keep]]
        assert err == pytest.approx(np.mean(gen < t))


def test_identification_reject_curve_and_errors():
    c = reject_curve_identification([1, 2, 1, 5], [0.9, 0.1, 0.8, 0.2], rejected=[0, 0.25, 0.5])
    assert c.error == pytest.approx([0.5, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="4 probe ranks and 3 qualities"):
        reject_curve_identification([1, 2, 1, 5], [0.9, 0.1, 0.8])
    with pytest.raises(ValueError, match="needs genuine and impostor pairs"):
        reject_curve_verification([0.1, 0.2], [True, True], [1, 2])
    with pytest.raises(ValueError, match="2 impostor pairs cannot resolve FMR 0.001"):
        reject_curve_verification([0.1, 0.2, 0.3], [True, False, False], [1, 2, 3])


def face(size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_degradations_at_zero_change_nothing_and_grow_with_strength():
    img = face()
    for kind, (_, levels) in DEGRADATIONS.items():
        assert np.array_equal(degrade(img, kind, levels[0]), img), kind
        assert degrade(img, kind, levels[-1]).shape == img.shape
    detail = [
        np.abs(np.diff(degrade(img, "blur", s).astype(float), axis=1)).mean() for s in (0, 1, 3)
    ]
    assert detail[0] > detail[1] > detail[2]
    occluded = degrade(img, "occlusion", 0.5)
    assert (occluded[32:] == 127).all() and np.array_equal(occluded[:32], img[:32])
    assert np.array_equal(degrade(img, "noise", 20), degrade(img, "noise", 20))  # repeatable
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        degrade(img, "fog", 1)


def test_spearman_agrees_with_scipy_with_ties():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, 50), rng.normal(size=50)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def test_norm_response_of_a_model_whose_norm_is_its_detail():
    # A "model" whose embedding norm is the image's mean gradient: blur and downscaling
    # lower it, so their correlation with the strength is strongly negative.
    def embed(images):
        g = [np.abs(np.diff(x.astype(float), axis=1)).mean() for x in images]
        return np.stack([[v, 0.0] for v in g])

    out = {r.kind: r for r in norm_response(embed, [face(), face(48)], kinds=["blur", "downscale"])}
    assert out["blur"].relative_norm[0] == pytest.approx(1.0)
    assert out["blur"].spearman < -0.9 and out["downscale"].spearman < -0.9
    assert out["blur"].relative_norm == sorted(out["blur"].relative_norm, reverse=True)
