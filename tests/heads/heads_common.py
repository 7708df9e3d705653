"""Helpers shared by the head tests (``test_heads.py`` and ``test_head_*.py``).

Float64 building blocks of the references (the paper's equations per head stay in each head's
own test file), autograd runners for a reference and for a head, the tolerance check, and the
input makers: a batch with targets near and opposite their class weight, and features exactly
along or against a class weight (cos = +-1, tiny and huge norms) run under bf16 autocast.
Imported as ``from heads_common import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

EMB, C, B = 8, 6, 24  # embedding size, classes and batch of the near/opposite inputs

# target cosines of the six rows of the extreme inputs: three along, three against the class
EXTREME_COS = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]


# ----------------------------------------------------------------------------- float64 pieces


def cosines64(emb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cosines between every embedding and every class weight, each normalised by hand."""
    e = emb / torch.sqrt((emb * emb).sum(1, keepdim=True))
    w = weight / torch.sqrt((weight * weight).sum(1, keepdim=True))
    return e @ w.T


def ce64(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of ``log(sum_k exp z_k) - z_y``, written out (shifted by the row maximum)."""
    zmax = logits.max(1, keepdim=True).values
    lse = zmax[:, 0] + torch.log(torch.exp(logits - zmax).sum(1))
    return (lse - logits[torch.arange(len(y)), y]).mean()


# ----------------------------------------------------------------------------- runners


def run_ref(ref, emb, weight, y, *args, **kwargs):
    """``ref(emb, weight, y, *args, **kwargs)`` under autograd on float64 copies of emb and
    weight. ``ref`` returns ``(logits, loss, *extras)``; this returns
    ``(logits, loss, d loss / d emb, d loss / d weight, *extras)``."""
    e64 = emb.double().clone().requires_grad_(True)
    w64 = weight.double().clone().requires_grad_(True)
    logits, loss, *extras = ref(e64, w64, y, *args, **kwargs)
    loss.backward()
    return (logits, loss, e64.grad, w64.grad, *extras)


def run_head(head, emb, y):
    """Loss and embedding gradient of the head's forward, ``loss = head(emb, y)``; the head's
    gradients are cleared first, so its ``.grad`` afterwards is this call's alone."""
    emb = emb.clone().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    loss = head(emb, y)
    loss.backward()
    return loss, emb.grad


def assert_close(a: torch.Tensor, b: torch.Tensor, *, atol: float, rtol: float = 1e-5):
    """``np.testing.assert_allclose`` of two tensors, both read as float64. ``atol`` has no
    default: each test names its own."""
    np.testing.assert_allclose(a.detach().double().numpy(), b.detach().double().numpy(), rtol, atol)


def assert_matches_ref(head, loss, gemb, ref, *, atol: float, logits: bool = True):
    """A head's forward against its reference: ``head.last_logits`` (unless ``logits=False``),
    the loss and embedding gradient from ``run_head``, and ``head.weight.grad``, each against
    ``ref = (logits, loss, d emb, d weight)`` from ``run_ref``, within ``atol``."""
    ref_logits, ref_loss, ref_gemb, ref_gw = ref
    if logits:
        assert_close(head.last_logits, ref_logits, atol=atol)
    assert_close(loss, ref_loss, atol=atol)
    assert_close(gemb, ref_gemb, atol=atol)
    assert_close(head.weight.grad, ref_gw, atol=atol)


def check_pml_parity(head, ref, emb, weight, y, *, atol: float):
    """The head against a pytorch-metric-learning loss ``ref`` on the same class weights (PML's
    ``W`` is ``weight.T``, set here): loss, embedding gradient and weight gradient agree."""
    with torch.no_grad():
        ref.W.copy_(weight.T)  # PML's W is (D, classes)
    e_ref = emb.clone().requires_grad_(True)
    ref_loss = ref(e_ref, y)
    ref_loss.backward()
    loss, gemb = run_head(head, emb, y)
    assert_close(loss, ref_loss, atol=atol)
    assert_close(gemb, e_ref.grad, atol=atol)
    assert_close(head.weight.grad, ref.W.grad.T, atol=atol)


def with_weight(head, weight: torch.Tensor):
    """``head`` with its class weights set to ``weight`` (outside autograd); returns the head."""
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


# ----------------------------------------------------------------------------- inputs


def near_far_inputs(seed: int | torch.Generator, far_noise: float = 0.3):
    """``(emb, weight, y)``: C class weights and B embeddings of size EMB drawn from ``seed``
    (a generator seeded so, or the generator itself, which the caller may draw on after),
    labels ``arange(B) % C``; rows 0-5 near their class weight (3 times its direction plus 0.3
    noise), rows 6-11 nearly opposite it (-3 times, plus ``far_noise`` noise), the rest random."""
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    weight = torch.randn(C, EMB, generator=g)
    y = torch.arange(B) % C
    emb = torch.randn(B, EMB, generator=g)
    w_y = weight[y] / weight[y].norm(dim=1, keepdim=True)
    emb[:6] = 3 * w_y[:6] + 0.3 * torch.randn(6, EMB, generator=g)
    emb[6:12] = -3 * w_y[6:12] + far_noise * torch.randn(6, EMB, generator=g)
    return emb, weight, y


def margin_inputs(seed: int, m: float):
    """``near_far_inputs(seed)``: some targets close (theta small), some far (theta + m > pi,
    cos < 0), and none within 2e-3 of ArcFace's branch point cos(pi - m) (asserted)."""
    emb, weight, y = near_far_inputs(seed)
    cos_t = cosines64(emb.double(), weight.double())[torch.arange(B), y]
    assert (cos_t - math.cos(math.pi - m)).abs().min() > 2e-3
    return emb, weight, y


def extreme_inputs(values, n_classes: int = C):
    """``(emb, weight, y)`` with class weights ``2 e_c`` and row ``i`` of emb equal to
    ``values[i] e_c``, label ``c = i % n_classes``: the target cosine is exactly +1 where the
    value is positive, -1 where negative, and the feature norm is ``|values[i]|``."""
    y = torch.arange(len(values)) % n_classes
    emb = torch.zeros(len(values), EMB)
    for i, v in enumerate(values):
        emb[i, i % n_classes] = v
    return emb, 2.0 * torch.eye(n_classes, EMB), y


def identity_linear(dim: int = EMB, bias: bool = True) -> torch.nn.Linear:
    """A ``Linear(dim, dim)`` set to the identity (zero bias): under autocast it hands the head
    the same features in the autocast dtype, as an embedder in front of it would."""
    lin = torch.nn.Linear(dim, dim, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(dim))
        if bias:
            lin.bias.zero_()
    return lin


def check_finite_under_autocast(head, emb, y, *, expect_cos, enabled=True):
    """``head`` on ``emb`` through an identity Linear under CPU bf16 autocast (``enabled=False``:
    float32), then backward. Asserts the features' dtype, the target cosines the head sees
    (``expect_cos``; None skips), a finite float32 loss, finite gradients of the input and the
    class weights, a nonzero weight gradient. Returns the Linear, for further checks."""
    lin = identity_linear(EMB)
    x = emb.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
        feats = lin(x)
        assert feats.dtype == (torch.bfloat16 if enabled else torch.float32)
        cos_t = head.cosine(feats).gather(1, y[:, None])[:, 0]
        loss = head(feats, y)
    if expect_cos is not None:
        assert cos_t.tolist() == expect_cos  # really at the boundary
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    assert head.weight.grad.abs().sum() > 0
    return lin
