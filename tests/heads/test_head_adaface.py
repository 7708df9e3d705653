"""AdaFaceHead against a float64 reference written from the paper (Kim et al., CVPR 2022).

The reference goes through the angle ``theta = arccos(cos)`` with the clips of the authors'
code (norm to [0.001, 100] and detached, cosine to +-(1 - eps), angle to [eps, pi - eps]) and
updates the EMA statistics first, as they do; it is evaluated with autograd on float64 copies.
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
)

from fvloss.heads.adaface import AdaFaceHead
from fvloss.losses import LossSpec

EPS, H, T_ALPHA = 1e-3, 0.333, 0.01


def adaface_parts(emb, weight, y, m, mean0, std0, training=True):
    """The paper's quantities in float64: cosines, z (unclipped and clipped), theta, stats."""
    cos = cosines64(emb, weight)
    norm = torch.sqrt((emb * emb).sum(1)).detach().clamp(0.001, 100.0)
    mean, std = mean0, std0
    if training:  # EMA first; unbiased std of the batch
        n = len(norm)
        bstd = torch.sqrt(((norm - norm.mean()) ** 2).sum() / (n - 1))
        mean = T_ALPHA * norm.mean().item() + (1 - T_ALPHA) * mean0
        std = T_ALPHA * bstd.item() + (1 - T_ALPHA) * std0
    z_raw = H * (norm - mean) / (std + EPS)
    cos_t = cos[torch.arange(len(y)), y]
    theta = torch.arccos(cos_t.clamp(-1 + EPS, 1 - EPS))
    return cos, z_raw, z_raw.clamp(-1, 1), cos_t, theta, mean, std


def adaface_ref(emb, weight, y, s, m, mean0, std0, training=True):
    cos, _, z, _, theta, _, _ = adaface_parts(emb, weight, y, m, mean0, std0, training)
    target = torch.cos((theta - m * z).clamp(EPS, math.pi - EPS)) - (m + m * z)
    onehot = F.one_hot(y, cos.shape[1]).to(cos)
    logits = s * (cos * (1 - onehot) + target[:, None] * onehot)
    return logits, ce64(logits, y)


def make_inputs(seed):
    """Rows 0-5 near their class, 6-11 nearly opposite, the rest random; high and low norms
    among the near and the opposite rows, so that both angle clips act."""
    d, weight, y = near_far_inputs(seed)
    norms = torch.tensor([11.0, 12.0, 6.0, 2.0, 9.0, 0.7, 0.5, 1.0, 11.5, 6.5, 0.8, 3.0])
    norms = torch.cat([norms, torch.linspace(0.6, 11.7, B - 12)])
    return F.normalize(d) * norms[:, None], weight, y


def new_head(weight, s=64.0, m=0.4, mean=6.0, std=1.5):
    head = AdaFaceHead(EMB, C, s=s, m=m)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.batch_mean.fill_(mean)  # statistics that make z reach both clips
        head.batch_std.fill_(std)
    return head


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("m", [0.4, 0.7])
@pytest.mark.parametrize("s", [64.0, 8.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(training, m, s, dtype):
    emb, weight, y = make_inputs(0)
    _, z_raw, z, cos_t, theta, mean, std = adaface_parts(
        emb.double(), weight.double(), y, m, 6.0, 1.5, training
    )
    angle = theta - m * z
    # every piece is exercised, and no input sits within 2e-3 of a clip
    assert (z_raw > 1).any() and (z_raw < -1).any() and (z_raw.abs() < 1).any()
    assert (angle < EPS).any() and (angle > math.pi - EPS).any()
    assert ((z_raw.abs() - 1).abs().min() > 2e-3) and (cos_t.abs().max() < 1 - EPS - 2e-3)
    assert min((angle - EPS).abs().min(), (angle - math.pi + EPS).abs().min()) > 2e-3
    head = new_head(weight, s, m).to(dtype).train(training)
    ref = run_ref(adaface_ref, emb, weight, y, s, m, 6.0, 1.5, training)
    loss, gemb = run_head(head, emb.to(dtype), y)
    atol = 1e-5 * s
    assert_matches_ref(head, loss, gemb, ref, atol=atol)
    assert head.batch_mean.item() == pytest.approx(mean, rel=1e-6)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-6)


def hand_head(mean=10.0, std=2.0):
    head = AdaFaceHead(2, 3, s=1.0, m=0.4).eval()  # eval: the statistics stay put
    head.batch_mean.fill_(mean)
    head.batch_std.fill_(std)
    return head


def test_margin_scaler_and_angle_clips_by_hand():
    head = hand_head()
    thetas = [1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 3.0]
    norms = [10.0, 40.0, 200.0, 0.5, 13.0, 40.0, 0.5]  # z = 0, +1, +1 (norm 100), -1, 0.4993, ...
    cos_t = torch.tensor(thetas)[:, None].cos()
    got = head.target_logit(cos_t, torch.tensor(norms)[:, None])[:, 0]
    z = 0.333 * 3.0 / 2.001
    expected = [
        math.cos(1.0) - 0.4,  # z = 0: CosFace
        math.cos(0.6) - 0.8,  # z = +1 (clipped from 4.99): cos(theta - m) - 2m
        math.cos(0.6) - 0.8,
        math.cos(1.4),  # z = -1 (clipped from -1.58): ArcFace
        math.cos(1.0 - 0.4 * z) - 0.4 * (1 + z),
        math.cos(1e-3) - 0.8,  # 0.2 - 0.4 < eps: the angle is clipped at eps
        math.cos(math.pi - 1e-3),  # 3.0 + 0.4 > pi - eps: clipped there
    ]
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-6)
    # the clipped angles are eps and pi - eps exactly, not 0 and pi (cos differs by 5e-7)
    np.testing.assert_allclose(got[5:].numpy(), expected[5:], rtol=0, atol=1e-7)
    # the authors' clamp of the cosine to 1 - eps before acos: cos = 1 reads as 0.999
    at_one = head.target_logit(torch.ones(1, 1), torch.full((1, 1), 10.0))
    assert at_one.item() == pytest.approx(0.999 - 0.4, abs=1e-6)
    head.m = 0.0  # a margin warm-up at its start: plain cosines whatever z
    assert torch.equal(head.target_logit(cos_t[:5], torch.tensor(norms[:5])[:, None]), cos_t[:5])


def test_ema_update_by_hand():
    head = AdaFaceHead(2, 3, s=1.0, m=0.4)
    norms = torch.tensor([1.0, 2.0, 3.0, 200.0])  # 200 counts as 100
    cos_t = torch.full((4, 1), math.cos(1.0))
    got = head.target_logit(cos_t, norms[:, None])[:, 0]
    # mean 26.5; unbiased variance (25.5^2 + 24.5^2 + 23.5^2 + 73.5^2) / 3 = 7205 / 3
    mean, std = 0.01 * 26.5 + 0.99 * 20.0, 0.01 * math.sqrt(7205 / 3) + 0.99 * 100.0
    assert head.batch_mean.item() == pytest.approx(mean, rel=1e-6)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-6)
    # this batch's margins already use the updated statistics (not 20 / 100)
    z = [0.333 * (n - mean) / (std + 1e-3) for n in (1.0, 2.0, 3.0, 100.0)]
    np.testing.assert_allclose(
        got.numpy(), [math.cos(1 - 0.4 * v) - 0.4 * (1 + v) for v in z], atol=1e-6
    )
    z_old = 0.333 * (1.0 - 20.0) / (100.0 + 1e-3)
    assert abs(got[0].item() - (math.cos(1 - 0.4 * z_old) - 0.4 * (1 + z_old))) > 1e-5
    # one row: the mean moves, the std (undefined) does not
    head.target_logit(cos_t[:1], torch.tensor([[5.0]]))
    assert head.batch_mean.item() == pytest.approx(0.01 * 5.0 + 0.99 * mean, rel=1e-6)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-6)


def test_buffers_fixed_in_eval_and_saved_in_state_dict():
    emb, weight, y = make_inputs(1)
    head = new_head(weight, s=16.0)
    head.eval()
    head(emb, y)
    assert (head.batch_mean.item(), head.batch_std.item()) == (6.0, 1.5)
    head.train()
    head(emb, y)
    assert head.batch_mean.item() != 6.0 and head.batch_std.item() != 1.5
    state = head.state_dict()
    assert {"batch_mean", "batch_std"} <= set(state)
    other = AdaFaceHead(EMB, C, s=16.0)
    fresh = other(emb, y).item()  # training mode: its own statistics move from 20 / 100
    other.load_state_dict(state)
    head.eval(), other.eval()
    loss = head(emb, y).item()
    assert other(emb, y).item() == loss
    assert abs(fresh - loss) > 1e-3  # the statistics matter: the round trip is no tautology
    assert other.batch_mean.item() == head.batch_mean.item()


@pytest.mark.parametrize("autocast", [True, False])
def test_finite_at_extremes(autocast):
    emb, weight, y = extreme_inputs([1e-4, 1.0, 1e4, -1e-4, -1.0, -1e4])  # norms 1e-4 to 1e4
    head = new_head(weight, m=0.4, mean=1.0, std=1.0)
    # a bf16 producer in front, as the embedder; its gradient too stays finite
    lin = check_finite_under_autocast(head, emb, y, enabled=autocast, expect_cos=EXTREME_COS)
    assert torch.isfinite(lin.weight.grad).all()
    assert torch.isfinite(head.batch_mean).all() and torch.isfinite(head.batch_std).all()


def test_paper_defaults_and_settings():
    head = AdaFaceHead(EMB, C)
    assert (head.s, head.m, head.h, head.t_alpha, head.eps) == (64.0, 0.4, 0.333, 0.01, 1e-3)
    assert (head.batch_mean.item(), head.batch_std.item()) == (20.0, 100.0)
    assert head.margins == {"m": 0.0}
    spec = LossSpec("adaface", AdaFaceHead)
    assert spec.head_settings == {"s": 64.0, "m": 0.4, "h": 0.333, "t_alpha": 0.01, "eps": 1e-3}
