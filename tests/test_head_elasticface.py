"""ElasticArcHead against a float64 reference written from the paper (Boutros et al., CVPRW 2022).

The reference goes through the angle ``theta = arccos(cos)`` (the module uses the trigonometric
identity) with ArcFace's fall-back beyond theta + m_i > pi; its per-sample margins are drawn
after the same torch seed as the module's, so both see the same ones.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fvloss.heads.elasticface import ElasticArcHead
from fvloss.heads.registry import LossSpec

EMB, C, B = 8, 6, 24


def _cosines64(emb, weight):
    e = emb / torch.sqrt((emb * emb).sum(1, keepdim=True))
    w = weight / torch.sqrt((weight * weight).sum(1, keepdim=True))
    return e @ w.T


def _ce64(logits, y):
    zmax = logits.max(1, keepdim=True).values
    lse = zmax[:, 0] + torch.log(torch.exp(logits - zmax).sum(1))
    return (lse - logits[torch.arange(len(y)), y]).mean()


def draw_margins(seed, m, std, n=B):
    """The paper's m_i ~ N(m, std), one per sample, from torch's global generator."""
    torch.manual_seed(seed)
    return torch.normal(m, std, size=(n, 1))[:, 0].double()


def elastic_ref(emb, weight, y, s, margins):
    cos = _cosines64(emb, weight)
    cos_t = cos[torch.arange(len(y)), y]
    theta = torch.arccos(cos_t)
    m = margins
    target = torch.where(theta + m <= math.pi, torch.cos(theta + m), cos_t - m * torch.sin(m))
    onehot = F.one_hot(y, cos.shape[1]).to(cos)
    logits = s * (cos * (1 - onehot) + target[:, None] * onehot)
    return logits, _ce64(logits, y)


def make_inputs(seed):
    """Rows 0-5 near their class, 6-11 nearly opposite, the rest random."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, EMB, generator=g)
    y = torch.arange(B) % C
    emb = torch.randn(B, EMB, generator=g)
    w_y = F.normalize(weight[y])
    emb[:6] = 3 * w_y[:6] + 0.3 * torch.randn(6, EMB, generator=g)
    emb[6:12] = -3 * w_y[6:12] + 0.3 * torch.randn(6, EMB, generator=g)
    return emb, weight, y


def run_ref(emb, weight, y, *args):
    e64 = emb.double().clone().requires_grad_(True)
    w64 = weight.double().clone().requires_grad_(True)
    logits, loss = elastic_ref(e64, w64, y, *args)
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


def new_head(weight, **kw):
    head = ElasticArcHead(EMB, C, **kw)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("m,std", [(0.5, 0.05), (1.2, 0.2)])
@pytest.mark.parametrize("s", [64.0, 8.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(training, m, std, s, dtype):
    emb, weight, y = make_inputs(0)
    margins = draw_margins(7, m, std) if training else torch.full((B,), m, dtype=torch.float64)
    cos_t = _cosines64(emb.double(), weight.double())[torch.arange(B), y]
    beyond = cos_t < torch.cos(math.pi - margins)
    # both branches exercised, no row within 2e-3 of its branch point
    assert beyond.any() and (~beyond).any()
    assert (cos_t - torch.cos(math.pi - margins)).abs().min() > 2e-3
    head = new_head(weight, s=s, m=m, std=std).to(dtype).train(training)
    ref_logits, ref_loss, ref_gemb, ref_gw = run_ref(emb, weight, y, s, margins)
    torch.manual_seed(7)  # the module draws the reference's margins
    loss, gemb = run_head(head, emb.to(dtype), y)
    atol = 1e-5 * s
    assert_close(head.last_logits, ref_logits, atol=atol)
    assert_close(loss, ref_loss, atol=atol)
    assert_close(gemb, ref_gemb, atol=atol)
    assert_close(head.weight.grad, ref_gw, atol=atol)


def known_angle(n):
    """2-D head: n embeddings at 1 rad from class 0."""
    head = ElasticArcHead(2, 3, s=1.0, m=0.5, std=0.05)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    emb = torch.tensor([[math.cos(1.0), math.sin(1.0)]]).repeat(n, 1)
    return head, emb, torch.zeros(n, dtype=torch.long)


def test_drawn_margins_by_hand():
    head, emb, y = known_angle(4000)
    torch.manual_seed(3)
    head(emb, y)
    drawn = torch.acos(head.last_logits[:, 0].double()) - 1.0  # theta + m_i = acos(target)
    np.testing.assert_allclose(drawn.numpy(), draw_margins(3, 0.5, 0.05, 4000).numpy(), atol=2e-6)
    # one margin per sample, N(0.5, 0.05): the sample's mean and std (4000 draws: +-3.5 sigma)
    assert drawn.mean().item() == pytest.approx(0.5, abs=0.003)
    assert drawn.std().item() == pytest.approx(0.05, abs=0.002)
    # a new draw at each step
    head(emb, y)
    assert not torch.allclose(torch.acos(head.last_logits[:, 0].double()) - 1.0, drawn)
    # a warm-up ramps the mean and leaves std alone
    head.m = 0.25
    head(emb, y)
    ramped = torch.acos(head.last_logits[:, 0].double()) - 1.0
    assert ramped.mean().item() == pytest.approx(0.25, abs=0.003)
    assert ramped.std().item() == pytest.approx(0.05, abs=0.002)


def test_eval_mode_uses_the_mean_margin():
    head, emb, y = known_angle(8)
    head.eval()
    state = torch.get_rng_state()
    head(emb, y)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn: deterministic
    np.testing.assert_allclose(head.last_logits[:, 0].numpy(), math.cos(1.5), atol=1e-6)
    np.testing.assert_allclose(
        head.last_logits[:, 1].numpy(), math.cos(math.pi / 2 - 1.0), atol=1e-6
    )
    head.train()
    head(emb, y)
    assert not torch.allclose(head.last_logits[:, 0], torch.tensor(math.cos(1.5)), atol=1e-4)


def extreme_inputs():
    """cos exactly +1 (rows 0-2) and -1 (rows 3-5), feature norms 1e-4, 1 and 1e4."""
    y = torch.arange(6)
    emb = torch.zeros(6, EMB)
    for i, v in enumerate([1e-4, 1.0, 1e4, -1e-4, -1.0, -1e4]):
        emb[i, i] = v
    return emb, 2.0 * torch.eye(C, EMB), y


@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_finite_at_extremes(autocast, training):
    emb, weight, y = extreme_inputs()
    head = new_head(weight).train(training)
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


def test_paper_defaults_and_settings():
    head = ElasticArcHead(EMB, C)
    assert (head.s, head.m, head.std) == (64.0, 0.5, 0.05)
    assert head.margins == {"m": 0.0}
    assert LossSpec("elasticface", ElasticArcHead).head_settings == {
        "s": 64.0,
        "m": 0.5,
        "std": 0.05,
    }
