"""Identification sets: which images are the gallery, which the probes, and who each one is.

:data:`SOURCES` names each reader; every one yields an :class:`IdentificationSet`:

* ``folder``: an identity folder (``root/<identity>/...``): ``gallery_per_id`` images of each
  identity, drawn with ``seed``, are its gallery and the rest its probes; ``unenrolled`` (a
  share of the identities, drawn with ``seed``) leaves identities out of the gallery, so all
  their images are non-mated probes (open set);
* ``cfp``: CFP (Sengupta et al., WACV 2016): each identity's frontal photos are the gallery,
  its profile photos the probes (the hard cross-pose case); ``unenrolled`` as above;
* ``csv``: rows ``path,identity,role`` with role ``gallery``, ``probe`` or ``distractor``
  (an optional header row; paths relative to ``root`` or absolute).

IJB-B/C 1:N (the official gallery G1/G2 and probe template lists) is read by
:mod:`fvloss.eval.ijb`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..imageio import image_files
from .protocols import cfp_image_list

__all__ = ["IdentificationSet", "SOURCES", "from_cfp", "from_csv", "from_folder"]

ROLES = ("gallery", "probe", "distractor")


@dataclass
class IdentificationSet:
    """Image paths and identities by role; ``notes`` say what was left out and why."""

    name: str
    gallery: list[Path] = field(default_factory=list)
    gallery_labels: list[str] = field(default_factory=list)
    probes: list[Path] = field(default_factory=list)
    probe_labels: list[str] = field(default_factory=list)
    distractors: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def open_set(self) -> bool:
        """Some probes' identities have no gallery entry."""
        return bool(set(self.probe_labels) - set(self.gallery_labels))

    def summary(self) -> str:
        enrolled = set(self.gallery_labels)
        mated = sum(label in enrolled for label in self.probe_labels)
        text = (
            f"{self.name}: gallery {len(self.gallery)} images of {len(enrolled)} identities; "
            f"{len(self.probes)} probes ({mated} mated, {len(self.probes) - mated} non-mated)"
        )
        if self.distractors:
            text += f"; {len(self.distractors)} distractors"
        return "\n".join([text, *(f"  {n}" for n in self.notes)])


def _check_share(unenrolled: float) -> None:
    if not 0 <= unenrolled < 1:
        raise ValueError(f"unenrolled is a share of the identities in [0, 1), got {unenrolled}")


def _left_out(ids: list[str], unenrolled: float, rng: np.random.Generator) -> set[str]:
    n = round(unenrolled * len(ids))
    return {ids[i] for i in rng.permutation(len(ids))[:n]}


def from_folder(
    root: str | Path, gallery_per_id: int = 1, unenrolled: float = 0.0, seed: int = 0
) -> IdentificationSet:
    """Gallery and probes from an identity folder (see the module docstring)."""
    root = Path(root)
    if gallery_per_id < 1:
        raise ValueError(f"gallery_per_id must be at least 1, got {gallery_per_id}")
    _check_share(unenrolled)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: identity folder not found")
    by_id = {d.name: image_files(d) for d in sorted(root.iterdir()) if d.is_dir()}
    by_id = {k: v for k, v in by_id.items() if v}
    if not by_id:
        raise ValueError(
            f"{root}: no identity folders with images (expected root/<identity>/*.jpg)"
        )
    rng = np.random.default_rng(seed)
    out_ids = _left_out(list(by_id), unenrolled, rng)
    s = IdentificationSet(f"{root.name} (gallery {gallery_per_id}/identity, seed {seed})")
    only_gallery = 0
    for ident, paths in by_id.items():
        if ident in out_ids:
            s.probes += paths
            s.probe_labels += [ident] * len(paths)
            continue
        order = rng.permutation(len(paths))
        gal, probe = order[:gallery_per_id], order[gallery_per_id:]
        s.gallery += [paths[i] for i in sorted(gal)]
        s.gallery_labels += [ident] * len(gal)
        s.probes += [paths[i] for i in sorted(probe)]
        s.probe_labels += [ident] * len(probe)
        only_gallery += len(probe) == 0
    if only_gallery:
        s.notes.append(
            f"{only_gallery} identities with <= {gallery_per_id} images: enrolled, no probes"
        )
    if out_ids:
        s.notes.append(f"{len(out_ids)} identities not enrolled (seed {seed}): non-mated probes")
    return s


def from_cfp(
    cfp: str | Path,
    root: str | Path | None = None,
    unenrolled: float = 0.0,
    seed: int = 0,
    gallery_per_id: int | None = None,
) -> IdentificationSet:
    """CFP's frontal photos as the gallery, its profile photos as probes.

    ``cfp`` is the CFP folder (``Protocol/``, ``Data/``); ``root`` replaces ``Data/Images``
    (an aligned copy). ``gallery_per_id``: enrol that many frontal photos of each identity
    (drawn with ``seed``) and probe with the rest too, so frontal and profile probes can be
    compared (:func:`fvloss.eval.fairness.cfp_pose`). A listed image that is missing is an error.
    """
    cfp = Path(cfp)
    _check_share(unenrolled)
    proto = cfp if (cfp / "Pair_list_F.txt").is_file() else cfp / "Protocol"
    if not (proto / "Pair_list_F.txt").is_file():
        raise FileNotFoundError(f"{cfp}: not a CFP folder (no Protocol/Pair_list_F.txt)")
    images = Path(root) if root is not None else proto.parent / "Data" / "Images"
    lists = {k: sorted(cfp_image_list(proto / f"Pair_list_{k}.txt").values()) for k in "FP"}
    ids = sorted({rel.split("/")[0] for rel in lists["F"]})
    rng = np.random.default_rng(seed)
    out_ids = _left_out(ids, unenrolled, rng)
    drawn = f" (seed {seed})" if out_ids or gallery_per_id else ""
    s = IdentificationSet(f"cfp frontal -> {'frontal + ' if gallery_per_id else ''}profile{drawn}")
    frontal: dict[str, list[str]] = {}
    for rel in lists["F"]:
        frontal.setdefault(rel.split("/")[0], []).append(rel)
    for ident, rels in frontal.items():
        enrol = rels if ident not in out_ids else []
        if gallery_per_id is not None and enrol:
            pick = set(rng.permutation(len(rels))[:gallery_per_id].tolist())
            enrol = [r for i, r in enumerate(rels) if i in pick]
        s.gallery += [images / r for r in enrol]
        s.gallery_labels += [ident] * len(enrol)
        if gallery_per_id is not None or ident in out_ids:
            rest = [r for r in rels if r not in enrol] if gallery_per_id is not None else []
            s.probes += [images / r for r in rest]
            s.probe_labels += [ident] * len(rest)
    for rel in lists["P"]:
        s.probes.append(images / rel)
        s.probe_labels.append(rel.split("/")[0])
    missing = [p for p in s.gallery + s.probes if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]}: listed by {proto} but not found ({len(missing)} missing)"
        )
    if out_ids:
        s.notes.append(f"{len(out_ids)} identities not enrolled (seed {seed}): non-mated probes")
    return s


def from_csv(path: str | Path, root: str | Path | None = None) -> IdentificationSet:
    """Rows ``path,identity,role`` (see the module docstring); a bad row names its line."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    s = IdentificationSet(path.stem)
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or row[0].startswith("#"):
                continue
            if n == 1 and [c.strip().lower() for c in row] == ["path", "identity", "role"]:
                continue
            if len(row) != 3 or row[2].strip() not in ROLES:
                raise ValueError(
                    f"{path}:{n}: expected 'path,identity,role' with role in {ROLES}, got {row}"
                )
            p, ident, role = (c.strip() for c in row)
            image = Path(p) if Path(p).is_absolute() else base / p
            if not image.is_file():
                raise FileNotFoundError(f"{path}:{n}: image not found: {image}")
            if role == "gallery":
                s.gallery.append(image)
                s.gallery_labels.append(ident)
            elif role == "probe":
                s.probes.append(image)
                s.probe_labels.append(ident)
            else:
                s.distractors.append(image)
    if not s.gallery or not s.probes:
        raise ValueError(
            f"{path}: needs gallery and probe rows (has {len(s.gallery)} and {len(s.probes)})"
        )
    return s


SOURCES: dict[str, Callable[..., IdentificationSet]] = {
    "folder": from_folder,
    "cfp": from_cfp,
    "csv": from_csv,
}
