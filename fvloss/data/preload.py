"""Small face sets decoded once into memory and augmented on the training device.

A set like the celeba64 recipe's (6,276 faces at 64 px: 77 MB as uint8) is decoded, resized and
augmented image by image every epoch on the per-item path, by DataLoader workers that compete
with the training step for the same cores. :func:`preloaded_dls` decodes and resizes every image
once (with the same ``Resize`` as the per-item pipeline) into one uint8 tensor, and
:class:`PreloadedDL` serves batches by indexing it, augmented by
:class:`~fvloss.data.device_aug.DeviceAugment` where the model runs. The order of epoch ``e`` is
the same permutation of ``(seed, e)`` as :class:`~fvloss.data.seeded.SeededDL`'s, batch ``k``'s
augmentation is drawn from a generator seeded by ``(seed, e, k)``: runs repeat, and resume
mid-epoch exactly.

``face_dls(..., preload="auto")`` takes this path when the augmentation has a device version
and the images fit in ``preload_share`` of the available memory; ``dls.pipeline`` says which
path was taken and why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.torch_core import default_device
from fastcore.basics import chunked
from matplotlib.figure import Figure

from .device_aug import DeviceAugment
from .seeded import EpochOrder, item_seed

__all__ = ["PreloadedDL", "preload_images", "preloaded_dls", "available_memory"]


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``; else total RAM)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


class _Decode(torch.utils.data.Dataset):
    def __init__(self, items: Sequence, read: Callable, resize: Callable):
        self.items, self.read, self.resize = items, read, resize

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.resize(image=self.read(self.items[i]))["image"]
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def preload_images(
    items: Sequence, read: Callable, size: int, num_workers: int = 0
) -> torch.Tensor:
    """Decode ``read(item)`` (RGB uint8) for every item, resized to ``size`` by the per-item
    pipeline's own ``Resize``, into one uint8 tensor ``(N, 3, size, size)``."""
    resize = A.Compose([A.Resize(size, size)])
    out = torch.empty((len(items), 3, size, size), dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(
        _Decode(items, read, resize), batch_size=256, num_workers=num_workers
    )
    i = 0
    for batch in loader:
        out[i : i + len(batch)] = batch
        i += len(batch)
    return out


class PreloadedDL(EpochOrder, DataLoader):
    """Batches of a uint8 image tensor, moved to ``device`` and, for training, augmented there
    (``augment``; else only normalised). Labels are int64."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        augment: DeviceAugment,
        train: bool,
        bs: int = 64,
        seed: int = 0,
        device: torch.device | str | None = None,
        channels_last: bool = False,
        vocab: list[str] | None = None,
        **kwargs: Any,
    ):
        self.images, self.labels, self.augment, self.train = images, labels, augment, train
        self.vocab = vocab
        self._init_order(seed)
        self._batch = 0
        self.channels_last = channels_last
        super().__init__(
            dataset=range(len(images)), bs=bs, shuffle=train, drop_last=train, num_workers=0,
            device=device, **kwargs,
        )  # fmt: skip

    def new(self, dataset=None, cls=None, **kwargs):
        """A loader over the same images (fastai's ``get_preds`` asks for one without shuffle)."""
        if dataset is not None:
            raise ValueError("a PreloadedDL serves its own images; build another for other data")
        out = PreloadedDL(
            self.images, self.labels, self.augment, self.train, bs=kwargs.pop("bs", self.bs),
            seed=self.seed, device=kwargs.pop("device", self.device),
            channels_last=self.channels_last, vocab=self.vocab,
        )  # fmt: skip
        out.shuffle = kwargs.pop("shuffle", self.shuffle)
        out.drop_last = kwargs.pop("drop_last", self.drop_last)
        if "get_idxs" in kwargs:  # get_preds fixes the order it reorders the outputs by
            out.get_idxs = kwargs.pop("get_idxs")
        if kwargs:
            raise TypeError(f"PreloadedDL.new: unsupported arguments {sorted(kwargs)}")
        out.set_epoch(self.epoch)
        out.shard(self.rank, self.world_size, self.pad)
        return out

    def create_batches(self, samps):
        for idx in chunked(samps, self.bs, self.drop_last):
            i = torch.as_tensor(idx, dtype=torch.long, device=self.images.device)
            yield self.images[i], self.labels[i]

    def before_iter(self) -> None:
        super().before_iter()
        self._batch = self.start_batch

    def after_batch(self, b):
        x, y = b
        if self.train:
            g = torch.Generator(device=x.device)
            g.manual_seed(item_seed(self.seed, self.epoch, self._batch) >> 1)  # < 2**63
            # seeded by the global step; the draws are the global batch's (EpochOrder.shard)
            x = self.augment(x, g, share=(self.rank, self.world_size))
        else:
            x = self.augment.normalize(x)
        self._batch += 1
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def decode_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] images (for showing a batch)."""
        return (x * self.augment.std + self.augment.mean).clamp(0, 1)

    def show_batch(self, b=None, max_n: int = 9, ncols: int = 3, figsize=None, **kwargs):
        """A grid of (augmented) images of one batch with their identities, as fastai's
        ``show_batch``; returns the matplotlib ``Figure`` (no pyplot state is touched)."""
        x, y = b if b is not None else self.one_batch()
        x = self.decode_batch(x[:max_n].float()).permute(0, 2, 3, 1).cpu().numpy()
        nrows = -(-len(x) // ncols)
        fig = Figure(figsize=figsize or (2 * ncols, 2 * nrows))
        for i, ax in enumerate(fig.subplots(nrows, ncols, squeeze=False).ravel()):
            ax.axis("off")
            if i < len(x):
                ax.imshow(x[i])
                label = int(y[i])
                ax.set_title(self.vocab[label] if self.vocab else str(label), fontsize=8)
        return fig


def preloaded_dls(
    items: Sequence,
    labels: Sequence[str],
    read: Callable,
    vocab: list[str],
    n_train_ids: int,
    img_size: int,
    augment: DeviceAugment,
    bs: int = 64,
    seed: int = 0,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> DataLoaders:
    """Training and validation :class:`PreloadedDL` over ``items``: label ``vocab.index(lab)``,
    the first ``n_train_ids`` identities of ``vocab`` training, the rest validation."""
    code = {name: i for i, name in enumerate(vocab)}
    y = torch.tensor([code[lab] for lab in labels], dtype=torch.long)
    images = preload_images(items, read, img_size, num_workers)
    device = torch.device(device) if device is not None else default_device()  # as fastai's
    if device.type == "cuda" and images.nbytes < 0.25 * torch.cuda.mem_get_info(device)[0]:
        # on the GPU itself: a batch is then an index into device memory, with no host copy
        images, y = images.to(device), y.to(device)
    train = y < n_train_ids
    dls = []
    for mask, is_train in ((train, True), (~train, False)):
        dls.append(
            PreloadedDL(
                images[mask],
                y[mask],
                augment,
                is_train,
                bs=bs,
                seed=seed,
                device=device,
                vocab=list(vocab),
                channels_last=channels_last,
            )  # fmt: skip
        )
    out = DataLoaders(*dls, device=device)
    out.vocab = list(vocab)  # as the per-item loaders' CategoryMap: label -> identity
    return out
