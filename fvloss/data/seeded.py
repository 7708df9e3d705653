"""Shuffling and augmentation as pure functions of ``(seed, epoch, image)``.

A DataLoader usually draws its shuffle and its augmentations from generators whose state moves
with every draw: in the main process interleaved with the model's dropout, in each worker from a
per-epoch seed. Then the augmentation an image gets depends on everything drawn before it, a
run resumed mid-epoch cannot find its place again without replaying the epoch, and 0 and 2
workers give different runs. :class:`SeededDL` removes that state instead:

* the order of epoch ``e`` is a permutation seeded by ``(seed, e)``;
* image ``i`` of epoch ``e`` is augmented with a generator seeded by ``(seed, e, i)``, handed to
  every item transform that has a ``reseed(seed)`` method (fvloss's
  :class:`~fvloss.data.AlbumentationsTransform`);
* ``set_epoch(e, start_batch=b)`` (called by :class:`SetEpoch` before each epoch) picks the epoch
  and where in it to start: resuming at batch ``b`` skips the first ``b`` batches without
  loading them, and what follows is what the uninterrupted run saw.

So the batches depend only on the seed and the epoch, not on the number of workers, on what the
model drew, or on whether the run was interrupted.
"""

from __future__ import annotations

import numpy as np
from fastai.callback.core import Callback
from fastai.data.core import TfmdDL

__all__ = ["EpochOrder", "SeededDL", "SetEpoch", "item_seed", "mix64"]

_M64 = (1 << 64) - 1
_SHUFFLE = 0x5EED_5EED  # a tag, so the shuffle seed of epoch e is not the seed of any item


def mix64(x: int) -> int:
    """splitmix64's finaliser: a fixed, well-mixed 64-bit function of ``x`` (stable across
    Python and numpy versions, unlike ``hash`` of a tuple)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch`` of a run seeded ``seed``."""
    return mix64(mix64(mix64(seed & _M64) ^ epoch) ^ index)


class EpochOrder:
    """Mixin for a fastai ``DataLoader``: epoch ``e``'s order is a permutation seeded by
    ``(seed, e)``, and ``set_epoch(e, start_batch)`` picks the epoch and its first batch.

    ``shard(rank, world_size)`` serves one rank's share of every epoch: all ranks draw the same
    order (no broadcast needed: it is a function of the seed), and rank ``r`` takes its items
    ``r, r + W, r + 2W, ...``. So global step ``k`` is always items ``k*bs*W .. (k+1)*bs*W - 1``
    of the epoch's order, the same items one process with batch ``bs*W`` would take, and a
    position in an epoch means the same on any number of ranks.
    """

    seed: int = 0
    epoch: int = 0
    start_batch: int = 0
    rank: int = 0
    world_size: int = 1
    pad: bool = False

    def _init_order(self, seed: int) -> None:
        self.seed, self.epoch, self.start_batch = int(seed), 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Serve epoch ``epoch`` from batch ``start_batch`` on (like PyTorch's
        ``DistributedSampler.set_epoch``; the start is for resuming mid-epoch)."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def shard(self, rank: int, world_size: int, pad: bool = False) -> None:
        """Serve rank ``rank`` of ``world_size`` (class docstring); ``shard(0, 1)`` undoes it.
        ``pad``: instead of leaving the last ``n mod W`` items out, repeat the first ones so
        that every item is served (validation: gathered, the repeats are cut again)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        self.rank, self.world_size, self.pad = int(rank), int(world_size), bool(pad)

    def shuffle_fn(self, idxs):
        rng = np.random.default_rng(mix64(mix64(self.seed ^ _SHUFFLE) ^ self.epoch))
        return np.asarray(idxs)[rng.permutation(len(idxs))].tolist()

    def _share(self, n: int) -> int:
        """Items per rank: equal shares; the epoch's last ``n mod W`` items (a different few
        each epoch, the order being shuffled) wait for another epoch, as with drop_last, or
        with ``pad`` the first ones are served twice."""
        if self.world_size == 1:
            return n
        return -(-n // self.world_size) if self.pad else n // self.world_size

    def get_idxs(self):
        idxs = super().get_idxs()
        w = self.world_size
        if w > 1:
            n = self._share(len(idxs)) * w
            idxs = (list(idxs) * 2)[:n] if self.pad else idxs[:n]
        # skipped batches (of the global step) are never loaded; the rest keep their places
        skip = self.start_batch * (self.bs or 1) * w
        return idxs[skip + self.rank :: w]

    def __len__(self) -> int:
        if self.world_size == 1:
            return super().__len__()
        n, bs = self._share(self.n), self.bs
        return n if bs is None else n // bs + (0 if self.drop_last or n % bs == 0 else 1)


class SeededDL(EpochOrder, TfmdDL):
    """A fastai ``TfmdDL`` whose shuffle and per-item augmentation seeds are functions of
    ``(seed, epoch, item)`` (module docstring). ``face_dls`` builds its loaders with it."""

    def __init__(self, dataset=None, seed: int = 0, **kwargs):
        self._init_order(seed)
        self._seeded: list | None = None
        super().__init__(dataset, **kwargs)

    def new(self, dataset=None, cls=None, **kwargs):
        out = super().new(dataset, cls, **{"seed": self.seed, **kwargs})
        if isinstance(out, EpochOrder):
            out.shard(self.rank, self.world_size, self.pad)
        return out

    def before_iter(self) -> None:
        super().before_iter()
        # the item transforms that take a seed; found here, in the main process, so that each
        # worker's copy of the loader holds its own copies of the same transforms
        self._seeded = [t for t in getattr(self.after_item, "fs", []) if hasattr(t, "reseed")]

    def do_item(self, s):
        if self._seeded and s is not None:
            seed = item_seed(self.seed, self.epoch, int(s))
            for t in self._seeded:
                t.reseed(seed)
        return super().do_item(s)


class SetEpoch(Callback):
    """Tell the training loader which epoch it serves (``dl.set_epoch(epoch)``) before each
    epoch's training, for loaders that have ``set_epoch`` (:class:`SeededDL`, a distributed
    sampler's loader); ``lr_find`` sees epoch 0's batches."""

    order = -5  # after TrainEvalCallback (-10) starts the epoch, before a resume moves into it

    def before_train(self) -> None:
        dl = self.dls.train
        if hasattr(dl, "set_epoch"):
            dl.set_epoch(self.epoch)
