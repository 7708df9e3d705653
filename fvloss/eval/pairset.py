"""The one shape every verification protocol is read into: :class:`PairSet` (unique images,
pairs as index pairs, labels, folds when the protocol defines them), and the error a malformed
protocol raises (:class:`PairFileError`). The readers are in :mod:`.protocols` and :mod:`.bins`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..imageio import decode_rgb, read_rgb

__all__ = ["PairFileError", "PairSet"]


class PairFileError(ValueError):
    """A pair file is malformed or names an image that does not exist."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{path}, line {line}" if line else str(path)
        super().__init__(f"{where}: {reason}")


@dataclass
class PairSet:
    """Verification pairs over a list of unique images.

    ``index[k] = (a, b)`` says pair ``k`` compares ``paths[a]`` with ``paths[b]``; keeping the
    images unique lets an evaluation embed each image once however many pairs use it.
    ``folds`` holds a fold id per pair when the file defines folds (LFW View 2), else ``None``.
    ``images``, when set, holds each image's encoded bytes (or a decoded ``HxWx3`` RGB array)
    in memory, as an insightface ``.bin`` does; ``paths`` then only name them
    (``lfw.bin#17``). ``name`` labels the set in reports and output files (``pairsDevTest``,
    ``cfp-fp``, ``agedb_30``).
    """

    paths: list[Path]
    index: np.ndarray  # (P, 2) int64 into ``paths``
    same: np.ndarray  # (P,) bool
    folds: np.ndarray | None = None  # (P,) int64 fold ids, or None when the file has none
    lines: np.ndarray | None = None  # (P,) int64 line number of each pair in ``source``
    source: str = ""
    skipped: list[str] = field(default_factory=list)  # one message per dropped pair
    format: str = ""  # the protocol it was read with, when read from a file
    images: list | None = None  # in-memory encoded images (or RGB arrays), one per path
    name: str = ""  # short label for reports and output file names

    def __post_init__(self) -> None:
        if not self.name and self.source:
            self.name = Path(self.source).stem
        if self.images is not None and len(self.images) != len(self.paths):
            raise ValueError(f"{len(self.images)} images for {len(self.paths)} paths")
        self.index = np.asarray(self.index, dtype=np.int64).reshape(-1, 2)
        self.same = np.asarray(self.same, dtype=bool).reshape(-1)
        n = len(self.same)
        if len(self.index) != n:
            raise ValueError(f"index has {len(self.index)} pairs but same has {n}")
        if n and (self.index.min() < 0 or self.index.max() >= len(self.paths)):
            raise ValueError("pair index out of range of paths")
        if self.folds is not None:
            self.folds = np.asarray(self.folds, dtype=np.int64).reshape(-1)
            if len(self.folds) != n:
                raise ValueError(f"folds has {len(self.folds)} entries for {n} pairs")
        if self.lines is not None:
            self.lines = np.asarray(self.lines, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.same)

    @property
    def n_skipped(self) -> int:
        """Number of pairs the file named but this set does not hold."""
        return len(self.skipped)

    @property
    def n_same(self) -> int:
        return int(self.same.sum())

    @property
    def n_different(self) -> int:
        return len(self) - self.n_same

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as ``HxWx3`` uint8 RGB, from memory or from its file.

        Raises :class:`~fvloss.imageio.ImageReadError` naming the image when it cannot be read.
        """
        if self.images is None:
            return read_rgb(self.paths[i])
        img = self.images[i]
        if isinstance(img, np.ndarray) and img.ndim == 3:
            return img
        return decode_rgb(img, self.paths[i])

    def pair_paths(self, k: int) -> tuple[Path, Path]:
        """The two image paths of pair ``k``."""
        a, b = self.index[k]
        return self.paths[a], self.paths[b]

    def subset(self, keep: np.ndarray, reasons: Iterable[str] = ()) -> PairSet:
        """The pairs where ``keep`` is true; ``reasons`` (one per dropped pair) join ``skipped``.

        Images no kept pair uses are dropped from ``paths``.
        """
        keep = np.asarray(keep, dtype=bool)
        index = self.index[keep]
        used = np.unique(index)
        remap = np.full(len(self.paths), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return PairSet(
            paths=[self.paths[i] for i in used],
            index=remap[index],
            same=self.same[keep],
            folds=None if self.folds is None else self.folds[keep],
            lines=None if self.lines is None else self.lines[keep],
            source=self.source,
            skipped=[*self.skipped, *reasons],
            format=self.format,
            images=None if self.images is None else [self.images[i] for i in used],
            name=self.name,
        )

    @classmethod
    def from_pairs(
        cls,
        pairs: Iterable[tuple[str | Path, str | Path, bool]],
        folds: Sequence[int] | None = None,
        source: str = "",
    ) -> PairSet:
        """Build a set from ``(path1, path2, same)`` triples (no file, no existence check)."""
        builder = _Builder(source)
        for n, (p1, p2, same) in enumerate(pairs, start=1):
            builder.add(Path(p1), Path(p2), bool(same), line=n)
        return builder.build(folds=None if folds is None else np.asarray(folds))


class _Builder:
    """Collects pairs while de-duplicating image paths."""

    def __init__(self, source: str):
        self.source = source
        self.path_ids: dict[Path, int] = {}
        self.index: list[tuple[int, int]] = []
        self.same: list[bool] = []
        self.lines: list[int] = []
        self.positions: list[int] = []  # position of each kept pair among the file's pair lines
        self.skipped: list[str] = []

    def _id(self, path: Path) -> int:
        return self.path_ids.setdefault(path, len(self.path_ids))

    def add(self, p1: Path, p2: Path, same: bool, line: int, position: int = -1) -> None:
        self.index.append((self._id(p1), self._id(p2)))
        self.same.append(same)
        self.lines.append(line)
        self.positions.append(position)

    def build(self, folds: np.ndarray | None = None) -> PairSet:
        return PairSet(
            paths=list(self.path_ids),
            index=np.array(self.index, dtype=np.int64).reshape(-1, 2),
            same=np.array(self.same, dtype=bool),
            folds=folds,
            lines=np.array(self.lines, dtype=np.int64),
            source=self.source,
            skipped=list(self.skipped),
        )
