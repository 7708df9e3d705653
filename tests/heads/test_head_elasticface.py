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

from fvloss.heads.elasticface import ElasticArcHead
from fvloss.losses import LossSpec


def draw_margins(seed, m, std, n=B):
    """The paper's m_i ~ N(m, std), one per sample, from torch's global generator."""
    torch.manual_seed(seed)
    return torch.normal(m, std, size=(n, 1))[:, 0].double()


def elastic_ref(emb, weight, y, s, margins):
    cos = cosines64(emb, weight)
    cos_t = cos[torch.arange(len(y)), y]
    theta = torch.arccos(cos_t)
    m = margins
    target = torch.where(theta + m <= math.pi, torch.cos(theta + m), cos_t - m * torch.sin(m))
    onehot = F.one_hot(y, cos.shape[1]).to(cos)
    logits = s * (cos * (1 - onehot) + target[:, None] * onehot)
    return logits, ce64(logits, y)


def new_head(weight, **kw):
    return with_weight(ElasticArcHead(EMB, C, **kw), weight)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("m,std", [(0.5, 0.05), (1.2, 0.2)])
@pytest.mark.parametrize("s", [64.0, 8.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(training, m, std, s, dtype):
    emb, weight, y = near_far_inputs(0)  # rows 0-5 near their class, 6-11 nearly opposite
    margins = draw_margins(7, m, std) if training else torch.full((B,), m, dtype=torch.float64)
    cos_t = cosines64(emb.double(), weight.double())[torch.arange(B), y]
    beyond = cos_t < torch.cos(math.pi - margins)
    # both branches exercised, no row within 2e-3 of its branch point
    assert beyond.any() and (~beyond).any()
    assert (cos_t - torch.cos(math.pi - margins)).abs().min() > 2e-3
    head = new_head(weight, s=s, m=m, std=std).to(dtype).train(training)
    ref = run_ref(elastic_ref, emb, weight, y, s, margins)
    torch.manual_seed(7)  # the module draws the reference's margins
    loss, gemb = run_head(head, emb.to(dtype), y)
    atol = 1e-5 * s
    assert_matches_ref(head, loss, gemb, ref, atol=atol)


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


@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_finite_at_extremes(autocast, training):
    emb, weight, y = extreme_inputs([1e-4, 1.0, 1e4, -1e-4, -1.0, -1e4])  # norms 1e-4 to 1e4
    head = new_head(weight).train(training)
    # a bf16 producer in front, as the embedder; its gradient too stays finite
    lin = check_finite_under_autocast(head, emb, y, enabled=autocast, expect_cos=EXTREME_COS)
    assert torch.isfinite(lin.weight.grad).all()


def test_paper_defaults_and_settings():
    head = ElasticArcHead(EMB, C)
    assert (head.s, head.m, head.std) == (64.0, 0.5, 0.05)
    assert head.margins == {"m": 0.0}
    assert LossSpec("elasticface", ElasticArcHead).head_settings == {
        "s": 64.0,
        "m": 0.5,
        "std": 0.05,
    }
