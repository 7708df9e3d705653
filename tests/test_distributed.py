"""Cost functions across ranks (gloo, 2 CPU processes): the statistics a loss keeps are those
of the global batch, identical on every rank, equal to one process seeing the whole batch."""

from __future__ import annotations

import pytest
import torch
from distributed_common import run_ranks

from fvloss import distributed
from fvloss.callbacks.center import center_update
from fvloss.heads import AdaFaceHead, CurricularFaceHead

D, C, B = 4, 5, 12


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g) * 3, torch.arange(B) % C


def _centers_on_rank(rank: int, world: int) -> torch.Tensor:
    feats, y = batch()
    centers = torch.ones(C, D)
    center_update(centers, feats[rank::world], y[rank::world], alpha=0.5)
    return centers


def _head_state_on_rank(rank: int, world: int, kind: str) -> dict:
    torch.manual_seed(0)
    head = (AdaFaceHead if kind == "adaface" else CurricularFaceHead)(D, C, s=10.0)
    feats, y = batch()
    head(feats[rank::world], y[rank::world])
    return {k: v.clone() for k, v in head.state_dict().items()}


def test_helpers_are_the_identity_on_one_process():
    x = torch.tensor([1.0, 2.0, 4.0])
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.global_mean(x).item() == pytest.approx(7 / 3)
    mean, std, n = distributed.global_mean_std(x)
    assert (mean.item(), n.item()) == (pytest.approx(7 / 3), 3)
    assert torch.equal(std, x.std()) and torch.equal(distributed.global_mean(x), x.mean())


def test_center_update_uses_every_ranks_features():
    feats, y = batch()
    one = torch.ones(C, D)
    center_update(one, feats, y, alpha=0.5)
    ranks = run_ranks(_centers_on_rank, 2)
    assert torch.allclose(ranks[0], ranks[1], atol=0) and torch.allclose(ranks[0], one, atol=1e-6)
    # a rank's own half alone would give other centers: the test can fail
    half = torch.ones(C, D)
    center_update(half, feats[0::2], y[0::2], alpha=0.5)
    assert not torch.allclose(half, one, atol=1e-3)


@pytest.mark.parametrize("kind", ["adaface", "curricularface"])
def test_head_ema_statistics_are_the_global_batchs(kind):
    one = _head_state_on_rank(0, 1, kind)
    ranks = run_ranks(_head_state_on_rank, 2, kind)
    for k in one:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        assert torch.allclose(ranks[0][k], one[k], rtol=1e-6, atol=1e-7), k
    moved = "batch_mean" if kind == "adaface" else "t"
    fresh = (AdaFaceHead if kind == "adaface" else CurricularFaceHead)(D, C, s=10.0)
    assert not torch.allclose(one[moved], fresh.state_dict()[moved])  # one step moved it
