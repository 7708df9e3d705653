"""Partial FC (fvloss.heads.partial_fc): the sharded, sampled margin head equals the plain head
on one process and on 2 gloo ranks (r = 1), keeps every positive class when it samples (r < 1),
and gathers its blocks into the whole class matrix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from distributed_common import run_ranks

from fvloss.heads import ArcFaceHead, CombinedMarginHead, CosFaceHead, CurricularFaceHead
from fvloss.heads.partial_fc import PartialFCHead, class_block

D, C, B = 6, 7, 10


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, D, generator=g)
    emb = torch.randn(B, D, generator=g) * 4
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 2, 6])
    return weight, emb, y


def plain(cls, weight, emb, y, **kw):
    head = cls(D, C, **kw)
    with torch.no_grad():
        head.weight.copy_(weight)
    e = emb.clone().requires_grad_(True)
    loss = head(e, y)
    loss.backward()
    return loss.detach(), e.grad, head.weight.grad


def sharded(cls, weight, emb, y, rank=0, world=1, sample_rate=1.0, **kw):
    head = PartialFCHead(cls, D, C, sample_rate=sample_rate, rank=rank, world_size=world, **kw)
    start, n = class_block(C, rank, world)
    with torch.no_grad():
        head.block.weight.copy_(weight[start : start + n])
    e = emb.clone().requires_grad_(True)
    loss = head(e, y)
    loss.backward()
    return loss.detach(), e.grad, head.block.weight.grad


HEADS = [
    (ArcFaceHead, {"s": 10.0, "m": 0.5}),
    (CosFaceHead, {"s": 10.0, "m": 0.35}),
    (CombinedMarginHead, {"s": 10.0}),
]


def test_class_blocks_cover_the_classes_once():
    for world in (1, 2, 3, 4):
        blocks = [class_block(C, r, world) for r in range(world)]
        covered = [c for start, n in blocks for c in range(start, start + n)]
        assert covered == list(range(C))


@pytest.mark.parametrize(("cls", "kw"), HEADS)
def test_one_process_exact_is_the_plain_head(cls, kw):
    weight, emb, y = inputs()
    for a, b in zip(plain(cls, weight, emb, y, **kw), sharded(cls, weight, emb, y, **kw)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_sampling_keeps_every_positive_and_is_the_loss_over_the_sample():
    weight, emb, y = inputs(1)
    head = PartialFCHead(ArcFaceHead, D, C, sample_rate=0.3, s=10.0, m=0.5)
    with torch.no_grad():
        head.block.weight.copy_(weight)
    torch.manual_seed(5)
    loss = head(emb, y)
    torch.manual_seed(5)  # the same draw of negatives
    index = head.sample(y.long(), torch.ones_like(y, dtype=torch.bool))
    assert set(y.tolist()) <= set(index.tolist())  # r * C = 2.1 < 7 positives: all kept
    full = ArcFaceHead(D, C, s=10.0, m=0.5)
    with torch.no_grad():
        full.weight.copy_(weight)
    ref = F.cross_entropy(full.logits(emb, y)[:, index], torch.searchsorted(index, y))
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    # with few positives the sample is int(r * C) classes (PartialFC_V2's count), positives among them
    few = torch.tensor([3, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    index = head.sample(few, torch.ones_like(few, dtype=torch.bool))
    assert len(index) == 2 and 3 in index.tolist()  # int(2.1)
    head.eval()  # evaluation uses every class
    torch.testing.assert_close(head(emb, y), F.cross_entropy(full.logits(emb, y), y))


def test_unsupported_heads_and_rates_are_errors():
    with pytest.raises(ValueError, match="CurricularFaceHead"):
        PartialFCHead(CurricularFaceHead, D, C)
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFCHead(ArcFaceHead, D, C, sample_rate=0.0)
    assert PartialFCHead(ArcFaceHead, D, 284, s="auto").block.s == pytest.approx(
        ArcFaceHead(D, 284, s="auto").s
    )  # the scale of the whole classifier


def _on_rank(rank: int, world: int, cls_name: str) -> tuple:
    cls, kw = next((c, k) for c, k in HEADS if c.__name__ == cls_name)
    weight, emb, y = inputs()
    rows = slice(rank * B // world, (rank + 1) * B // world)  # rank r's part of the batch
    loss, gemb, gw = sharded(cls, weight, emb[rows], y[rows], rank, world, **kw)
    torch.manual_seed(0)
    head = PartialFCHead(cls, D, C, rank=rank, world_size=world, **kw)
    start, n = class_block(C, rank, world)
    with torch.no_grad():
        head.block.weight.copy_(weight[start : start + n])
    return loss, gemb, gw, head.full_weight()


@pytest.mark.slow
@pytest.mark.parametrize("cls_name", ["ArcFaceHead", "CosFaceHead"])
def test_two_ranks_give_the_whole_heads_loss_and_gradients(cls_name):
    cls, kw = next((c, k) for c, k in HEADS if c.__name__ == cls_name)
    weight, emb, y = inputs()
    ref_loss, ref_gemb, ref_gw = plain(cls, weight, emb, y, **kw)
    ranks = run_ranks(_on_rank, 2, cls_name)
    for r, (loss, gemb, gw, full) in enumerate(ranks):
        start, n = class_block(C, r, 2)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)  # the global loss
        torch.testing.assert_close(gw, ref_gw[start : start + n], rtol=1e-5, atol=1e-6)
        # x W: DDP then averages the embedder's gradients over the ranks (module docstring)
        rows = slice(r * B // 2, (r + 1) * B // 2)
        torch.testing.assert_close(gemb / 2, ref_gemb[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(full, weight)  # blocks of 4 and 3 classes gathered


def test_finite_under_bf16_autocast():
    weight, emb, y = inputs(2)
    head = PartialFCHead(ArcFaceHead, D, C, sample_rate=0.5, s=64.0)
    e = emb.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(torch.nn.functional.linear(e, torch.eye(D)), y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e.grad).all()


def test_a_learner_trains_with_partial_fc_and_ramps_its_margin(dls):
    import math

    from fvloss.callbacks.margin import MarginSchedule
    from fvloss.learner import face_learner

    learn = face_learner(dls, loss="arcface", arch="resnet18", emb_dim=8, val_pairs=None,
                         partial_fc=0.5, margin_warmup=0.5)  # fmt: skip
    learn.remove_cb(learn.progress)
    head = learn.model.head
    assert isinstance(head, PartialFCHead) and learn.loss_func is head
    assert any(isinstance(c, MarginSchedule) for c in learn.cbs)
    before = head.block.weight.detach().clone()
    learn.lr_find(num_it=4, show_plot=False)
    assert torch.equal(head.block.weight, before)  # lr_find put the block back
    learn.fit(1, 1e-3)
    assert math.isfinite(learn.recorder.values[-1][0])
    assert not torch.equal(head.block.weight, before) and head.block.m == 0.5


def _save_on_rank(rank: int, world: int) -> dict:
    weight, _, _ = inputs(3)
    head = PartialFCHead(ArcFaceHead, D, C, rank=rank, world_size=world, s=10.0)
    start, n = class_block(C, rank, world)
    with torch.no_grad():
        head.block.weight.copy_(weight[start : start + n])
    return head.state_dict()


def _load_on_rank(rank: int, world: int, state: dict) -> torch.Tensor:
    head = PartialFCHead(ArcFaceHead, D, C, rank=rank, world_size=world, s=10.0)
    head.load_state_dict(state)
    return head.block.weight.detach().clone()


@pytest.mark.slow
def test_checkpoints_hold_the_whole_matrix_and_load_on_any_world_size():
    weight, _, _ = inputs(3)
    saved = run_ranks(_save_on_rank, 2)  # blocks of 4 and 3 classes
    for state in saved:
        torch.testing.assert_close(state["block.weight"], weight, rtol=0, atol=0)
    one = PartialFCHead(ArcFaceHead, D, C, s=10.0)
    one.load_state_dict(saved[0])  # saved on 2, resumed on 1
    torch.testing.assert_close(one.block.weight.detach(), weight, rtol=0, atol=0)
    three = run_ranks(_load_on_rank, 3, one.state_dict())  # saved on 1, resumed on 3
    for r, block in enumerate(three):
        start, n = class_block(C, r, 3)
        torch.testing.assert_close(block, weight[start : start + n], rtol=0, atol=0)


def test_the_initial_class_matrix_is_the_same_on_any_number_of_ranks():
    n = 9001  # three chunks of init_rows, blocks crossing their edges
    whole, after = None, None
    for world in (1, 2, 3):
        blocks = []
        for rank in range(world):
            torch.manual_seed(0)
            blocks.append(
                PartialFCHead(ArcFaceHead, 4, n, rank=rank, world_size=world).block.weight
            )
            nxt = torch.rand(3)  # what is built after the head draws the same numbers
            assert after is None or torch.equal(nxt, after)
            after = nxt
        w = torch.cat(blocks).detach()
        assert w.shape == (n, 4) and 0.009 < float(w.std()) < 0.011
        assert whole is None or torch.equal(w, whole)
        whole = w
