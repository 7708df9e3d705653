"""CurricularFaceHead against a float64 reference through the angle, and by hand."""

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
    assert_matches_ref,
    ce64,
    check_finite_under_autocast,
    cosines64,
    extreme_inputs,
    margin_inputs,
    run_head,
    run_ref,
)

from fvloss.heads.curricularface import CurricularFaceHead
from fvloss.losses import LossSpec


def curricular_ref(emb, weight, y, s, m, t_old, training):
    """The paper's eq. 8-10: T = cos(theta_y + m) (ArcFace's fall-back past pi), negatives
    ``cos_j > cos(theta_y + m)`` become ``cos_j (t + cos_j)``; ``t`` the EMA of the mean target
    cosine, updated first in training. Returns logits, loss and the ``t`` used."""
    cos = cosines64(emb, weight)
    onehot = torch.zeros_like(cos)
    onehot[torch.arange(len(y)), y] = 1.0
    cos_t = (cos * onehot).sum(1)
    t = 0.01 * cos_t.detach().mean().item() + 0.99 * t_old if training else t_old
    theta = torch.arccos(cos_t)
    with_margin = torch.cos(theta + m)
    target = torch.where(theta + m <= math.pi, with_margin, cos_t - m * math.sin(m))
    hard = cos > with_margin.detach()[:, None]
    neg = torch.where(hard, cos * (t + cos), cos)
    logits = s * (neg * (1 - onehot) + target[:, None] * onehot)
    return logits, ce64(logits, y), t


def curricular_inputs(seed: int, m: float = 0.5):
    """Targets near, opposite (past the fall-back point) and random; negatives on both sides of
    cos(theta_y + m); none within 2e-3 of a branch point."""
    emb, weight, y = margin_inputs(seed, m)  # asserts the targets' distance to the fall-back
    cos = cosines64(emb.double(), weight.double())
    cos_t = cos[torch.arange(B), y]
    t_m = torch.cos(torch.arccos(cos_t) + m)[:, None]
    neg = torch.ones_like(cos, dtype=torch.bool)
    neg[torch.arange(B), y] = False
    assert (cos - t_m)[neg].abs().min() > 2e-3
    assert (cos > t_m)[neg].any() and (cos <= t_m)[neg].any()
    return emb, weight, y


def make_head(weight, t: float = 0.0, **kw) -> CurricularFaceHead:
    head = CurricularFaceHead(EMB, C, **kw)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.t.fill_(t)
    return head


@pytest.mark.parametrize("t_old, training", [(0.0, True), (0.7, True), (0.7, False), (-0.2, True)])
@pytest.mark.parametrize("s, m", [(64.0, 0.5), (16.0, 0.3)])
def test_matches_float64_reference(t_old, training, s, m):
    emb, weight, y = curricular_inputs(0, m)
    head = make_head(weight, t_old, s=s, m=m).train(training)
    *ref, t = run_ref(curricular_ref, emb, weight, y, s, m, t_old, training)
    cos_t = head.cosine(emb).gather(1, y[:, None])[:, 0]
    beyond = cos_t < math.cos(math.pi - m)
    assert beyond.any() and (~beyond).any()  # both sides of the fall-back
    loss, gemb = run_head(head, emb, y)
    assert head.t.item() == pytest.approx(t, rel=1e-6, abs=1e-8)
    assert_matches_ref(head, loss, gemb, ref, atol=1e-6 * s)


def test_float64_module_matches_reference():
    emb, weight, y = curricular_inputs(1)
    head = make_head(weight, 0.4).double()
    *ref, t = run_ref(curricular_ref, emb, weight, y, 64.0, 0.5, 0.4, True)
    loss, gemb = run_head(head, emb.double(), y)
    assert gemb.dtype == torch.float64 and head.t.dtype == torch.float64
    assert head.t.item() == pytest.approx(t, rel=1e-6)
    assert_matches_ref(head, loss, gemb, ref, atol=64e-6, logits=False)


def test_negative_modulation_by_hand_in_2d():
    # embedding at 60 deg from class 0 (target), 30 deg from class 1, 120 deg from class 2:
    # cos(60 deg + 0.5) = 0.0237, so class 1 (cos 0.866) is hard, class 2 (cos -0.5) is not
    head = CurricularFaceHead(2, 3, s=1.0, m=0.5).eval()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
        head.t.fill_(0.3)
    a = math.radians(60)
    emb = torch.tensor([[math.cos(a), math.sin(a)]])
    head(emb, torch.tensor([0]))
    c1 = math.cos(math.radians(30))
    expected = [math.cos(a + 0.5), c1 * (0.3 + c1), -0.5]
    np.testing.assert_allclose(head.last_logits[0].numpy(), expected, atol=1e-6)
    # in training t moves first: 0.01 * cos(60 deg) + 0.99 * 0.3, and that t is used
    head.train()(emb, torch.tensor([0]))
    t = 0.01 * 0.5 + 0.99 * 0.3
    assert head.t.item() == pytest.approx(t, abs=1e-7)
    assert head.last_logits[0, 1].item() == pytest.approx(c1 * (t + c1), abs=1e-6)
    assert head.last_logits[0, 2].item() == pytest.approx(-0.5, abs=1e-6)


def test_hard_is_judged_against_cos_theta_plus_m_past_the_fall_back():
    # target at 170 deg: cos(theta + m) = cos(198.6 deg) = -0.948, the fall-back target
    # cos - m sin m = -1.224. A negative at 175 deg (cos -0.996) lies between: not hard by
    # cos(theta + m) (the paper's T, the authors' mask), it would be by the fall-back value.
    # One at 60 deg (cos 0.5) is hard either way.
    head = CurricularFaceHead(2, 3, s=1.0, m=0.5).eval()
    angles = torch.tensor([170.0, 175.0, 60.0]).deg2rad()
    with torch.no_grad():
        head.weight.copy_(torch.stack([angles.cos(), angles.sin()], 1))
        head.t.fill_(0.3)
    head(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    c0, c1, c2 = (math.cos(math.radians(d)) for d in (170, 175, 60))
    expected = [c0 - 0.5 * math.sin(0.5), c1, c2 * (0.3 + c2)]
    np.testing.assert_allclose(head.last_logits[0].numpy(), expected, atol=1e-6)


def test_ema_sequence_and_eval_keeps_t():
    emb, weight, y = curricular_inputs(2)
    head = make_head(weight)
    t = 0.0
    for sl in (slice(0, 8), slice(8, 24), slice(0, 24)):
        head(emb[sl], y[sl])
        cos_t = cosines64(emb[sl].double(), weight.double())[torch.arange(len(y[sl])), y[sl]]
        t = 0.01 * cos_t.mean().item() + 0.99 * t
        assert head.t.item() == pytest.approx(t, rel=1e-6)
    head.eval()
    head(emb, y)
    assert head.t.item() == pytest.approx(t, rel=1e-6)


def test_state_dict_round_trip():
    emb, weight, y = curricular_inputs(3)
    head = make_head(weight)
    for _ in range(5):
        head(emb, y)
    fresh = CurricularFaceHead(EMB, C)
    fresh.load_state_dict(head.state_dict())
    assert fresh.t.item() == head.t.item() != 0.0
    head.eval(), fresh.eval()
    assert fresh(emb, y).item() == head(emb, y).item()
    head.train(), fresh.train()
    assert fresh(emb, y).item() == head(emb, y).item()
    other = make_head(weight).eval()  # same weights, t = 0: the EMA state matters
    assert other(emb, y).item() != head.eval()(emb, y).item()


def test_finite_under_bf16_autocast_at_the_extremes():
    # rows 0-2 along their class weight (cos exactly +1), rows 3-5 against it (-1)
    emb, weight, y = extreme_inputs([3.0, 1e-4, 1e4, -3.0, -1e-4, -1e4])
    head = make_head(weight, 0.5)
    check_finite_under_autocast(head, emb, y, expect_cos=EXTREME_COS)
    assert torch.isfinite(head.t)


def test_settings_and_paper_defaults():
    head = CurricularFaceHead(EMB, C)
    assert (head.s, head.m, head.t.item()) == (64.0, 0.5, 0.0)
    assert "t" in head.state_dict() and not any(p is head.t for p in head.parameters())
    assert LossSpec("curricularface", CurricularFaceHead).head_settings == dict(
        s=64.0, m=0.5, eps=1e-7
    )
