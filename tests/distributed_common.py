"""Run a function on W gloo processes (CPU) and collect what each rank returns."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init: str, out: str, fn: Callable, args: tuple) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    torch.set_num_threads(1)  # W processes on 2 cores
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, world: int = 2, *args) -> list:
    """``[fn(rank, world, *args) for each rank]``, each in its own process of one gloo group.
    ``fn`` must be importable (a module-level function) and return tensors / plain data."""
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init"
        mp.spawn(_worker, args=(world, str(init), tmp, fn, args), nprocs=world, join=True)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world)]
