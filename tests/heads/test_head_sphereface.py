"""SphereFaceHead (A-Softmax) against a float64 reference written from the paper's equations.

The reference goes through the angle: ``cos(m theta)`` as ``cos(m * acos(c))`` and k by floor,
where the module uses Chebyshev's polynomial in cos; it runs under autograd on float64 copies
of the same inputs, the module in float32.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from heads_common import (
    EXTREME_COS,
    assert_matches_ref,
    ce64,
    check_finite_under_autocast,
    check_pml_parity,
    cosines64,
    extreme_inputs,
    run_head,
    run_ref,
    with_weight,
)

from fvloss.heads.sphereface import SphereFaceHead
from fvloss.losses import LossSpec

EMB, C = 8, 5
# one angle in the middle of each pi/12 slot: every k interval of m = 2, 3, 4, each at least
# pi/24 from a branch point k pi / m
ANGLES = [(j + 0.5) * math.pi / 12 for j in range(12)]


def sphereface_ref(emb, weight, y, m, lam):
    """Logits and loss from the paper: psi(theta) = (-1)^k cos(m theta) - 2k, annealed."""
    cos = cosines64(emb, weight)
    norm = torch.sqrt((emb * emb).sum(1))
    onehot = torch.zeros_like(cos)
    onehot[torch.arange(len(y)), y] = 1.0
    cos_t = (cos * onehot).sum(1)
    theta = torch.arccos(cos_t)
    k = torch.floor(m * theta.detach() / math.pi)
    psi = (-1.0) ** k * torch.cos(m * theta) - 2 * k
    target = (lam * cos_t + psi) / (1 + lam)
    logits = norm[:, None] * (cos * (1 - onehot) + target[:, None] * onehot)
    return logits, ce64(logits, y)


def sphere_inputs(seed: int):
    """Embeddings at each of ANGLES from their class weight, norms 0.5 to 4."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, EMB, generator=g)
    n = len(ANGLES)
    y = torch.arange(n) % C
    w = weight[y] / weight[y].norm(dim=1, keepdim=True)
    u = torch.randn(n, EMB, generator=g)
    u = u - (u * w).sum(1, keepdim=True) * w
    u = u / u.norm(dim=1, keepdim=True)
    a = torch.tensor(ANGLES)[:, None]
    norms = torch.linspace(0.5, 4.0, n)[:, None]
    emb = norms * (torch.cos(a) * w + torch.sin(a) * u)
    return emb, weight, y


def make_head(weight, **kw) -> SphereFaceHead:
    return with_weight(SphereFaceHead(EMB, C, **kw), weight)


@pytest.mark.parametrize("m", [4, 3, 2])
@pytest.mark.parametrize(
    "kw, it, lam",
    [
        (dict(base=0.0, lambda_min=0.0), 0, 0.0),  # plain A-Softmax
        ({}, 0, 1000 / 1.12),  # the first training forward counts it = 1, as Caffe's iter_
        ({}, 99, 1000 / (1 + 0.12 * 100)),
        ({}, 10_000, 5.0),  # lambda_min reached
    ],
)
def test_matches_float64_reference(m, kw, it, lam):
    emb, weight, y = sphere_inputs(0)
    head = make_head(weight, m=m, **kw)
    head.it.fill_(it)
    ref = run_ref(sphereface_ref, emb, weight, y, m, lam)
    loss, gemb = run_head(head, emb, y)
    assert head.it.item() == it + 1
    atol = 1e-6 * ref[0].abs().max().item()  # of the largest reference logit
    assert_matches_ref(head, loss, gemb, ref, atol=atol)


def test_float64_module_matches_reference():
    emb, weight, y = sphere_inputs(1)
    head = make_head(weight).double().eval()  # eval: it stays 0, lambda = base = 1000
    ref = run_ref(sphereface_ref, emb, weight, y, 4, 1000.0)
    loss, gemb = run_head(head, emb.double(), y)
    assert head.it.item() == 0 and gemb.dtype == torch.float64
    atol = 1e-6 * ref[0].abs().max().item()  # of the largest reference logit
    assert_matches_ref(head, loss, gemb, ref, atol=atol, logits=False)


@pytest.mark.parametrize(
    "deg, psi",
    [
        (0, 1.0),
        (22.5, 0.0),  # k = 0: cos(90 deg)
        (60, -1.5),  # k = 1: -cos(240 deg) - 2
        (67.5, -2.0),
        (112.5, -4.0),  # k = 2: cos(450 deg) - 4
        (120, -4.5),
        (150, -5.5),  # k = 3: -cos(600 deg) - 6
        (157.5, -6.0),
        (180, -7.0),
    ],
)
def test_psi_by_hand_in_each_interval(deg, psi):
    head = SphereFaceHead(2, 3, base=0.0, lambda_min=0.0)
    a = math.radians(deg)
    cos_t = torch.tensor([[math.cos(a)]])
    assert head.target_logit(cos_t, torch.ones(1, 1)).item() == pytest.approx(psi, abs=2e-6)


def test_logits_by_hand_in_2d():
    # embedding of norm 2 at 60 deg from class 0, 30 deg from class 1, 120 deg from class 2
    head = SphereFaceHead(2, 3, base=0.0, lambda_min=0.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]))
    a = math.radians(60)
    emb = 2 * torch.tensor([[math.cos(a), math.sin(a)]])
    head(emb, torch.tensor([0]))
    expected = [2 * -1.5, 2 * math.cos(math.radians(30)), 2 * -0.5]
    np.testing.assert_allclose(head.last_logits[0].numpy(), expected, atol=1e-5)
    # annealed: (lambda cos + psi) / (1 + lambda) on the target only, lambda = 5 at it >= 10k
    head.base, head.lambda_min = 1000.0, 5.0
    head.it.fill_(10_000)
    head(emb, torch.tensor([0]))
    assert head.last_logits[0, 0].item() == pytest.approx(2 * (5 * 0.5 - 1.5) / 6, abs=1e-5)
    np.testing.assert_allclose(head.last_logits[0, 1:].numpy(), expected[1:], atol=1e-5)


def test_finite_under_bf16_autocast_at_the_extremes():
    # features along a class weight (cos exactly +1) or against it (-1); norms 1e-4 to 1e4;
    # with C = 5 classes the sixth row is against class 0
    emb, weight, y = extreme_inputs([3.0, 1e-4, 1e4, -3.0, -1e-4, -1e4], n_classes=C)
    check_finite_under_autocast(make_head(weight), emb, y, expect_cos=EXTREME_COS)


def test_state_dict_round_trip_and_eval_keeps_the_counter():
    emb, weight, y = sphere_inputs(2)
    head = make_head(weight)
    for _ in range(7):
        head(emb, y)
    assert head.it.item() == 7
    fresh = SphereFaceHead(EMB, C)
    fresh.load_state_dict(head.state_dict())
    assert fresh.it.item() == 7
    head.eval(), fresh.eval()
    assert fresh(emb, y).item() == head(emb, y).item()
    assert head.it.item() == 7  # eval forwards do not count
    head.train(), fresh.train()
    assert fresh(emb, y).item() == head(emb, y).item()
    assert SphereFaceHead(EMB, C).eval()(emb, y).item() != head(emb, y).item()  # weights matter


def test_plain_a_softmax_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    emb, weight, y = sphere_inputs(3)
    head = make_head(weight, base=0.0, lambda_min=0.0)
    ref = pml.SphereFaceLoss(num_classes=C, embedding_size=EMB, margin=4)
    check_pml_parity(head, ref, emb, weight, y, atol=1e-6)


def test_settings_and_paper_defaults():
    head = SphereFaceHead(EMB, C)
    assert (head.m, head.base, head.gamma, head.power, head.lambda_min) == (4, 1000, 0.12, 1, 5)
    assert SphereFaceHead.margins == {}
    assert LossSpec("sphereface", SphereFaceHead).head_settings == dict(
        m=4, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0
    )
    assert head.lam().item() == 1000.0
    with pytest.raises(ValueError, match="integer"):
        SphereFaceHead(EMB, C, m=2.5)
