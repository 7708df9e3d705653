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

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import ranks as fdist
from .base import Head, MarginHead, adacos_scale, feature_norm

__all__ = ["PartialFCHead", "class_block", "init_rows", "sharded_parameters"]


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
    """A margin head that says it is ``shardable`` (:attr:`Head.shardable`), its classes are split across the ranks and sampled.

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
        if not head.shardable:
            raise ValueError(f"Partial FC shards heads that are shardable; not {head.__name__}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.world = fdist.world_size() if world_size is None else world_size
        self.rank = fdist.rank() if rank is None else rank
        self.start, n_local = class_block(n_classes, self.rank, self.world)
        if settings.get("s") == "auto":  # the scale of the whole classifier, not of a block
            settings["s"] = adacos_scale(n_classes)
        # its weight is this rank's block of one class matrix that is the same whatever the
        # number of ranks, and that none of them holds whole (init_rows); torch's generator
        # advances by one draw, so what is built after the head does not depend on W either
        seed = int(torch.randint(2**62, ()))
        with torch.random.fork_rng(devices=[]):
            self.block = head(emb_dim, n_local, **settings)
        with torch.no_grad():
            init_rows(self.block.weight, self.start, seed, self.block.init_std)
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
        plus random others, ``int(sample_rate * block)`` in all (at least the positives), as
        arcface_torch's ``PartialFC_V2`` counts them (``bench/peer_parity.py``)."""
        n_local = self.block.n_classes
        score = torch.rand(n_local, device=local.device)
        score[local[mine]] = 2.0  # positives first
        n_pos = int((score > 1.0).sum())  # one host sync per step, as arcface_torch
        k = max(int(self.sample_rate * n_local), n_pos)
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

    def sharded(self) -> dict[str, torch.nn.Parameter]:
        """This rank's own parameters, by name in this module: rows of its block of classes.
        DDP must not average them (FaceDistributed), checkpoints gather them (and their
        optimizer state) into whole matrices (:meth:`gather_rows`, :meth:`own_rows`)."""
        return {f"block.{n}": p for n, p in self.block.named_parameters()}

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """The whole ``(n_classes, ...)`` tensor from every rank's block rows ``t`` (a weight,
        an optimizer moment); every rank must call it together."""
        t = t.detach()
        if self.world == 1:
            return t.clone()
        sizes = [class_block(self.n_classes, r, self.world)[1] for r in range(self.world)]
        parts = [t.new_empty(n, *t.shape[1:]) for n in sizes]
        if len(set(sizes)) == 1:
            dist.all_gather(parts, t.contiguous())
        else:
            _gather_uneven(t, parts)
        return torch.cat(parts)

    def own_rows(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole ``(n_classes, ...)`` tensor (a block-sized one as it is)."""
        if self.world == 1 or t.shape[0] != self.n_classes:
            return t
        return t[self.start : self.start + self.block.n_classes]

    def full_weight(self) -> torch.Tensor:
        """The whole ``(n_classes, emb_dim)`` class matrix, gathered from every block (for a
        checkpoint that any number of ranks can load)."""
        return self.gather_rows(self.block.weight)


INIT_CHUNK = 4096  # rows drawn from one generator by init_rows


def init_rows(weight: torch.Tensor, start: int, seed: int, std: float) -> None:
    """Fill ``weight`` with rows ``start ...`` of a N(0, std) matrix drawn in chunks of
    :data:`INIT_CHUNK` rows, chunk ``c`` from a generator seeded ``seed + c``: a rank draws only
    the chunks its block overlaps, and every split of the rows gets the same matrix."""
    n, d = weight.shape
    for c in range(start // INIT_CHUNK, (start + n - 1) // INIT_CHUNK + 1):
        g = torch.Generator().manual_seed(seed + c)
        rows = torch.randn(INIT_CHUNK, d, generator=g) * std
        lo, hi = max(start, c * INIT_CHUNK), min(start + n, (c + 1) * INIT_CHUNK)
        weight[lo - start : hi - start] = rows[lo - c * INIT_CHUNK : hi - c * INIT_CHUNK]


def sharded_parameters(
    model: torch.nn.Module,
) -> list[tuple[str, torch.nn.Parameter, PartialFCHead]]:
    """``(name in model, parameter, its head)`` of every rank-own (sharded) parameter of
    ``model``; empty without a Partial FC head."""
    return [
        (f"{prefix}.{name}" if prefix else name, p, m)
        for prefix, m in model.named_modules()
        if isinstance(m, PartialFCHead)
        for name, p in m.sharded().items()
    ]


def _gather_uneven(w: torch.Tensor, parts: list[torch.Tensor]) -> None:
    """all_gather of blocks of different sizes: pad to the largest, then cut."""
    big = max(len(p) for p in parts)
    padded = [w.new_zeros(big, *w.shape[1:]) for _ in parts]
    mine = w.new_zeros(big, *w.shape[1:])
    mine[: len(w)] = w
    dist.all_gather(padded, mine)
    for p, q in zip(parts, padded, strict=True):
        p.copy_(q[: len(p)])


def _whole_matrix_on_save(module: PartialFCHead, state: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: the block's parameters become whole ``(n_classes, ...)`` matrices. Under
    several ranks they are gathered, so every rank must call ``state_dict()`` together (rank 0
    then writes it). Inside :func:`fvloss.ranks.local_only` (rank 0 alone: the precision
    probe's copy of the model) it stays this rank's block, which the load hook takes as it is."""
    if module.world > 1 and fdist.world_size() > 1:
        for name, p in module.sharded().items():
            if prefix + name in state:
                state[prefix + name] = module.gather_rows(p)


def _own_block_on_load(module: PartialFCHead, state: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: whole class matrices are cut to this rank's block, so a run
    saved on W ranks resumes on any other number (block-sized entries are taken as they are)."""
    for name in module.sharded():
        if (w := state.get(prefix + name)) is not None:
            state[prefix + name] = module.own_rows(w)
