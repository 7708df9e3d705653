"""Identity-labelled face data (``root/<identity>/<image>``) as fastai ``DataLoaders``.

The pieces, each usable on its own:

* :func:`scan_identities` lists images and labels and reports empty folders, one-image
  identities and unreadable files (raising, or skipping and counting them);
* :func:`split_identities` holds out whole identities (verification needs unseen people);
* :func:`train_pipeline` / :func:`eval_pipeline` are Albumentations pipelines;
* :class:`AlbumentationsTransform` bridges them into a fastai ``DataBlock`` as *one* item
  transform that picks the train or eval pipeline by split;
* :func:`face_dls` puts it all together; its ``root`` may also be an insightface / MXNet
  RecordIO set (a ``.rec``, or a folder with ``train.rec`` + ``train.idx``: see
  :mod:`fvloss.recordio`), which then trains exactly as the same faces in a folder.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before the import: no network call

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.data.transforms import (
    IndexSplitter,  # noqa: E402
    Transform,  # noqa: E402
)
from fastai.torch_core import TensorImage, default_device  # noqa: E402

from .imageio import IMAGE_EXTENSIONS, ImageReadError, check_image, read_rgb  # noqa: E402
from .recordio import (  # noqa: E402
    RecordImageReader,
    is_record_set,
    record_set_paths,
    scan_record_set,
)
from .seeded import SeededDL  # noqa: E402

__all__ = [
    "DataReport",
    "IdentityIndex",
    "RecordSetIndex",
    "scan_identities",
    "scan_records",
    "split_identities",
    "train_pipeline",
    "eval_pipeline",
    "AlbumentationsTransform",
    "ValidImages",
    "default_workers",
    "face_dls",
]


# -- scanning -----------------------------------------------------------------------------------
@dataclass
class DataReport:
    """What a scan found: counts, plus the folders and files that were not used, and why."""

    root: str
    n_identities: int = 0
    n_images: int = 0
    empty_identities: list[str] = field(default_factory=list)
    single_image_identities: list[str] = field(default_factory=list)
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    loose_files: int = 0  # images directly under root, with no identity folder

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "n_identities": self.n_identities,
            "n_images": self.n_images,
            "n_empty_identities": len(self.empty_identities),
            "n_single_image_identities": len(self.single_image_identities),
            "n_bad_files": len(self.bad_files),
            "n_loose_files": self.loose_files,
            "empty_identities": self.empty_identities,
            "single_image_identities": self.single_image_identities,
            "bad_files": [{"path": p, "reason": r} for p, r in self.bad_files],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataReport:
        """The report :meth:`to_dict` wrote (a packed index keeps its scan's report so)."""
        return cls(root=d["root"], n_identities=d["n_identities"], n_images=d["n_images"],
                   empty_identities=list(d["empty_identities"]),
                   single_image_identities=list(d["single_image_identities"]),
                   bad_files=[(b["path"], b["reason"]) for b in d["bad_files"]],
                   loose_files=d["n_loose_files"])  # fmt: skip

    def summary(self) -> str:
        s = f"{self.root}: {self.n_images} images of {self.n_identities} identities"
        extra = []
        if self.empty_identities:
            extra.append(f"{len(self.empty_identities)} empty identity folders")
        if self.single_image_identities:
            extra.append(
                f"{len(self.single_image_identities)} one-image identities (no same-person pairs)"
            )
        if self.bad_files:
            extra.append(f"{len(self.bad_files)} unreadable files skipped")
        if self.loose_files:
            extra.append(f"{self.loose_files} images outside identity folders ignored")
        return s + ("; " + ", ".join(extra) if extra else "")


@dataclass
class IdentityIndex:
    """Image paths and their identity names, plus the scan's report."""

    items: list[Path]
    labels: list[str]
    report: DataReport

    @property
    def identities(self) -> list[str]:
        return sorted(set(self.labels))


@dataclass
class RecordSetIndex(IdentityIndex):
    """An :class:`IdentityIndex` of a RecordIO set: ``items`` are record keys of ``rec``."""

    rec: Path = Path()
    idx: Path = Path()


def scan_records(path: str | Path, check: str = "quick", skip_bad: bool = False) -> RecordSetIndex:
    """:func:`scan_identities` for a ``.rec`` (or a folder with ``train.rec`` + ``train.idx``):
    see :func:`fvloss.recordio.scan_record_set`."""
    paths = record_set_paths(path)
    keys, labels, report = scan_record_set(paths.rec, check=check, skip_bad=skip_bad)
    return RecordSetIndex(keys, labels, report, paths.rec, paths.idx)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def scan_identities(
    root: str | Path, check: str = "quick", skip_bad: bool = False
) -> IdentityIndex:
    """List ``root/<identity>/**/<image>`` in a deterministic (sorted) order.

    Args:
        check: ``"quick"`` reads each file's first and last bytes (catches empty, non-image and
            truncated files cheaply), ``"full"`` decodes every image, ``"none"`` trusts the files.
        skip_bad: skip files that fail the check and count them in the report; otherwise the
            first one raises :class:`~fvloss.imageio.ImageReadError` naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    if check not in ("quick", "full", "none"):
        raise ValueError(f"check must be 'quick', 'full' or 'none', got {check!r}")
    report = DataReport(root=str(root))
    items: list[Path] = []
    labels: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.is_file():
            report.loose_files += _is_image(entry)
            continue
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        files = sorted(p for p in entry.rglob("*") if p.is_file() and _is_image(p))
        good = []
        for p in files:
            reason = None
            if check == "quick":
                reason = check_image(p)
            elif check == "full":
                try:
                    read_rgb(p)
                except ImageReadError as e:
                    reason = e.reason
            if reason is None:
                good.append(p)
            elif skip_bad:
                report.bad_files.append((str(p), reason))
            else:
                raise ImageReadError(
                    p, reason + " (pass skip_bad=True / --skip-bad to skip and report such files)"
                )
        if not good:
            report.empty_identities.append(entry.name)
            continue
        if len(good) == 1:
            report.single_image_identities.append(entry.name)
        items += good
        labels += [entry.name] * len(good)
    report.n_images, report.n_identities = len(items), len(set(labels))
    if not items:
        raise ValueError(
            f"{root}: no images found in identity sub-folders (expected root/<identity>/<image>)"
        )
    return IdentityIndex(items, labels, report)


def split_identities(
    identities: list[str], valid_pct: float = 0.1, seed: int = 42
) -> tuple[list[str], list[str]]:
    """Hold out ``valid_pct`` of the identities (at least 2 when there are 4 or more), chosen by
    ``seed`` independently of the global RNG state. Returns sorted (train, valid) names."""
    ids = sorted(set(identities))
    if not 0 <= valid_pct < 1:
        raise ValueError(f"valid_pct must be in [0, 1), got {valid_pct}")
    n_valid = round(len(ids) * valid_pct)
    if valid_pct > 0 and len(ids) >= 4:
        n_valid = max(n_valid, 2)
    if len(ids) - n_valid < 2:
        raise ValueError(f"{len(ids)} identities are too few to hold out {n_valid} for validation")
    valid = set(random.Random(seed).sample(ids, n_valid))
    return [i for i in ids if i not in valid], [i for i in ids if i in valid]


# -- augmentation -------------------------------------------------------------------------------
def _normalize(mean: float, std: float) -> A.Normalize:
    return A.Normalize(mean=(mean,) * 3, std=(std,) * 3, max_pixel_value=255.0)


def train_pipeline(
    size: int = 160,
    hflip: float = 0.5,
    mean: float = 0.5,
    std: float = 0.5,
    extra: list[dict[str, Any]] | None = None,
) -> A.Compose:
    """The assignment's training pipeline: Resize, HorizontalFlip, Normalize(0.5, 0.5).

    ``extra`` adds Albumentations transforms by name before the normalisation, e.g.
    ``[{"transform": "RandomBrightnessContrast", "p": 0.3}]`` (how TOML recipes configure it).
    """
    tfms: list[A.BasicTransform] = [A.Resize(size, size)]
    if hflip:
        tfms.append(A.HorizontalFlip(p=hflip))
    for spec in extra or []:
        tfms.append(_transform_from_spec(spec))
    return A.Compose([*tfms, _normalize(mean, std)])


def _transform_from_spec(spec: dict[str, Any]) -> A.BasicTransform:
    """Build one Albumentations transform from ``{"transform": name, **arguments}``.

    Albumentations only *warns* about an argument it does not know and then ignores it, so a
    typo in an experiment file (``scal = [0.9, 1.1]``) would silently train without that
    augmentation; here it is an error that names the transform and the argument.
    """
    spec = dict(spec)
    name = spec.pop("transform", None)
    if not isinstance(name, str) or not hasattr(A, name):
        raise ValueError(f"unknown albumentations transform {name!r} in {spec}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tfm = getattr(A, name)(**spec)
        except (TypeError, ValueError) as e:
            raise ValueError(f"albumentations {name}: {e}") from None
    for w in caught:
        if "not valid for transform" in str(w.message):
            raise ValueError(f"albumentations {name}: {w.message}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return tfm


def eval_pipeline(size: int = 160, mean: float = 0.5, std: float = 0.5) -> A.Compose:
    """Resize + Normalize, for validation and verification."""
    return A.Compose([A.Resize(size, size), _normalize(mean, std)])


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC float32 -> CHW tensor (no copy of the data beyond the transpose)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class EvalTransform:
    """``RGB uint8 HxWx3 -> normalised CHW float tensor``: what verification embeds with."""

    def __init__(self, size: int = 160, mean: float = 0.5, std: float = 0.5):
        self.pipeline = eval_pipeline(size, mean, std)

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        return to_tensor(self.pipeline(image=img)["image"])


class AlbumentationsTransform(Transform):
    """One fastai item transform holding both pipelines, choosing by split.

    One transform rather than two: a ``DataBlock`` keeps only the last of several item
    transforms of the same class, so a train and a valid instance would collapse into one. The
    output is already normalised float, so the block is a plain ``TransformBlock``, not
    ``ImageBlock`` (whose ``IntToFloatTensor`` would divide by 255 a second time).

    Albumentations draws from generators of its own, which ``torch.manual_seed`` / fastai's
    ``set_seed`` do not reach. So each image's augmentation gets a fresh seed: the one
    :class:`~fvloss.seeded.SeededDL` hands it through :meth:`reseed`, a function of (seed,
    epoch, image) that makes the batches independent of workers and of interruptions; in a
    loader that hands none, one draw from torch's generator (then ``set_seed`` fixes it, and each
    DataLoader worker draws from its own per-worker seed).
    """

    split_idx, order = None, 2

    def __init__(self, train: A.Compose, valid: A.Compose, mean: float = 0.5, std: float = 0.5):
        super().__init__()
        self.train, self.valid, self.mean, self.std = train, valid, mean, std
        self._split, self._next_seed = 0, None

    def reseed(self, seed: int) -> None:
        """Use ``seed`` for the next training image (called by :class:`~fvloss.seeded.SeededDL`)."""
        self._next_seed = seed

    def _reseed(self, pipe: A.Compose) -> None:
        seed, self._next_seed = self._next_seed, None
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        # one generator pair handed down the whole pipeline: cheaper than set_random_seed,
        # which builds a generator per transform (this costs ~14 us an image here, against
        # ~130 us for the celeba64 augmentation itself)
        pipe.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, b, split_idx: int | None = None, **kwargs):
        self._split = split_idx  # fastai passes 0 for the training set, 1 for validation
        return super().__call__(b, split_idx=split_idx, **kwargs)

    def encodes(self, img: np.ndarray) -> TensorImage:
        pipe = self.train if self._split == 0 else self.valid
        if pipe is self.train:
            self._reseed(pipe)
        return TensorImage(to_tensor(pipe(image=img)["image"]))

    def decodes(self, x: TensorImage) -> TensorImage:
        # back to [0, 1] for show_batch
        return TensorImage((x * self.std + self.mean).clamp(0, 1))


def face_dls(
    root: str | Path,
    img_size: int = 160,
    bs: int = 64,
    valid_pct: float = 0.1,
    seed: int = 42,
    hflip: float = 0.5,
    mean: float = 0.5,
    std: float = 0.5,
    extra_aug: list[dict[str, Any]] | None = None,
    check: str = "quick",
    skip_bad: bool = False,
    num_workers: int | None = None,
    device: torch.device | str | None = None,
    index: IdentityIndex | None = None,
    preload: str = "auto",
    preload_share: float = 0.25,
    channels_last: bool = False,
    stream: bool = False,
    index_dir: str | Path | None = None,
) -> DataLoaders:
    """Training / validation ``DataLoaders`` for an identity folder, split by identity.

    ``root`` may also be a RecordIO set (a ``.rec`` file, or a folder holding ``train.rec``):
    the same split, pipelines and report, with images decoded from the record file (each
    DataLoader worker opens its own handle).

    Labels of the training identities are ``0..n_classes-1`` (``dls.n_classes``); validation
    identities come after them in ``dls.vocab`` and only serve verification pairs. The scan's
    :class:`DataReport` is ``dls.report``. ``seed`` fixes the identity split, and the loaders
    (:class:`~fvloss.seeded.SeededDL`) shuffle and augment epoch ``e`` as functions of
    ``(seed, e, image)``: a Learner must call ``dls.train.set_epoch(e)`` each epoch (the
    :class:`~fvloss.seeded.SetEpoch` callback, which ``face_learner`` adds), or every epoch
    repeats epoch 0's order and augmentation.

    ``preload``: ``"auto"`` decodes and resizes the images once into memory and augments batches
    on the training device (:mod:`fvloss.preload`) when the augmentation has a device version
    and the uint8 images take at most ``preload_share`` of the available memory; ``"on"``
    requires it (an error says why it cannot), ``"off"`` keeps the per-image Albumentations
    path. ``dls.pipeline`` says which path was taken and why.

    ``stream``: for millions of images, the index as flat arrays (:mod:`fvloss.stream`: no
    Python object per image), built once into ``index_dir`` (by rank 0 under DDP; then mapped
    by every rank) or, without one, in memory; served image by image (no preloading), with the
    same batches as the default per-image path.
    """
    if preload not in ("auto", "on", "off"):
        raise ValueError(f"preload must be auto, on or off, got {preload!r}")
    pipe = train_pipeline(img_size, hflip, mean, std, extra_aug)
    item_tfm = AlbumentationsTransform(pipe, eval_pipeline(img_size, mean, std), mean, std)
    if stream:
        return _streamed(root, img_size, bs, valid_pct, seed, item_tfm, check, skip_bad,
                         num_workers, device, index, index_dir)  # fmt: skip
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
        from .preload import preloaded_dls

        dls = preloaded_dls(
            index.items, index.labels, read, train_ids + valid_ids, len(train_ids), img_size, use,
            bs=bs, seed=seed, num_workers=(os.cpu_count() or 0) if num_workers is None else num_workers,  # decoding
            device=device, channels_last=channels_last,
        )  # fmt: skip
        return _describe(dls, train_ids, valid_ids, index.report, why, img_size, valid)
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
    # SeededDL: shuffle and augmentation are functions of (seed, epoch, image), see fvloss.seeded
    dls = block.dataloaders(index.items, dl_type=SeededDL, seed=seed, **kw)
    return _describe(dls, train_ids, valid_ids, index.report, why, img_size, valid)


def _streamed(root, img_size, bs, valid_pct, seed, tfm, check, skip_bad, num_workers, device,
              index, index_dir) -> DataLoaders:  # fmt: skip
    """``face_dls(..., stream=True)``."""
    from .distributed import world_size
    from .stream import PackedIndex, shared_index, streamed_dls

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
    return _describe(dls, train_ids, valid_ids, report, why, img_size, valid)


def default_workers() -> int:
    """DataLoader workers for the per-image path when none are asked for: 0 on 2 cores or
    fewer, where workers decoding beside torch's compute threads slow the step more than they
    save (``bench/end_to_end.py``, 2026-12-01: 219 training img/s with 0 workers against 198
    with 2, epochs 34.2 against 38.4 s); otherwise fastai's default (the CPUs, at most 16)."""
    from fastai.torch_core import defaults

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
              valid: ValidImages) -> DataLoaders:  # fmt: skip
    dls.n_classes, dls.img_size = len(train_ids), img_size
    dls.train_identities, dls.valid_identities = train_ids, valid_ids
    dls.report, dls.pipeline, dls.valid_images = report, pipeline, valid
    return dls


def _preload_choice(
    preload: str, pipe, mean: float, std: float, n: int, size: int, share: float
) -> tuple[Any, str]:
    """``(DeviceAugment or None, a sentence saying which path and why)``."""
    from .device_aug import DeviceAugment
    from .preload import available_memory

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
