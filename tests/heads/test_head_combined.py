"""CombinedMarginHead against a float64 reference through the angle, and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from heads_common import (
    EMB,
    EXTREME_COS,
    B,
    C,
    assert_close,
    assert_matches_ref,
    ce64,
    check_finite_under_autocast,
    cosines64,
    extreme_inputs,
    near_far_inputs,
    run_head,
    run_ref,
    with_weight,
)

from fvloss.heads.arcface import ArcFaceHead
from fvloss.heads.combined import CombinedMarginHead
from fvloss.heads.cosface import CosFaceHead
from fvloss.losses import LossSpec

MARGINS = [(1.0, 0.3, 0.2), (0.9, 0.4, 0.15), (1.2, 0.0, 0.35)]


def combined_ref(emb, weight, y, s, m1, m2, m3):
    """``s (cos(m1 theta + m2) - m3)``, flat at ``-1 - m3`` where the angle passes pi."""
    cos = cosines64(emb, weight)
    onehot = torch.zeros_like(cos)
    onehot[torch.arange(len(y)), y] = 1.0
    theta = torch.arccos((cos * onehot).sum(1))
    angle = m1 * theta + m2
    target = torch.where(angle <= math.pi, torch.cos(angle), torch.full_like(angle, -1.0)) - m3
    logits = s * (cos * (1 - onehot) + target[:, None] * onehot)
    return logits, ce64(logits, y)


def combined_inputs(seed: int):
    """Targets near (small theta), opposite (past the clamp for every MARGINS), random; none
    within 2e-3 of a clamp point or of cos = +-1 (where the reference's acos has no gradient)."""
    emb, weight, y = near_far_inputs(seed, far_noise=0.05)
    theta = torch.arccos(cosines64(emb.double(), weight.double())[torch.arange(B), y])
    for m1, m2, _ in MARGINS:
        assert (theta - (math.pi - m2) / m1).abs().min() > 2e-3
    assert theta.min() > 2e-3 and theta.max() < math.pi - 2e-3
    return emb, weight, y


@pytest.mark.parametrize("m1, m2, m3", MARGINS)
@pytest.mark.parametrize("s", [64.0, 8.0])
def test_matches_float64_reference(m1, m2, m3, s):
    emb, weight, y = combined_inputs(0)
    head = with_weight(CombinedMarginHead(EMB, C, s=s, m1=m1, m2=m2, m3=m3), weight)
    ref = run_ref(combined_ref, emb, weight, y, s, m1, m2, m3)
    # both sides of the clamp are exercised
    theta = torch.arccos(head.cosine(emb).gather(1, y[:, None])[:, 0])
    past = m1 * theta + m2 > math.pi
    assert past.any() and (~past).any()
    loss, gemb = run_head(head, emb, y)
    assert_matches_ref(head, loss, gemb, ref, atol=1e-6 * s)


def test_float64_module_matches_reference():
    emb, weight, y = combined_inputs(1)
    head = with_weight(CombinedMarginHead(EMB, C), weight).double()
    ref = run_ref(combined_ref, emb, weight, y, 64.0, 1.0, 0.3, 0.2)
    loss, gemb = run_head(head, emb.double(), y)
    assert gemb.dtype == torch.float64
    assert_matches_ref(head, loss, gemb, ref, atol=64e-6, logits=False)


def two_d_head(**kw) -> CombinedMarginHead:
    head = CombinedMarginHead(2, 3, s=1.0, **kw)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    return head


def at(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), math.sin(a)]])


def test_target_by_hand():
    head = two_d_head(m1=0.9, m2=0.4, m3=0.15)
    head(at(30), torch.tensor([0]))
    a = math.radians(30)
    expected = [math.cos(0.9 * a + 0.4) - 0.15, math.cos(math.pi / 2 - a), -math.cos(a)]
    np.testing.assert_allclose(head.last_logits[0].numpy(), expected, atol=1e-6)


def test_angle_is_clamped_at_pi():
    # 170 deg + 0.3 rad > pi: unclamped, cos(3.267) - 0.2 = -1.192 would be above -1.2 and rise
    # further with theta; clamped, the target is -1 - m3 with no gradient pushing it outward
    head = two_d_head()
    emb = at(170).requires_grad_(True)
    cos_t = head.cosine(emb)[:, :1]
    target = head.target_logit(cos_t, torch.ones(1, 1))
    assert target.item() == pytest.approx(-1.2, abs=1e-6)
    (g,) = torch.autograd.grad(target.sum(), emb)
    assert g.abs().max() == 0
    # just before the clamp point the gradient is there, and points toward the class
    emb = at(155).requires_grad_(True)
    target = head.target_logit(head.cosine(emb)[:, :1], torch.ones(1, 1))
    assert target.item() == pytest.approx(math.cos(math.radians(155) + 0.3) - 0.2, abs=1e-6)
    (g,) = torch.autograd.grad(target.sum(), emb)
    assert g[0, 1] > 0  # at 155 deg a larger y is a smaller angle, a larger target


def test_target_gradient_finite_at_cos_exactly_plus_minus_one():
    # m1 theta + m2 < pi at theta = pi here: only the eps clamp keeps acos' = -1/sin finite
    head = two_d_head(m1=0.9, m2=0.0, m3=0.1)
    cos_t = torch.tensor([[1.0], [-1.0]], requires_grad=True)
    target = head.target_logit(cos_t, torch.ones(2, 1))
    (g,) = torch.autograd.grad(target.sum(), cos_t)
    assert torch.isfinite(g).all()  # (zero there: the clamp is flat outside its range)
    np.testing.assert_allclose(
        target.detach()[:, 0], [0.9, math.cos(0.9 * math.pi) - 0.1], atol=1e-3
    )


def test_special_cases_are_arcface_and_cosface():
    emb, weight, y = combined_inputs(2)
    near = slice(0, 6)  # theta + 0.5 < pi there: ArcFace without its fall-back
    arc = with_weight(ArcFaceHead(EMB, C, s=30.0, m=0.5), weight)
    comb = with_weight(CombinedMarginHead(EMB, C, s=30.0, m1=1.0, m2=0.5, m3=0.0), weight)
    assert_close(comb(emb[near], y[near]), arc(emb[near], y[near]), atol=1e-5)
    cosf = with_weight(CosFaceHead(EMB, C, s=30.0, m=0.35), weight)
    comb = with_weight(CombinedMarginHead(EMB, C, s=30.0, m1=1.0, m2=0.0, m3=0.35), weight)
    assert_close(comb(emb, y), cosf(emb, y), atol=1e-5)


def test_finite_under_bf16_autocast_at_the_extremes():
    # rows 0-2 along their class weight (cos exactly +1), rows 3-5 against it (-1)
    emb, weight, y = extreme_inputs([3.0, 1e-4, 1e4, -3.0, -1e-4, -1e4])
    head = with_weight(CombinedMarginHead(EMB, C), weight)
    check_finite_under_autocast(head, emb, y, expect_cos=EXTREME_COS)


def test_settings_and_paper_defaults():
    head = CombinedMarginHead(EMB, C)
    assert (head.s, head.m1, head.m2, head.m3, head.eps) == (64.0, 1.0, 0.3, 0.2, 1e-7)
    assert CombinedMarginHead.margins == {"m1": 1.0, "m2": 0.0, "m3": 0.0}
    assert CombinedMarginHead(EMB, 10, s="auto").s == pytest.approx(math.sqrt(2) * math.log(9))
    assert LossSpec("combined", CombinedMarginHead).head_settings == dict(
        s=64.0, m1=1.0, m2=0.3, m3=0.2, eps=1e-7
    )
    assert "m1=1, m2=0.3, m3=0.2" in repr(head)
