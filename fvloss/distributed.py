"""What a cost function needs from the other ranks, and nothing when there are none.

Under DistributedDataParallel each rank sees its own share of the global batch. Statistics that
a loss keeps (center loss's centers, CurricularFace's t, AdaFace's norm mean and std) must be
those of the global batch, or the ranks drift apart (DDP's buffer broadcast would then silently
keep rank 0's alone). These helpers sum over ranks when ``torch.distributed`` is initialised with
more than one process and are the identity otherwise, so the heads and callbacks call them
unconditionally.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["world_size", "rank", "all_reduce_sum", "global_mean", "global_mean_std"]


def world_size() -> int:
    """Processes in the default group; 1 without ``torch.distributed``."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank; 0 without ``torch.distributed``."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks, in place (no gradient: for statistics and buffers)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the global batch (every rank's ``x`` together), a 0-d tensor; on one
    process exactly ``x.mean()`` (the same bits as before there were ranks)."""
    if world_size() == 1:
        return x.detach().mean()
    s = torch.stack([x.detach().sum(), x.new_tensor(float(x.numel()))])
    s = all_reduce_sum(s)
    return s[0] / s[1]


def global_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, unbiased std and count of ``x`` over the global batch (from one all-reduce of
    sum, sum of squares and count; in float64 so the difference of squares keeps its digits).
    On one process exactly ``x.mean()``, ``x.std()`` (NaN for one value), ``x.numel()``."""
    if world_size() == 1:
        x = x.detach()
        std = x.std() if x.numel() > 1 else x.new_tensor(float("nan"))
        return x.mean(), std, x.new_tensor(float(x.numel()))
    x = x.detach().double().reshape(-1)
    s = all_reduce_sum(torch.stack([x.sum(), (x * x).sum(), x.new_tensor(float(x.numel()))]))
    n = s[2]
    mean = s[0] / n
    var = (s[1] - n * mean * mean) / (n - 1).clamp_min(1.0)
    return mean, var.clamp_min(0.0).sqrt(), n
