"""What a cost function needs from the other ranks, and nothing when there are none.

Under DistributedDataParallel each rank sees its own share of the global batch. Statistics that
a loss keeps (center loss's centers, CurricularFace's t, AdaFace's norm mean and std) must be
those of the global batch, or the ranks drift apart (DDP's buffer broadcast would then silently
keep rank 0's alone). These helpers sum over ranks when ``torch.distributed`` is initialised with
more than one process and are the identity otherwise, so the heads and callbacks call them
unconditionally.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "any_rank",
    "all_reduce_sum",
    "broadcast",
    "global_mean",
    "global_mean_std",
    "is_main",
    "launched",
    "local_only",
    "on_main",
    "rank",
    "setup",
    "teardown",
    "world_size",
]

_local = False  # inside local_only(): this process acts alone
_ours = False  # setup() made the process group


def _on() -> bool:
    return not _local and dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the default group; 1 without ``torch.distributed`` (or in local_only)."""
    return dist.get_world_size() if _on() else 1


def rank() -> int:
    """This process's rank; 0 without ``torch.distributed``."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0, the one that writes the run folder and prints."""
    return rank() == 0


def launched() -> bool:
    """Started by ``torchrun`` or ``accelerate launch`` with more than one process (both set
    ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> None:
    """Join the launcher's process group (NCCL on CUDA, gloo on CPU), each rank on its own GPU
    (``LOCAL_RANK``); nothing when not launched or already joined."""
    if not launched() or dist.is_initialized():
        return
    global _ours
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    _ours = True


def teardown() -> None:
    """Leave the process group that :func:`setup` joined (one a caller made stays)."""
    global _ours
    if _ours and dist.is_initialized():
        dist.destroy_process_group()
    _ours = False


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a run folder, an lr, a precision choice)."""
    if not _on() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 alone (the others waiting), its result on every rank; an error there
    is raised on every rank, so none waits for a rank that has stopped."""
    if not _on() or dist.get_world_size() == 1:
        return fn()
    out: tuple[Any, BaseException | None] = (None, None)
    if is_main():
        try:
            with local_only():
                out = (fn(), None)
        except Exception as e:  # raised below, on every rank
            out = (None, e)
    value, err = broadcast(out)
    if err is not None:
        raise err
    return value


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """This process alone, the others waiting (rank 0's lr_find): the statistics helpers below
    do not reach the other ranks meanwhile, which would wait for a collective never made; nor
    do fastai's, which read ``WORLD_SIZE`` (``Learner.load`` waits at a barrier otherwise)."""
    global _local
    old, _local = _local, True
    env = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        _local = old
        if env is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = env


def any_rank(flags: list[bool], device: torch.device | str = "cpu") -> list[bool]:
    """Each flag true on some rank, on every rank (one small all-reduce): decisions the ranks
    must take together, such as writing a checkpoint that gathers a sharded head."""
    if not _on() or dist.get_world_size() == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


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
