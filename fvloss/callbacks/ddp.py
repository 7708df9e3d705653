"""DistributedDataParallel through fastai's own ``DistributedTrainer`` (and so accelerate).

fastai wraps the model with accelerate's ``prepare`` (DDP; NCCL on GPUs, gloo on CPUs) and each
DataLoader in its ``DistributedDL``, which broadcasts the epoch's indices from rank 0 as CUDA
tensors. fvloss's loaders need no broadcast: every rank draws the same seeded order and takes
its share (:meth:`fvloss.data.seeded.EpochOrder.shard`), so :class:`FaceDistributed` keeps them as
they are. The validation loader is sharded with padding: each held-out image is embedded by one
rank, and :class:`~fvloss.callbacks.verify.VerifyPairs` gathers the embeddings before scoring.
A Partial FC head's class block is each rank's own: DDP leaves it out of its gradient averaging
(its gradient is already the global batch's, see :mod:`fvloss.heads.partial_fc`).
"""

from __future__ import annotations

import torch

try:  # fastai's DistributedTrainer is built on accelerate, an extra of fvloss
    import accelerate  # noqa: F401
except ImportError as e:
    raise ImportError(
        "training on several processes needs accelerate: pip install fvloss[distributed]"
    ) from e
from fastai.distributed import DistributedTrainer  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from ..heads.partial_fc import sharded_parameters  # noqa: E402

__all__ = ["FaceDistributed"]


class FaceDistributed(DistributedTrainer):
    """fastai's ``DistributedTrainer`` for fvloss's seeded, already sharded loaders; BatchNorm
    synchronised across ranks on CUDA (SyncBatchNorm has no CPU kernel)."""

    def __init__(self, device: torch.device, **kwargs):
        cuda = torch.device(device).type == "cuda"
        super().__init__(sync_bn=cuda, cpu=not cuda, **kwargs)

    def before_fit(self) -> None:
        # DDP would average the ranks' different blocks (and refuse blocks of unequal sizes)
        own = [name for name, _, _ in sharded_parameters(self.learn.model)]
        if own:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.learn.model, own
            )
        super().before_fit()

    def _wrap_dl(self, dl):
        return dl  # EpochOrder loaders shard themselves
