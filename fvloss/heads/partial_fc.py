"""Partial FC: a margin head sharded across ranks, sampling its classes (An et al., "Partial FC:
Training 10 Million Identities on a Single Machine", ICCVW 2021, https://arxiv.org/abs/2010.05222;
insightface's arcface_torch).

A classifier over a million identities does not fit beside the model on one device. Here rank
``r`` of ``W`` holds a contiguous block of the classes; every rank sees every embedding of the
global batch (an all-gather), computes its block's logits, and the softmax normaliser and the
target logit are all-reduced, so the loss is the one of the whole classifier. With
``sample_rate < 1`` each step uses, per block, every class that is some sample's label plus random
others up to ``sample_rate`` of the block. On one process it is the plain head (``W = 1``), with
the sampling, so it also serves one GPU or CPU with many classes.

Optimizer state: the block is one dense parameter; unsampled rows get a zero gradient, so Adam's
moments for them decay and the rows drift with the momentum of earlier steps (as arcface_torch's
PartialFC_V2 under SGD momentum). Swapping per-row optimizer state in and out would save memory
only for the optimizer's two moments and would tie checkpoints to the sampling; we keep one
parameter per block, which re-shards by slicing (:meth:`PartialFCHead.full_weight`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import distributed as fdist
from .arcface import ArcFaceHead
from .base import Head, MarginHead, adacos_scale, feature_norm
from .combined import CombinedMarginHead
from .cosface import CosFaceHead

__all__ = ["PartialFCHead", "SHARDABLE", "class_block"]

# Heads whose logits are the plain scaled cosines with a stateless margin on the target: their
# margin can be applied block by block. (CurricularFace and AdaFace keep batch statistics,
# SphereFace scales by the norm, sub-center needs k rows per class: not here.)
SHARDABLE: tuple[type[MarginHead], ...] = (ArcFaceHead, CosFaceHead, CombinedMarginHead)


def class_block(n_classes: int, rank: int, world: int) -> tuple[int, int]:
    """``(start, size)`` of rank ``rank``'s contiguous block: the first ``C mod W`` ranks one
    class more, as arcface_torch."""
    size = n_classes // world + (1 if rank < n_classes % world else 0)
    return n_classes // world * rank + min(rank, n_classes % world), size


class _GatherRows(torch.autograd.Function):
    """All-gather the ranks' rows; backward: each rank gets the sum over ranks of the gradient
    of its own rows, times ``W``, because DDP then averages the embedder's gradients over the
    ranks while this loss is already the mean over the global batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(fdist.world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        w = fdist.world_size()
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(w)[fdist.rank()] * w


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits split by columns across ranks: each rank holds ``z`` for its
    classes and ``target`` (-1 where the label is another rank's). The max, the sum of
    exponentials and the target logit are all-reduced; the gradient ``softmax - onehot`` is
    local to each block."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = z.float()
        m = z.max(dim=1).values
        if fdist.world_size() > 1:
            dist.all_reduce(m, op=dist.ReduceOp.MAX)
        e = torch.exp(z - m[:, None])
        se = fdist.all_reduce_sum(e.sum(dim=1))
        mine = target >= 0
        idx = target.clamp_min(0)[:, None]
        zy = fdist.all_reduce_sum(torch.where(mine, z.gather(1, idx)[:, 0], 0.0))
        ctx.save_for_backward(e / se[:, None], target)
        return (torch.log(se) + m - zy).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, target = ctx.saved_tensors
        g = p.clone()
        rows = torch.nonzero(target >= 0)[:, 0]
        g[rows, target[rows]] -= 1.0
        return g * (grad / len(g)), None


class PartialFCHead(Head):
    """A :data:`SHARDABLE` margin head whose classes are split across the ranks and sampled.

    Args:
        head: the margin head class (``ArcFaceHead``, ``CosFaceHead``, ``CombinedMarginHead``).
        emb_dim, n_classes: embedding width; number of classes of the *whole* classifier.
        sample_rate: share of each block's classes used per training step (positives always);
            1 = exact.
        rank, world_size: this block; default from ``torch.distributed`` (0 and 1 without it).
        **settings: the head's settings (``s="auto"`` is AdaCos's scale of ``n_classes``).
    """

    def __init__(
        self,
        head: type[MarginHead],
        emb_dim: int,
        n_classes: int,
        sample_rate: float = 1.0,
        rank: int | None = None,
        world_size: int | None = None,
        **settings,
    ):
        super().__init__()
        if head not in SHARDABLE:
            names = [h.__name__ for h in SHARDABLE]
            raise ValueError(f"Partial FC shards {names}, not {head.__name__}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.world = fdist.world_size() if world_size is None else world_size
        self.rank = fdist.rank() if rank is None else rank
        self.start, n_local = class_block(n_classes, self.rank, self.world)
        if settings.get("s") == "auto":  # the scale of the whole classifier, not of a block
            settings["s"] = adacos_scale(n_classes)
        self.block = head(emb_dim, n_local, **settings)  # its weight is this rank's block
        self.n_classes, self.sample_rate = n_classes, sample_rate
        # checkpoints hold the whole class matrix, whatever the number of ranks that wrote it
        self._register_state_dict_hook(_whole_matrix_on_save)
        self._register_load_state_dict_pre_hook(_own_block_on_load, with_module=True)

    @property
    def margin_head(self) -> MarginHead:
        """The module holding the margins a warm-up ramps (MarginSchedule): the block."""
        return self.block

    def sample(self, local: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the block's classes used this step: every label of ``mine``
        plus random others, ``ceil(sample_rate * block)`` in all (at least the positives)."""
        n_local = self.block.n_classes
        score = torch.rand(n_local, device=local.device)
        score[local[mine]] = 2.0  # positives first
        n_pos = int((score > 1.0).sum())  # one host sync per step, as arcface_torch
        k = max(math.ceil(self.sample_rate * n_local), n_pos)
        return torch.topk(score, k, sorted=False).indices.sort().values

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z, _ = self._block_logits(emb, labels)
        return z

    def _block_logits(self, emb: torch.Tensor, labels: torch.Tensor):
        if self.world > 1:  # every rank sees the global batch
            emb = _GatherRows.apply(emb)
            parts = [torch.empty_like(labels) for _ in range(self.world)]
            dist.all_gather(parts, labels.contiguous())
            labels = torch.cat(parts)
        local = labels.long() - self.start
        mine = (local >= 0) & (local < self.block.n_classes)
        weight = self.block.weight
        if self.training and self.sample_rate < 1:
            index = self.sample(local, mine)
            weight = weight[index]
            local = torch.searchsorted(index, local.clamp(0, self.block.n_classes - 1))
        with torch.autocast(device_type=emb.device.type, enabled=False):
            cos = F.linear(F.normalize(emb.float()), F.normalize(weight.float())).clamp(-1, 1)
        idx = torch.where(mine, local, 0)[:, None]
        cos_t = cos.gather(1, idx)
        t = torch.where(mine[:, None], self.block.target_logit(cos_t, feature_norm(emb)), cos_t)
        return self.block.s * cos.scatter(1, idx, t), torch.where(mine, local, -1)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z, target = self._block_logits(emb, labels)
        self.last_logits = z.detach()
        return _ShardedCrossEntropy.apply(z, target)

    def full_weight(self) -> torch.Tensor:
        """The whole ``(n_classes, emb_dim)`` class matrix, gathered from every block (for a
        checkpoint that any number of ranks can load)."""
        w = self.block.weight.detach()
        if self.world == 1:
            return w.clone()
        sizes = [class_block(self.n_classes, r, self.world)[1] for r in range(self.world)]
        parts = [w.new_empty(n, w.shape[1]) for n in sizes]
        if len(set(sizes)) == 1:
            dist.all_gather(parts, w.contiguous())
        else:
            _gather_uneven(w, parts)
        return torch.cat(parts)


def _gather_uneven(w: torch.Tensor, parts: list[torch.Tensor]) -> None:
    """all_gather of blocks of different sizes: pad to the largest, then cut."""
    big = max(len(p) for p in parts)
    padded = [w.new_zeros(big, w.shape[1]) for _ in parts]
    mine = w.new_zeros(big, w.shape[1])
    mine[: len(w)] = w
    dist.all_gather(padded, mine)
    for p, q in zip(parts, padded, strict=True):
        p.copy_(q[: len(p)])


def _whole_matrix_on_save(module: PartialFCHead, state: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: ``block.weight`` becomes the whole ``(n_classes, emb_dim)`` matrix. Under
    several ranks it is gathered, so every rank must call ``state_dict()`` together (rank 0
    then writes it)."""
    key = prefix + "block.weight"
    if key in state and module.world > 1:
        state[key] = module.full_weight()


def _own_block_on_load(module: PartialFCHead, state: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: a whole class matrix is cut to this rank's block, so a run saved
    on W ranks resumes on any other number (a block-sized entry is taken as it is)."""
    key = prefix + "block.weight"
    w = state.get(key)
    if w is not None and w.shape[0] == module.n_classes and module.world > 1:
        start, n = class_block(module.n_classes, module.rank, module.world)
        state[key] = w[start : start + n]
