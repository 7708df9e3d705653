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

from fvloss.heads.magface import MagFaceHead
from fvloss.heads.registry import LossSpec

EMB, C, B = 8, 6, 24
L_A, U_A, L_M, U_M = 10.0, 110.0, 0.45, 0.8


def _cosines64(emb, weight):
    e = emb / torch.sqrt((emb * emb).sum(1, keepdim=True))
    w = weight / torch.sqrt((weight * weight).sum(1, keepdim=True))
    return e @ w.T


def _ce64(logits, y):
    zmax = logits.max(1, keepdim=True).values
    lse = zmax[:, 0] + torch.log(torch.exp(logits - zmax).sum(1))
    return (lse - logits[torch.arange(len(y)), y]).mean()


def magface_parts(emb, weight, y):
    cos = _cosines64(emb, weight)
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
    return logits, _ce64(logits, y) + lambda_g * g.mean()


def make_inputs(seed):
    """Rows 0-5 near their class, 6-11 nearly opposite, the rest random; norms 5 .. 141, some
    below l_a and some above u_a."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, EMB, generator=g)
    y = torch.arange(B) % C
    d = torch.randn(B, EMB, generator=g)
    w_y = F.normalize(weight[y])
    d[:6] = 3 * w_y[:6] + 0.3 * torch.randn(6, EMB, generator=g)
    d[6:12] = -3 * w_y[6:12] + 0.3 * torch.randn(6, EMB, generator=g)
    norms = torch.linspace(5.0, 141.0, B)[torch.randperm(B, generator=g)]
    return F.normalize(d) * norms[:, None], weight, y


def run_ref(emb, weight, y, *args):
    e64 = emb.double().clone().requires_grad_(True)
    w64 = weight.double().clone().requires_grad_(True)
    logits, loss = magface_ref(e64, w64, y, *args)
    loss.backward()
    return logits, loss, e64.grad, w64.grad


def run_head(head, emb, y):
    emb = emb.clone().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    loss = head(emb, y)
    loss.backward()
    return loss, emb.grad


def assert_close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(a.detach().double().numpy(), b.detach().double().numpy(), rtol, atol)


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
    head = MagFaceHead(EMB, C, s=s, lambda_g=lambda_g)
    with torch.no_grad():
        head.weight.copy_(weight)
    head = head.to(dtype)
    ref_logits, ref_loss, ref_gemb, ref_gw = run_ref(emb, weight, y, s, lambda_g)
    loss, gemb = run_head(head, emb.to(dtype), y)
    atol = 1e-5 * s
    assert_close(head.last_logits, ref_logits, atol=atol)
    assert_close(loss, ref_loss, atol=atol)
    assert_close(gemb, ref_gemb, atol=atol)
    assert_close(head.weight.grad, ref_gw, atol=atol)


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


def extreme_inputs():
    """cos exactly +1 (rows 0-2) and -1 (rows 3-5), feature norms 1e-4, 1 and 1e4."""
    y = torch.arange(6)
    emb = torch.zeros(6, EMB)
    for i, v in enumerate([1e-4, 1.0, 1e4, -1e-4, -1.0, -1e4]):
        emb[i, i] = v
    return emb, 2.0 * torch.eye(C, EMB), y


@pytest.mark.parametrize("autocast", [True, False])
def test_finite_at_extremes(autocast):
    emb, weight, y = extreme_inputs()
    head = MagFaceHead(EMB, C)
    with torch.no_grad():
        head.weight.copy_(weight)
    lin = torch.nn.Linear(EMB, EMB)  # a bf16 producer in front, as the embedder
    with torch.no_grad():
        lin.weight.copy_(torch.eye(EMB))
        lin.bias.zero_()
    emb.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        feats = lin(emb)
        assert feats.dtype == (torch.bfloat16 if autocast else torch.float32)
        cos_t = head.cosine(feats).gather(1, y[:, None])[:, 0]
        assert cos_t.tolist() == [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]  # really at the boundary
        loss = head(feats, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for g in (emb.grad, lin.weight.grad, head.weight.grad):
        assert torch.isfinite(g).all()
    assert head.weight.grad.abs().sum() > 0
