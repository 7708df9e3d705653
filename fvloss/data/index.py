"""What a scan of face data finds, whatever the source: the images and their identities
(:class:`IdentityIndex`), what was left out and why (:class:`DataReport`), and the split of
identities into training and held-out ones (:func:`split_identities`).

The bottom of the data package: the sources (:mod:`.folder`, :mod:`.recordio`, :mod:`.stream`)
build these; the loaders (:mod:`.loaders`) consume them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DataReport", "IdentityIndex", "split_identities"]


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
