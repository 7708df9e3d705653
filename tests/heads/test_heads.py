"""Classification heads against hand-written float64 references (values and gradients).

The references below are written from the papers, not from the module: ArcFace through the
angle ``theta = arccos(cos)`` (the module uses the trigonometric identity), CosFace as
``cos - m``, softmax as a plain affine map. Each is evaluated with torch.autograd on float64
copies of the same inputs; the modules compute in float32, hence the tolerances.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from heads_common import (
    EMB,
    B,
    C,
    assert_close,
    assert_matches_ref,
    ce64,
    check_pml_parity,
    cosines64,
    extreme_inputs,
    identity_linear,
    margin_inputs,
    run_head,
    run_ref,
    with_weight,
)

from fvloss.heads import ArcFaceHead, CosFaceHead, MarginHead, SoftmaxHead, adacos_scale
from fvloss.losses import LOSSES, make_head, register_loss

# ----------------------------------------------------------------------------- references


def arcface_ref(emb, weight, y, s, m, easy_margin=False):
    """Scaled logits and loss of ArcFace, in float64, through the angle."""
    cos = cosines64(emb, weight)
    onehot = torch.zeros_like(cos)
    onehot[torch.arange(len(y)), y] = 1.0
    cos_t = (cos * onehot).sum(1)
    theta = torch.arccos(cos_t)
    with_margin = torch.cos(theta + m)
    if easy_margin:
        target = torch.where(cos_t > 0, with_margin, cos_t)
    else:
        target = torch.where(theta + m <= math.pi, with_margin, cos_t - m * math.sin(m))
    logits = s * (cos * (1 - onehot) + target[:, None] * onehot)
    return logits, ce64(logits, y)


def cosface_ref(emb, weight, y, s, m):
    cos = cosines64(emb, weight)
    onehot = torch.zeros_like(cos)
    onehot[torch.arange(len(y)), y] = 1.0
    logits = s * (cos - m * onehot)
    return logits, ce64(logits, y)


def softmax_ref(emb, weight, bias, y):
    logits = emb @ weight.T + bias
    return logits, ce64(logits, y)


# ----------------------------------------------------------------------------- ArcFace / CosFace


@pytest.mark.parametrize("m", [0.5, 1.2])
@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("s", [64.0, 8.0])
def test_arcface_matches_float64_reference(m, easy_margin, s):
    emb, weight, y = margin_inputs(0, m)
    head = with_weight(ArcFaceHead(EMB, C, s=s, m=m, easy_margin=easy_margin), weight)
    cos = head.cosine(emb)
    assert cos.dtype == torch.float32 and cos.shape == (B, C)
    ref = run_ref(arcface_ref, emb, weight, y, s, m, easy_margin=easy_margin)
    # both branches of the margin are exercised
    cos_t = cos.detach().gather(1, y[:, None])[:, 0]
    if easy_margin:
        assert (cos_t > 0).any() and (cos_t <= 0).any()
    else:
        beyond = cos_t < math.cos(math.pi - m)
        assert beyond.any() and (~beyond).any()
    assert_close(head.margin_logits(cos.detach(), y), ref[0], atol=1e-5 * s)  # ref[0]: logits
    loss, gemb = run_head(head, emb, y)
    assert_matches_ref(head, loss, gemb, ref, atol=1e-5 * s, logits=False)


def test_arcface_margin_is_what_the_paper_says_at_a_known_angle():
    # 2-D: embedding at 30 degrees from class 0, class 1 at 90 degrees
    head = ArcFaceHead(2, 3, s=1.0, m=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    a = math.radians(30)
    emb = torch.tensor([[math.cos(a), math.sin(a)]])
    logits = head.margin_logits(head.cosine(emb), torch.tensor([0]))
    expected = [math.cos(a + 0.5), math.cos(math.pi / 2 - a), -math.cos(a)]
    np.testing.assert_allclose(logits[0].detach().numpy(), expected, atol=1e-6)


def test_arcface_margin_is_read_at_each_call():
    emb, weight, y = margin_inputs(1, 0.5)
    head = ArcFaceHead(EMB, C, s=10.0, m=0.5)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.m = 0.2  # what a margin warm-up callback does
        logits = head.margin_logits(head.cosine(emb), y)
    ref_logits, _ = arcface_ref(emb.double(), weight.double(), y, 10.0, 0.2)
    assert_close(logits, ref_logits, atol=1e-4)


@pytest.mark.parametrize("m", [0.35, 0.1])
def test_cosface_matches_float64_reference(m):
    emb, weight, y = margin_inputs(2, 0.5)
    head = with_weight(CosFaceHead(EMB, C, s=30.0, m=m), weight)
    ref = run_ref(cosface_ref, emb, weight, y, 30.0, m)
    assert_close(head.margin_logits(head.cosine(emb).detach(), y), ref[0], atol=3e-4)
    loss, gemb = run_head(head, emb, y)
    assert_matches_ref(head, loss, gemb, ref, atol=3e-4, logits=False)


def test_paper_defaults():
    arc, cos = ArcFaceHead(EMB, C), CosFaceHead(EMB, C)
    assert (arc.s, arc.m, arc.easy_margin) == (64.0, 0.5, False)
    assert (cos.s, cos.m) == (64.0, 0.35)


@pytest.mark.parametrize("cls", [ArcFaceHead, CosFaceHead])
@pytest.mark.parametrize("n", [3, 10, 500])
def test_auto_scale_is_adacos(cls, n):
    assert cls(EMB, n, s="auto").s == pytest.approx(math.sqrt(2) * math.log(n - 1), rel=1e-12)
    assert adacos_scale(n) == pytest.approx(math.sqrt(2) * math.log(n - 1), rel=1e-12)


def test_auto_scale_needs_three_classes():
    with pytest.raises(ValueError, match="at least 3"):
        ArcFaceHead(EMB, 2, s="auto")


def test_margin_head_cosine_is_plain_cosines():
    emb, weight, y = margin_inputs(3, 0.5)
    head = with_weight(CosFaceHead(EMB, C), weight)
    assert_close(head.cosine(emb), cosines64(emb.double(), weight.double()), atol=1e-6)
    with pytest.raises(NotImplementedError):
        MarginHead(EMB, C, 1.0, 0.1).target_logit(torch.zeros(2, 1), torch.ones(2, 1))


def _extreme_inputs():
    """Embeddings exactly equal / opposite to a class weight: cos is exactly +1 / -1."""
    # rows 0, 1 along classes 0, 1 (norms 3, 0.5): cos = +1; rows 2, 3 against 2, 3: cos = -1
    emb, weight, y = extreme_inputs([3.0, 0.5, -3.0, -0.5])
    return with_weight(ArcFaceHead(EMB, C, s=64.0, m=0.5), weight), emb, y


def test_arcface_finite_at_cos_plus_minus_one():
    head, emb, y = _extreme_inputs()
    cos = head.cosine(emb).detach()
    cos_t = cos.gather(1, y[:, None])[:, 0]
    assert cos_t.tolist() == [1.0, 1.0, -1.0, -1.0]  # really at the boundary
    loss, gemb = run_head(head, emb, y)
    assert torch.isfinite(loss)
    assert torch.isfinite(gemb).all() and torch.isfinite(head.weight.grad).all()
    # the values there: cos(0 + m) (up to the sqrt clamp) and the fallback -1 - m sin(m)
    t = head.margin_logits(cos, y).gather(1, y[:, None])[:, 0] / head.s
    np.testing.assert_allclose(t[:2].numpy(), math.cos(0.5), atol=2e-4)
    np.testing.assert_allclose(t[2:].numpy(), -1 - 0.5 * math.sin(0.5), atol=1e-6)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_under_bf16_autocast(easy_margin):
    head, emb, y = _extreme_inputs()
    head.easy_margin = easy_margin
    g = torch.Generator().manual_seed(4)
    emb = torch.cat([emb, torch.randn(8, EMB, generator=g)])
    y = torch.cat([y, torch.arange(8) % C])
    emb.requires_grad_(True)
    lin = torch.nn.Linear(EMB, EMB)  # a bf16 producer in front, like the embedder
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = lin(emb)
        assert feats.dtype == torch.bfloat16
        assert head.cosine(feats).dtype == torch.float32
        loss = head(feats, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    assert head.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("bias", [True, False])
def test_softmax_matches_float64_reference(bias):
    g = torch.Generator().manual_seed(5)
    emb, y = torch.randn(B, EMB, generator=g), torch.arange(B) % C
    head = SoftmaxHead(EMB, C, bias=bias)
    weight = head.fc.weight.detach().clone()
    b = head.fc.bias.detach().clone() if bias else torch.zeros(C)
    e64 = emb.double().requires_grad_(True)
    w64 = weight.double().requires_grad_(True)
    b64 = b.double().requires_grad_(True)
    ref_logits, ref_loss = softmax_ref(e64, w64, b64, y)
    ref_loss.backward()
    loss, gemb = run_head(head, emb, y)
    assert_close(head.last_logits, ref_logits, atol=1e-5)
    assert_close(loss, ref_loss, atol=1e-5)
    assert_close(gemb, e64.grad, atol=1e-5)
    assert_close(head.fc.weight.grad, w64.grad, atol=1e-5)
    if bias:
        assert_close(head.fc.bias.grad, b64.grad, atol=1e-5)
    else:
        assert head.fc.bias is None


def test_softmax_loss_is_float32_for_bf16_logits():
    logits = torch.randn(4, C).to(torch.bfloat16)
    loss = SoftmaxHead(EMB, C).loss(logits, torch.tensor([0, 1, 2, 3]), None)
    assert loss.dtype == torch.float32


# ----------------------------------------------------------------------------- registry


def test_make_head_registry():
    assert {"softmax", "center", "arcface", "cosface"} <= set(LOSSES)
    assert type(make_head("softmax", EMB, C)) is SoftmaxHead
    assert type(make_head("center", EMB, C)) is SoftmaxHead
    arc = make_head("arcface", EMB, C, s="auto", m=0.3, easy_margin=True)
    assert type(arc) is ArcFaceHead
    assert (arc.s, arc.m, arc.easy_margin) == (adacos_scale(C), 0.3, True)
    cos = make_head("cosface", EMB, C, s=30, m=0.2)
    assert type(cos) is CosFaceHead and (cos.s, cos.m) == (30.0, 0.2)
    y = torch.arange(3) % C
    for name in LOSSES:
        head = make_head(name, EMB, C)
        assert head.n_classes == C
        loss = head(torch.randn(3, EMB), y)
        assert loss.ndim == 0 and torch.isfinite(loss), name
        assert head.last_logits.shape == (3, C), name


def test_make_head_unknown_loss():
    with pytest.raises(ValueError, match="triplet"):
        make_head("triplet", EMB, C)


def test_registry_settings_come_from_the_signatures_and_registry_line():
    # the paper's defaults in the head's signature, fvloss's (measured) in the registry line
    assert ArcFaceHead(EMB, C).s == 64.0 and LOSSES["arcface"].settings["s"] == "auto"
    assert LOSSES["center"].settings == {"bias": True, "lam": 0.003, "alpha": 0.5,
                                         "reduction": "mean"}  # fmt: skip
    head, cbs = LOSSES["center"].build(EMB, C, {"lam": 0.25})
    assert type(head) is SoftmaxHead and len(cbs) == 1 and cbs[0].lam == 0.25
    with pytest.raises(ValueError, match="register_loss"):
        register_loss("bad", ArcFaceHead, margin=0.5)
    assert "bad" not in LOSSES


# ----------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_matches_pytorch_metric_learning(kind):
    """pytorch-metric-learning (a test-only peer) on the same weights: loss and gradients."""
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    m = 0.5 if kind == "arcface" else 0.35
    emb, weight, y = margin_inputs(7, 0.5)
    if kind == "arcface":
        head = ArcFaceHead(EMB, C, s=30.0, m=m)
        # PML's margin is in degrees; it has ArcFace's fall-back too, so every row compares
        ref = pml.ArcFaceLoss(num_classes=C, embedding_size=EMB, margin=math.degrees(m), scale=30.0)
    else:
        head = CosFaceHead(EMB, C, s=30.0, m=m)
        ref = pml.CosFaceLoss(num_classes=C, embedding_size=EMB, margin=m, scale=30.0)
    check_pml_parity(with_weight(head, weight), ref, emb, weight, y, atol=1e-5)


# ----------------------------------------------------------------------------- every loss


def _boundary_batch(norm: float):
    """Embeddings exactly on (cos = +1) and opposite (cos = -1) their class weight, plus random
    ones, all with feature norm ``norm``."""
    g = torch.Generator().manual_seed(11)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    emb = torch.zeros(8, EMB)
    emb[:3, :3] = torch.eye(3)  # rows 0-2 along classes 0-2's weights below
    emb[3:6, 3:6] = -torch.eye(3)  # rows 3-5 against classes 3-5's
    emb[6:] = torch.randn(2, EMB, generator=g)
    return norm * torch.nn.functional.normalize(emb), y


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm", [1e-4, 1.0, 1e4])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_under_autocast_at_the_extremes(name, norm, dtype):
    head = make_head(name, EMB, C)
    weight = head.weight if hasattr(head, "weight") else head.fc.weight
    with torch.no_grad():  # class c's (first) weight along axis c: cos exactly +-1 above
        weight.copy_(torch.eye(len(weight), EMB) + 0.0)
    emb, y = _boundary_batch(norm)
    emb.requires_grad_(True)
    # an identity in front: the autocast dtype reaches the head
    lin = identity_linear(EMB, bias=False)
    with torch.autocast("cpu", dtype=dtype):
        feats = lin(emb)
        assert feats.dtype == dtype
        loss = head(feats, y)
    assert loss.dtype in (torch.float32, torch.float64) and torch.isfinite(loss), name
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(weight.grad).all(), name


# ---------------------------------------------------- arcface_torch's ArcFace (grad="insightface")
def arcface_insightface_ref(emb, weight, y, s, m):
    """insightface arcface_torch's ArcFace as its losses.py describes it, written here by hand:
    the target cosines are replaced in place, under no_grad, by cos(arccos + m) (no fall-back),
    so autograd sees the cosines themselves: d logit / d cos = s for every class."""
    cos = cosines64(emb, weight)
    rows = torch.arange(len(y))
    with torch.no_grad():
        cos[rows, y] = torch.cos(torch.arccos(cos[rows, y]) + m)
    logits = s * cos
    return logits, ce64(logits, y)


def test_arcface_insightface_variant_has_the_papers_loss_and_arcface_torchs_gradient():
    m, s = 0.5, 64.0
    emb, weight, y = margin_inputs(3, m)
    cos_t = cosines64(emb.double(), weight.double())[torch.arange(B), y]
    keep = torch.arccos(cos_t) + m <= math.pi  # where the paper's fall-back does not apply
    emb, y = emb[keep], y[keep]
    head = with_weight(ArcFaceHead(EMB, C, s=s, m=m, grad="insightface"), weight)
    loss, gemb = run_head(head, emb, y)
    ref = run_ref(arcface_insightface_ref, emb, weight, y, s, m)
    assert_matches_ref(head, loss, gemb, ref, atol=2e-5)
    # the value is the paper's; the embeddings' gradient is not (the issue measured cos 0.997)
    paper = run_ref(arcface_ref, emb, weight, y, s, m)
    assert_close(loss, paper[1], atol=2e-5)
    cosine = torch.nn.functional.cosine_similarity(gemb.double().flatten(), paper[2].flatten(), 0)
    assert cosine < 0.9999


def test_arcface_grad_setting_is_checked():
    with pytest.raises(ValueError, match=r"arcface.grad = 'tf': one of \['paper', 'insightface'\]"):
        LOSSES["arcface"].check({"grad": "tf"})
    with pytest.raises(ValueError, match="no easy_margin"):
        ArcFaceHead(EMB, C, grad="insightface", easy_margin=True)
