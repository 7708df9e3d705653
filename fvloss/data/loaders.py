"""``face_dls``: training / validation ``DataLoaders`` for identity-labelled faces, split by
identity, over any source (a folder, a RecordIO set, a streamed index) and either loader
(per-image Albumentations, or images preloaded and augmented on the device)."""

from __future__ import annotations

import os
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import IndexSplitter
from fastai.torch_core import default_device, defaults

from ..config import DEFAULTS
from ..imageio import read_rgb
from ..ranks import world_size
from .device_aug import DeviceAugment
from .folder import scan_identities
from .index import DataReport, IdentityIndex, split_identities
from .preload import available_memory, preloaded_dls
from .recordio import RecordImageReader, RecordSetIndex, is_record_set, scan_records
from .seeded import SeededDL
from .stream import PackedIndex, shared_index, streamed_dls
from .transforms import AlbumentationsTransform, eval_pipeline, train_pipeline

__all__ = ["ValidImages", "default_workers", "face_dls"]


def face_dls(
    root: str | Path,
    img_size: int = DEFAULTS.img_size,
    bs: int = DEFAULTS.bs,
    valid_pct: float = DEFAULTS.valid_pct,
    seed: int = DEFAULTS.seed,
    hflip: float = DEFAULTS.hflip,
    mean: float = DEFAULTS.mean,
    std: float = DEFAULTS.std,
    extra_aug: list[dict[str, Any]] | None = None,
    check: str = DEFAULTS.check,
    skip_bad: bool = DEFAULTS.skip_bad,
    num_workers: int | None = None,
    device: torch.device | str | None = None,
    index: IdentityIndex | None = None,
    preload: str = DEFAULTS.preload,
    preload_share: float = DEFAULTS.preload_share,
    channels_last: bool = DEFAULTS.channels_last,
    stream: bool = DEFAULTS.stream,
    index_dir: str | Path | None = None,
) -> DataLoaders:
    """Training / validation ``DataLoaders`` for an identity folder, split by identity.

    Every default is :data:`fvloss.config.DEFAULTS`' (what ``fvloss train`` uses);
    ``dls.settings`` records the settings it was built with, by their ``Config`` names.
    ``channels_last`` here only sets the preloaded batches' memory format (the learner's
    ``channels_last`` sets the model's).

    ``root`` may also be a RecordIO set (a ``.rec`` file, or a folder holding ``train.rec``):
    the same split, pipelines and report, with images decoded from the record file (each
    DataLoader worker opens its own handle).

    Labels of the training identities are ``0..n_classes-1`` (``dls.n_classes``); validation
    identities come after them in ``dls.vocab`` and only serve verification pairs. The scan's
    :class:`DataReport` is ``dls.report``. ``seed`` fixes the identity split, and the loaders
    (:class:`~fvloss.data.seeded.SeededDL`) shuffle and augment epoch ``e`` as functions of
    ``(seed, e, image)``: a Learner must call ``dls.train.set_epoch(e)`` each epoch (the
    :class:`~fvloss.data.seeded.SetEpoch` callback, which ``face_learner`` adds), or every epoch
    repeats epoch 0's order and augmentation.

    ``preload``: ``"auto"`` decodes and resizes the images once into memory and augments batches
    on the training device (:mod:`fvloss.data.preload`) when the augmentation has a device version
    and the uint8 images take at most ``preload_share`` of the available memory; ``"on"``
    requires it (an error says why it cannot), ``"off"`` keeps the per-image Albumentations
    path. ``dls.pipeline`` says which path was taken and why.

    ``stream``: for millions of images, the index as flat arrays (:mod:`fvloss.data.stream`: no
    Python object per image), built once into ``index_dir`` (by rank 0 under DDP; then mapped
    by every rank) or, without one, in memory; served image by image (no preloading), with the
    same batches as the default per-image path.
    """
    if preload not in ("auto", "on", "off"):
        raise ValueError(f"preload must be auto, on or off, got {preload!r}")
    settings = {
        "img_size": img_size, "bs": bs, "valid_pct": valid_pct, "seed": seed, "hflip": hflip,
        "mean": mean, "std": std, "extra_aug": list(extra_aug or []), "check": check,
        "skip_bad": skip_bad, "workers": -1 if num_workers is None else num_workers,
        "preload": preload, "preload_share": preload_share, "channels_last": channels_last,
        "stream": stream,
    }  # fmt: skip
    pipe = train_pipeline(img_size, hflip, mean, std, extra_aug)
    item_tfm = AlbumentationsTransform(pipe, eval_pipeline(img_size, mean, std), mean, std)
    if stream:
        return _streamed(root, img_size, bs, valid_pct, seed, item_tfm, check, skip_bad,
                         num_workers, device, index, index_dir, settings)  # fmt: skip
    if index is None:
        scan = scan_records if is_record_set(root) else scan_identities
        index = scan(root, check=check, skip_bad=skip_bad)
    if isinstance(index, RecordSetIndex):
        read, get_y = RecordImageReader(index.rec, index.idx), _RecordLabels(index)
    else:
        read, get_y = read_rgb, partial(_label_of, root=Path(root))
    train_ids, valid_ids = split_identities(index.labels, valid_pct, seed)
    use, why = _preload_choice(preload, pipe, mean, std, len(index.items), img_size, preload_share)
    train_set = set(train_ids)
    valid_idx = [i for i, lab in enumerate(index.labels) if lab not in train_set]
    # both paths below keep the scan's order within the validation split (so does the preloaded
    # path's label mask): image i of the validation loader is index.items[valid_idx[i]]
    valid = ValidImages([index.items[i] for i in valid_idx], read, getattr(index, "rec", None))
    if use is not None:
        dls = preloaded_dls(
            index.items, index.labels, read, train_ids + valid_ids, len(train_ids), img_size, use,
            bs=bs, seed=seed, num_workers=(os.cpu_count() or 0) if num_workers is None else num_workers,  # decoding
            device=device, channels_last=channels_last,
        )  # fmt: skip
        return _describe(dls, train_ids, valid_ids, index.report, why, img_size, valid, settings)
    block = DataBlock(
        blocks=(
            TransformBlock(type_tfms=read),
            CategoryBlock(vocab=train_ids + valid_ids, sort=False),
        ),
        get_y=get_y,
        splitter=IndexSplitter(valid_idx),
        item_tfms=item_tfm,
    )
    kw: dict[str, Any] = {"bs": bs, "device": device}
    kw["num_workers"] = default_workers() if num_workers is None else num_workers
    if (torch.device(device) if device is not None else default_device()).type == "cuda":
        # page-locked batches copy to the GPU asynchronously. (Workers are not persistent:
        # fastai hands each epoch's order to workers when they start; restarting them costs
        # ~0.1 s an epoch here, bench/data_pipeline.py's "first batch s".)
        kw["pin_memory"] = True
    # SeededDL: shuffle and augmentation are functions of (seed, epoch, image), see fvloss.data.seeded
    dls = block.dataloaders(index.items, dl_type=SeededDL, seed=seed, **kw)
    return _describe(dls, train_ids, valid_ids, index.report, why, img_size, valid, settings)


def _streamed(root, img_size, bs, valid_pct, seed, tfm, check, skip_bad, num_workers, device,
              index, index_dir, settings) -> DataLoaders:  # fmt: skip
    """``face_dls(..., stream=True)``."""

    def scan():
        return (scan_records if is_record_set(root) else scan_identities)(root, check, skip_bad)

    if isinstance(index, PackedIndex):
        packed = index
    elif index_dir is not None:
        packed = shared_index(index_dir, scan)
    elif world_size() > 1:
        raise ValueError("stream on several processes needs an index_dir (rank 0 writes it)")
    else:
        packed = PackedIndex.from_scan(index if index is not None else scan())
    read = RecordImageReader(packed.rec, packed.idx) if packed.rec is not None else read_rgb
    train_ids, valid_ids = split_identities(packed.names, valid_pct, seed)
    workers = default_workers() if num_workers is None else num_workers
    dls = streamed_dls(packed, train_ids + valid_ids, len(train_ids), read, tfm, bs=bs, seed=seed,
                       num_workers=workers, device=device)  # fmt: skip
    report = DataReport.from_dict(packed.report)
    why = (f"streamed from a packed index ({packed.nbytes / 2**20:.1f} MiB of arrays for "
           f"{len(packed)} images), per-image Albumentations in the DataLoader")  # fmt: skip
    valid = ValidImages(_RowItems(packed, dls.valid.dataset.rows), read, packed.rec)
    return _describe(dls, train_ids, valid_ids, report, why, img_size, valid, settings)


def default_workers() -> int:
    """DataLoader workers for the per-image path when none are asked for: 0 on 2 cores or
    fewer, where workers decoding beside torch's compute threads slow the step more than they
    save (``bench/end_to_end.py``, 2026-12-01: 219 training img/s with 0 workers against 198
    with 2, epochs 34.2 against 38.4 s); otherwise fastai's default (the CPUs, at most 16)."""
    return 0 if (os.cpu_count() or 1) <= 2 else int(defaults.cpus)


class _RowItems:
    """``index.item(rows[i])`` on demand: a packed index's split with no object per image."""

    def __init__(self, index, rows: np.ndarray):
        self.index, self.rows = index, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.index.item(int(self.rows[i]))


class ValidImages:
    """The validation (held-out) images in the validation loader's order, read on demand:
    ``self[i]`` is image ``i`` as ``HxWx3`` uint8 RGB and ``names[i]`` names it (its path, or
    ``<file>.rec#<key>`` in a record set). ``face_dls`` sets it as ``dls.valid_images``, so
    figures can show the held-out pairs a model gets wrong (:class:`~fvloss.eval.VerifyPairs`
    pairs them as a :class:`~fvloss.eval.protocols.PairSet` with these as its ``images``)."""

    def __init__(self, items, read, rec: str | Path | None = None):
        self.items, self.read, self.rec = items, read, rec

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(self.items[i])

    @cached_property  # once: VerifyPairs pairs them up after every held-out scoring
    def names(self) -> list[Path]:
        items = (self.items[i] for i in range(len(self.items)))
        if self.rec is None:
            return [Path(p) for p in items]
        return [Path(f"{Path(self.rec).name}#{k}") for k in items]


def _describe(dls, train_ids, valid_ids, report, pipeline: str, img_size: int,
              valid: ValidImages, settings: dict[str, Any]) -> DataLoaders:  # fmt: skip
    dls.n_classes, dls.img_size = len(train_ids), img_size
    dls.train_identities, dls.valid_identities = train_ids, valid_ids
    dls.report, dls.pipeline, dls.valid_images = report, pipeline, valid
    dls.settings = settings
    return dls


def _preload_choice(
    preload: str, pipe, mean: float, std: float, n: int, size: int, share: float
) -> tuple[Any, str]:
    """``(DeviceAugment or None, a sentence saying which path and why)``."""
    per_item = "per-image Albumentations in the DataLoader"
    if preload == "off":
        return None, f"{per_item} (preload off)"
    aug, why = DeviceAugment.from_pipeline(pipe, mean, std)
    need, avail = n * 3 * size * size, available_memory()
    if aug is None:
        if preload == "on":
            raise ValueError(f"preload on: the augmentation has no device version ({why})")
        return None, f"{per_item} (no device augmentation: {why})"
    if need > share * avail:
        msg = (f"the images need {need / 2**30:.2f} GiB as uint8, more than {share:.0%} of the "
               f"{avail / 2**30:.1f} GiB available")  # fmt: skip
        if preload == "on":
            raise ValueError(f"preload on: {msg}")
        return None, f"{per_item} ({msg})"
    return aug, (
        f"preloaded: decoded once into {need / 2**20:.0f} MiB of uint8, augmented on the "
        "training device in batches"
    )


def _label_of(p: Path, root: str | Path) -> str:
    """The identity of ``p``: its first folder below ``root`` (images may sit in sub-folders)."""
    return p.relative_to(root).parts[0]


class _RecordLabels:
    """``key -> identity name`` of a record set (a callable object rather than an annotated
    function: fastai dispatches a function on its annotation and passes other types through)."""

    def __init__(self, index: RecordSetIndex):
        self.names = dict(zip(index.items, index.labels))

    def __call__(self, key: int) -> str:
        return self.names[key]
