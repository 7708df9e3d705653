"""A data index for millions of images that no process holds as Python objects.

``face_dls``'s default path keeps the scan's ``list[Path]`` and ``list[str]`` labels, and fastai's
``Datasets`` over them: some hundreds of bytes of Python objects per image, built by every rank
that scans (``bench/data_index.py`` measures it). At WebFace42M's scale that is tens of GB per
rank, and N ranks scanning one folder (reading every file's first and last bytes) N times.

:class:`PackedIndex` is the same index as flat arrays: the identity of each image as an
``int32`` code into the sorted identity names, and each image's place as an ``int64`` record key
(RecordIO) or its path relative to the root, all paths in one ``uint8`` buffer with ``int64``
offsets. :func:`shared_index` builds it once (rank 0 scans, writes ``.npy`` files), and every
rank maps those files read-only (``np.load(mmap_mode="r")``): the pages are the OS's page cache,
shared by the ranks. :class:`StreamDL` serves one split from it, image by image through the
per-item Albumentations pipeline, seeded and sharded as :class:`~fvloss.data.seeded.SeededDL`
(it gives the same batches as the default path: tested).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.torch_core import TensorCategory, default_device

from .. import ranks
from .recordio import RecordSetIndex
from .seeded import EpochOrder, item_seed

__all__ = ["PackedIndex", "StreamDL", "shared_index", "streamed_dls"]

_FILES = ("codes", "keys", "blob", "offsets")


@dataclass
class PackedIndex:
    """Images as arrays: ``codes[i]`` indexes ``names`` (the sorted identities); ``keys[i]`` is
    a record key (RecordIO) or, for a folder, ``blob[offsets[i]:offsets[i + 1]]`` is the path
    relative to ``root`` (UTF-8)."""

    root: Path
    names: list[str]
    codes: np.ndarray
    keys: np.ndarray | None = None
    blob: np.ndarray | None = None
    offsets: np.ndarray | None = None
    report: dict | None = None  # the scan's DataReport, as a dict
    rec: Path | None = None  # a record set's files
    idx: Path | None = None

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        """Bytes of the per-image arrays."""
        return sum(
            a.nbytes for a in (self.codes, self.keys, self.blob, self.offsets) if a is not None
        )

    def item(self, i: int) -> Path | int:
        """Image ``i``: its path (a folder) or its record key."""
        if self.keys is not None:
            return int(self.keys[i])
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.root / bytes(self.blob[lo:hi]).decode()

    @classmethod
    def from_scan(cls, index) -> PackedIndex:
        """Pack a scan's :class:`~fvloss.data.IdentityIndex` (or ``RecordSetIndex``)."""
        names = sorted(set(index.labels))
        code = {n: k for k, n in enumerate(names)}
        codes = np.fromiter((code[lab] for lab in index.labels), np.int32, len(index.labels))
        report = index.report.to_dict()
        if isinstance(index, RecordSetIndex):
            keys = np.fromiter(index.items, np.int64, len(index.items))
            return cls(Path(index.rec).parent, names, codes, keys=keys, report=report,
                       rec=Path(index.rec), idx=Path(index.idx))  # fmt: skip
        root = Path(index.report.root)
        parts = [str(p.relative_to(root)).encode() for p in index.items]
        offsets = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([len(b) for b in parts], out=offsets[1:])
        blob = np.frombuffer(b"".join(parts), np.uint8)
        return cls(root, names, codes, blob=blob, offsets=offsets, report=report)

    def save(self, folder: str | Path) -> Path:
        """Write the arrays (``.npy``) and the rest (``index.json``) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in _FILES:
            if (a := getattr(self, name)) is not None:
                np.save(folder / f"{name}.npy", a)
        meta = {"root": str(self.root), "names": self.names, "report": self.report,
                "rec": self.rec and str(self.rec), "idx": self.idx and str(self.idx)}  # fmt: skip
        (folder / "index.json").write_text(json.dumps(meta))
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> PackedIndex:
        """Read a saved index; ``mmap``: map its arrays read-only instead of reading them."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "index.json").read_text())
            arrays = {
                n: np.load(folder / f"{n}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                for n in _FILES
                if (folder / f"{n}.npy").exists()
            }
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder}: not a readable packed index ({e})") from None
        rec, idx = (Path(meta[k]) if meta.get(k) else None for k in ("rec", "idx"))
        return cls(Path(meta["root"]), meta["names"], report=meta.get("report"), rec=rec,
                   idx=idx, **arrays)  # fmt: skip


def shared_index(folder: str | Path, scan: Callable[[], object]) -> PackedIndex:
    """A packed index built once: rank 0 runs ``scan()`` (a scan of the data), packs and saves
    it into ``folder`` unless it is there; then every rank maps it."""
    folder = Path(folder)

    def build() -> None:
        if not (folder / "index.json").exists():
            PackedIndex.from_scan(scan()).save(folder)

    ranks.on_main(build)  # the others wait for it
    return PackedIndex.load(folder)


class _Split(torch.utils.data.Dataset):
    """Images ``rows`` of a packed index, each read and transformed: ``(image, label)``, the
    label the position of its identity in ``vocab``."""

    def __init__(self, index: PackedIndex, rows: np.ndarray, label_of_code: np.ndarray,
                 read: Callable, tfm, split_idx: int):  # fmt: skip
        self.index, self.rows, self.label_of_code = index, rows, label_of_code
        self.read, self.tfm, self.split_idx = read, tfm, split_idx

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        r = int(self.rows[i])
        x = self.tfm(self.read(self.index.item(r)), split_idx=self.split_idx)
        return x, TensorCategory(int(self.label_of_code[self.index.codes[r]]))


class StreamDL(EpochOrder, DataLoader):
    """A fastai ``DataLoader`` over one split of a :class:`PackedIndex`, in the order and with
    the per-item augmentation seeds of :class:`~fvloss.data.seeded.SeededDL`; ``shard`` as there."""

    def __init__(self, dataset: _Split, seed: int = 0, **kwargs):
        self._init_order(seed)
        super().__init__(dataset, **kwargs)

    def create_item(self, s):
        if self.dataset.split_idx == 0:  # training: the seed of (run, epoch, item)
            self.dataset.tfm.reseed(item_seed(self.seed, self.epoch, int(s)))
        return self.dataset[s]


def streamed_dls(
    index: PackedIndex,
    vocab: list[str],
    n_train_ids: int,
    read: Callable,
    tfm,
    bs: int = 64,
    seed: int = 0,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> DataLoaders:
    """Training and validation :class:`StreamDL` over ``index``: the first ``n_train_ids``
    identities of ``vocab`` train (labels ``0..n_train_ids-1``), the others are held out."""
    where = {n: k for k, n in enumerate(vocab)}
    label_of_code = np.array([where[n] for n in index.names], np.int64)
    labels = label_of_code[np.asarray(index.codes)]  # one int64 per image, only while splitting
    # the split's row numbers: what each rank holds per image (4 bytes; 8 past 2^31 images)
    rows_dtype = np.int32 if len(index) < 2**31 else np.int64
    train_rows = np.flatnonzero(labels < n_train_ids).astype(rows_dtype)
    valid_rows = np.flatnonzero(labels >= n_train_ids).astype(rows_dtype)
    del labels
    device = torch.device(device) if device is not None else default_device()
    kw = {
        "bs": bs,
        "num_workers": num_workers,
        "device": device,
        "pin_memory": device.type == "cuda",
    }
    train = StreamDL(_Split(index, train_rows, label_of_code, read, tfm, 0), seed=seed,
                     shuffle=True, drop_last=True, **kw)  # fmt: skip
    valid = StreamDL(_Split(index, valid_rows, label_of_code, read, tfm, 1), seed=seed,
                     shuffle=False, drop_last=False, **kw)  # fmt: skip
    dls = DataLoaders(train, valid, device=device)
    dls.vocab = list(vocab)
    return dls
