"""MagFaceHead against a float64 reference written from the paper (Meng et al., CVPR 2021).

The reference goes through the angle ``theta = arccos(cos)`` (the module uses the trigonometric
identity), with ArcFace's fall-back beyond theta + m(a) > pi and the magnitude clamped with its
gradient as in the authors' code; it is evaluated with autograd on float64 copies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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
    near_far_inputs,
    run_head,
    run_ref,
    with_weight,
)

from fvloss.heads.magface import MagFaceHead
from fvloss.losses import LossSpec

L_A, U_A, L_M, U_M = 10.0, 110.0, 0.45, 0.8


def magface_parts(emb, weight, y):
    cos = cosines64(emb, weight)
    norm = torch.sqrt((emb * emb).sum(1))
    a = norm.clamp(L_A, U_A)
    m = (U_M - L_M) / (U_A - L_A) * (a - L_A) + L_M
    cos_t = cos[torch.arange(len(y)), y]
    return cos, norm, a, m, cos_t, torch.arccos(cos_t)


def magface_ref(emb, weight, y, s, lambda_g):
    cos, _, a, m, cos_t, theta = magface_parts(emb, weight, y)
    target = torch.where(theta + m <= math.pi, torch.cos(theta + m), cos_t - m * torch.sin(m))
    onehot = F.one_hot(y, cos.shape[1]).to(cos)
    logits = s * (cos * (1 - onehot) + target[:, None] * onehot)
    g = 1 / a + a / U_A**2
    return logits, ce64(logits, y) + lambda_g * g.mean()


def make_inputs(seed):
    """Rows 0-5 near their class, 6-11 nearly opposite, the rest random; norms 5 .. 141, some
    below l_a and some above u_a."""
    g = torch.Generator().manual_seed(seed)
    d, weight, y = near_far_inputs(g)  # the norms' permutation comes next from the same g
    norms = torch.linspace(5.0, 141.0, B)[torch.randperm(B, generator=g)]
    return F.normalize(d) * norms[:, None], weight, y


@pytest.mark.parametrize("s", [64.0, 8.0])
@pytest.mark.parametrize("lambda_g", [35.0, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_float64_reference(s, lambda_g, dtype, seed):
    emb, weight, y = make_inputs(seed)
    _, norm, _, m, cos_t, _ = magface_parts(emb.double(), weight.double(), y)
    beyond = cos_t < torch.cos(math.pi - m)
    # both margin branches and both clamps are exercised, none within reach of its edge
    assert beyond.any() and (~beyond).any()
    assert (norm < L_A).any() and (norm > U_A).any() and ((norm > L_A) & (norm < U_A)).any()
    assert (cos_t - torch.cos(math.pi - m)).abs().min() > 2e-3
    assert (norm - L_A).abs().min() > 0.1 and (norm - U_A).abs().min() > 0.1
    head = with_weight(MagFaceHead(EMB, C, s=s, lambda_g=lambda_g), weight).to(dtype)
    ref = run_ref(magface_ref, emb, weight, y, s, lambda_g)
    loss, gemb = run_head(head, emb.to(dtype), y)
    atol = 1e-5 * s
    assert_matches_ref(head, loss, gemb, ref, atol=atol)


def test_margin_at_the_clamps_by_hand():
    head = MagFaceHead(2, 3, s=1.0)
    norms = torch.tensor([[5.0], [10.0], [60.0], [110.0], [500.0]])
    assert head.margin(norms.clamp(L_A, U_A))[:, 0].tolist() == pytest.approx(
        [0.45, 0.45, 0.625, 0.8, 0.8], abs=1e-7
    )
    cos_t = torch.full((5, 1), math.cos(1.0))
    got = head.target_logit(cos_t, norms)[:, 0]
    expected = [math.cos(1.0 + v) for v in (0.45, 0.45, 0.625, 0.8, 0.8)]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    # beyond theta + m > pi the fall-back cos - m sin(m), with the row's own margin
    far = head.target_logit(torch.full((2, 1), math.cos(3.0)), torch.tensor([[10.0], [110.0]]))
    assert 3.0 + 0.45 > math.pi  # both rows beyond
    np.testing.assert_allclose(
        far[:, 0].numpy(),
        [math.cos(3.0) - 0.45 * math.sin(0.45), math.cos(3.0) - 0.8 * math.sin(0.8)],
        atol=1e-6,
    )


def test_regulariser_value_and_gradient_by_hand():
    head = MagFaceHead(2, 3, s=1.0, lambda_g=35.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    y = torch.tensor([0, 1, 2])
    d = torch.tensor([[0.8, 0.6], [0.6, 0.8], [-0.6, 0.8]])  # unit directions
    emb = (d * torch.tensor([[5.0], [60.0], [500.0]])).requires_grad_(True)  # a = 10, 60, 110
    loss = head(emb, y)
    ce = F.cross_entropy(head.last_logits, y)
    g = [0.1 + 10 / 12100, 1 / 60 + 60 / 12100, 2 / 110]  # 1/a + a/u_a^2; 2/u_a at its minimum
    assert (loss - ce).item() == pytest.approx(35.0 * sum(g) / 3, rel=1e-6)
    loss.backward()
    # the clamp's gradient: radially nothing moves a norm outside [l_a, u_a] (the cross-entropy
    # sees only the direction there), inside the margin and g(a) pull on it
    radial = (emb.grad * d).sum(1)
    assert radial[0].item() == pytest.approx(0.0, abs=1e-7)
    assert radial[2].item() == pytest.approx(0.0, abs=1e-7)
    assert abs(radial[1].item()) > 1e-3


def test_margins_and_settings():
    head = MagFaceHead(EMB, C)
    assert (head.s, head.l_a, head.u_a, head.l_m, head.u_m, head.lambda_g) == (
        64.0,
        10.0,
        110.0,
        0.45,
        0.8,
        35.0,
    )
    assert head.margins == {"l_m": 0.0, "u_m": 0.0}
    settings = LossSpec("magface", MagFaceHead).head_settings
    assert settings == {
        "s": 64.0,
        "l_a": 10.0,
        "u_a": 110.0,
        "l_m": 0.45,
        "u_m": 0.8,
        "lambda_g": 35.0,
    }
    # the margin is the norm's, whatever a (mistaken) schedule writes into m
    emb, weight, y = make_inputs(2)
    with torch.no_grad():
        head.weight.copy_(weight)
        before = head(emb, y)
        head.m = 0.0
        assert head(emb, y).item() == before.item()


@pytest.mark.parametrize("autocast", [True, False])
def test_finite_at_extremes(autocast):
    emb, weight, y = extreme_inputs([1e-4, 1.0, 1e4, -1e-4, -1.0, -1e4])  # norms 1e-4 to 1e4
    head = with_weight(MagFaceHead(EMB, C), weight)
    # a bf16 producer in front, as the embedder; its gradient too stays finite
    lin = check_finite_under_autocast(head, emb, y, enabled=autocast, expect_cos=EXTREME_COS)
    assert torch.isfinite(lin.weight.grad).all()
