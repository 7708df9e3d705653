"""SubCenterArcFaceHead and its SubCenterDrop callback: a float64 reference through the angle,
the drop and the outlier exclusion by hand, and parity with pytorch-metric-learning."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from heads_common import (
    EXTREME_COS,
    assert_matches_ref,
    check_finite_under_autocast,
    check_pml_parity,
    cosines64,
    run_head,
    run_ref,
    with_weight,
)

from fvloss.callbacks.subcenter_drop import SubCenterDrop
from fvloss.heads.subcenter import SubCenterArcFaceHead
from fvloss.losses import LossSpec

EMB, C, K, B = 8, 4, 3, 24


def subcenter_ref(emb, weight, y, s, m, active=None, drop_angle=None):
    """ArcFace on the nearest (active) sub-centre, through the angle, with its fall-back; the
    mean cross-entropy over the samples within ``drop_angle`` degrees (all when None)."""
    sub = cosines64(emb, weight).view(len(emb), C, K)
    if active is not None:
        sub = sub.masked_fill(~active, -2.0)
    cos = sub.max(2).values
    onehot = torch.zeros_like(cos)
    onehot[torch.arange(len(y)), y] = 1.0
    cos_t = (cos * onehot).sum(1)
    theta = torch.arccos(cos_t)
    target = torch.where(theta + m <= math.pi, torch.cos(theta + m), cos_t - m * math.sin(m))
    logits = s * (cos * (1 - onehot) + target[:, None] * onehot)
    zmax = logits.max(1, keepdim=True).values
    ce = zmax[:, 0] + torch.log(torch.exp(logits - zmax).sum(1)) - s * target
    keep = torch.ones_like(ce, dtype=torch.bool)
    if drop_angle is not None:
        keep = theta.detach() <= math.radians(drop_angle)
    return logits, ce[keep].mean(), keep


def subcenter_inputs(seed: int, m: float = 0.5):
    """Sub-centres ~17 deg around a class direction; rows 0-5 near one sub-centre, rows 6-11
    nearly opposite the class (theta + m > pi: the fall-back), the rest random. No target
    within 2e-3 of the fall-back point, no near-tie between a class's two best sub-centres."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(C, EMB, generator=g)
    weight = base.repeat_interleave(K, 0) + 0.3 * torch.randn(C * K, EMB, generator=g)
    y = torch.arange(B) % C
    emb = torch.randn(B, EMB, generator=g)
    rows = y[:6] * K + torch.arange(6) % K
    emb[:6] = 3 * weight[rows] / weight[rows].norm(dim=1, keepdim=True)
    emb[:6] += 0.3 * torch.randn(6, EMB, generator=g)
    b_y = base[y[6:12]] / base[y[6:12]].norm(dim=1, keepdim=True)
    emb[6:12] = -3 * b_y + 0.05 * torch.randn(6, EMB, generator=g)
    sub = cosines64(emb.double(), weight.double()).view(B, C, K)
    top2 = sub.topk(2, dim=2).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-4
    cos_t = sub.amax(2)[torch.arange(B), y]
    assert (cos_t - math.cos(math.pi - m)).abs().min() > 2e-3
    return emb, weight, y


def make_head(weight, **kw) -> SubCenterArcFaceHead:
    return with_weight(SubCenterArcFaceHead(EMB, C, **kw), weight)


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("m", [0.5, 0.4])
@pytest.mark.parametrize("s", [64.0, 8.0])
def test_matches_float64_reference(m, s):
    emb, weight, y = subcenter_inputs(0, m)
    head = make_head(weight, s=s, m=m)
    *ref, _ = run_ref(subcenter_ref, emb, weight, y, s, m)
    cos_t = head.cosine(emb).gather(1, y[:, None])[:, 0]
    beyond = cos_t < math.cos(math.pi - m)
    assert beyond.any() and (~beyond).any()  # both sides of the fall-back
    loss, gemb = run_head(head, emb, y)
    assert_matches_ref(head, loss, gemb, ref, atol=1e-6 * s)
    # gradients reach more than one sub-centre per class: the max picks per sample
    assert (head.weight.grad.norm(dim=1).view(C, K) > 0).sum() > C


def test_after_the_drop_matches_float64_reference():
    emb, weight, y = subcenter_inputs(1)
    head = make_head(weight)
    dominant = torch.tensor([2, 0, 1, 1])
    with torch.no_grad():
        head.hits.copy_(torch.nn.functional.one_hot(dominant, K) * 5 + 1)
    head.drop_non_dominant()
    active = torch.nn.functional.one_hot(dominant, K).bool()
    assert torch.equal(head.active, active) and head.dropped.item()
    *ref, keep = run_ref(subcenter_ref, emb, weight, y, 64.0, 0.5, active=active, drop_angle=75.0)
    assert keep.any() and (~keep).any()  # some samples are left out, not all
    loss, gemb = run_head(head.eval(), emb, y)
    assert_matches_ref(head, loss, gemb, ref, atol=64e-6, logits=False)
    # inactive sub-centres and left-out samples get nothing
    assert (head.weight.grad.view(C, K, EMB)[~active] == 0).all()
    assert (gemb[~keep] == 0).all()


def test_float64_module_matches_reference():
    emb, weight, y = subcenter_inputs(2)
    head = make_head(weight).double()
    *ref, _ = run_ref(subcenter_ref, emb, weight, y, 64.0, 0.5)
    loss, gemb = run_head(head, emb.double(), y)
    assert gemb.dtype == torch.float64
    assert_matches_ref(head, loss, gemb, ref, atol=64e-6, logits=False)


def test_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    emb, weight, y = subcenter_inputs(3)
    head = make_head(weight, s=30.0)
    # PML 2.9's ArcFace has the same fall-back beyond theta + m > pi: all rows compare
    ref = pml.SubCenterArcFaceLoss(
        num_classes=C, embedding_size=EMB, margin=math.degrees(0.5), scale=30.0, sub_centers=K
    )
    # PML's W is (D, C*K), columns c*K .. c*K+K-1 class c's: the head's weight rows, transposed
    check_pml_parity(head, ref, emb, weight, y, atol=30e-6)


# ----------------------------------------------------------------------------- drop, by hand


def tiny_head() -> SubCenterArcFaceHead:
    """2 classes x 3 sub-centres in 3-D: class 0's are +e0, +e1, +e2, class 1's -e0, -e1, -e2."""
    head = SubCenterArcFaceHead(3, 2, s=10.0, m=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.cat([torch.eye(3), -torch.eye(3)]))
    return head


def unit(*v: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_hits_drop_and_outliers_by_hand():
    head = tiny_head()
    emb = torch.tensor([unit(1, 0.2, 0.1), unit(1, 0.1, 0.3), unit(0.1, 0.2, 1), unit(0, -1, -0.2)])
    y = torch.tensor([0, 0, 0, 1])
    head.eval()(emb, y)
    assert head.hits.sum() == 0  # eval forwards are not counted
    head.train()(emb, y)
    assert head.hits.tolist() == [[2, 0, 1], [0, 1, 0]]
    head.drop_non_dominant()
    assert head.active.tolist() == [[True, False, False], [False, True, False]]
    # the third sample is at 84 deg from class 0's dominant +e0: out of the loss (> 75 deg)
    cos = head.cosine(emb)
    assert cos[2, 0].item() == pytest.approx(unit(0.1, 0.2, 1)[0], abs=1e-7)
    a70 = math.radians(70)
    emb = torch.cat([emb, torch.tensor([[math.cos(a70), 0.0, math.sin(a70)]])])
    y = torch.cat([y, torch.tensor([0])])
    loss = head.eval()(emb, y)
    z = head.last_logits.double()
    ce = torch.logsumexp(z, 1) - z[torch.arange(5), y]
    assert loss.item() == pytest.approx(ce[[0, 1, 3, 4]].mean().item(), rel=1e-6)
    assert loss.item() != pytest.approx(ce.mean().item(), rel=1e-3)


def test_all_samples_left_out_gives_zero_loss_not_nan():
    head = tiny_head()
    head.drop_non_dominant()  # no hits: the first sub-centre of each class
    emb = torch.tensor([unit(0, 1, 0.1)], requires_grad=True)  # 84 deg from +e0
    loss = head(emb, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and (emb.grad == 0).all() and (head.weight.grad == 0).all()


def test_state_dict_round_trip():
    emb, weight, y = subcenter_inputs(4)
    head = make_head(weight)
    head(emb, y), head(emb[:10], y[:10])
    head.drop_non_dominant()
    fresh = SubCenterArcFaceHead(EMB, C)
    fresh.load_state_dict(head.state_dict())
    for name in ("hits", "active", "dropped"):
        assert torch.equal(getattr(fresh, name), getattr(head, name))
    assert head.hits.sum() == B + 10 and not head.active.all()
    head.eval(), fresh.eval()
    assert fresh(emb, y).item() == head(emb, y).item()
    assert SubCenterArcFaceHead(EMB, C).eval()(emb, y).item() != head(emb, y).item()


def test_finite_under_bf16_autocast_at_the_extremes():
    weight = torch.zeros(6, EMB)
    weight[0, 0], weight[1, 1], weight[2, 2] = 2.0, 2.0, 2.0
    weight[3:, 3] = 2.0  # class 1's three sub-centres coincide: cos to the class can be -1
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    emb = torch.zeros(6, EMB)
    emb[0, 0], emb[1, 1], emb[2, 2] = 3.0, 1e-4, 1e4  # cos exactly +1
    emb[3:, 3] = torch.tensor([-3.0, -1e-4, -1e4])  # cos exactly -1
    for dropped in (False, True):
        head = with_weight(SubCenterArcFaceHead(EMB, 2), weight)
        if dropped:
            head.drop_non_dominant()
        # after a drop without hits each class keeps its first sub-centre: rows 1, 2 are then
        # at 90 deg from class 0's, so the cosines are checked before the drop only
        expect_cos = None if dropped else EXTREME_COS
        check_finite_under_autocast(head, emb, y, expect_cos=expect_cos)


def test_settings_and_paper_defaults():
    head = SubCenterArcFaceHead(EMB, C)
    assert (head.s, head.m, head.n_sub, head.drop_angle) == (64.0, 0.5, 3, 75.0)
    assert head.weight.shape == (C * 3, EMB) and head.margins == {"m": 0.0}
    spec = LossSpec("subcenter", SubCenterArcFaceHead, SubCenterDrop, {"s": "auto"})
    assert spec.settings == dict(s="auto", m=0.5, k=3, drop_angle=75.0, eps=1e-7, drop_at=0.0)
    head, (cb,) = spec.build(EMB, 10, {"k": 2, "drop_at": 0.5})
    assert head.n_sub == 2 and head.s == pytest.approx(math.sqrt(2) * math.log(9))
    assert isinstance(cb, SubCenterDrop) and cb.drop_at == 0.5


# ----------------------------------------------------------------------------- the callback


class HeadSpy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def drop_non_dominant(self):
        self.calls += 1


def fake_learn(pct: float, training: bool = True, **kw):
    return SimpleNamespace(
        model=SimpleNamespace(head=HeadSpy()), pct_train=pct, training=training, **kw
    )


def test_callback_drops_once_at_drop_at():
    cb = SubCenterDrop(C, EMB, drop_at=0.5)
    cb.learn = learn = fake_learn(0.2)
    cb.before_batch()
    assert learn.model.head.calls == 0
    learn.training, learn.pct_train = False, 0.7  # validation batches never drop
    cb.before_batch()
    assert learn.model.head.calls == 0
    learn.training = True
    for pct in (0.5, 0.6, 0.9):
        learn.pct_train = pct
        cb.before_batch()
    assert learn.model.head.calls == 1 and cb.dropped


def test_callback_never_drops_with_drop_at_zero_or_in_lr_find():
    cb = SubCenterDrop(C, EMB)
    cb.learn = learn = fake_learn(0.99)
    cb.before_batch()
    cb = SubCenterDrop(C, EMB, drop_at=0.1)
    cb.learn = learn2 = fake_learn(0.99, lr_finder=object())
    cb.before_batch()
    assert learn.model.head.calls == 0 and learn2.model.head.calls == 0 and not cb.dropped
    with pytest.raises(ValueError):
        SubCenterDrop(C, EMB, drop_at=1.0)


def test_callback_state_dict_round_trip():
    cb = SubCenterDrop(C, EMB, drop_at=0.3)
    cb.learn = fake_learn(0.5)
    cb.before_batch()
    state = cb.state_dict()
    assert state == {"dropped": True}
    resumed = SubCenterDrop(C, EMB, drop_at=0.3)
    resumed.load_state_dict(state)
    resumed.learn = learn = fake_learn(0.6)  # a resumed run does not drop a second time
    resumed.before_batch()
    assert learn.model.head.calls == 0 and resumed.dropped


def test_callback_in_a_fastai_fit():
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(5)
    ds = TensorDataset(torch.randn(32, 6, generator=g), torch.arange(32) % C)
    dls = DataLoaders.from_dsets(ds, ds, bs=8, num_workers=0)

    class Net(torch.nn.Module):  # embeddings out, the head is the loss (as FaceNet)
        def __init__(self):
            super().__init__()
            self.embedder, self.head = torch.nn.Linear(6, EMB), SubCenterArcFaceHead(EMB, C, s=8.0)

        def forward(self, x):
            return self.embedder(x)

    model = Net()
    learn = Learner(dls, model, loss_func=model.head, cbs=SubCenterDrop(C, EMB, drop_at=0.5))
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-3)
    head = model.head
    assert head.dropped.item() and (head.active.sum(1) == 1).all()
    assert head.hits.sum() == 2 * 32  # every training sample of both epochs counted once
    assert torch.equal(head.active, torch.nn.functional.one_hot(head.hits.argmax(1), K).bool())
