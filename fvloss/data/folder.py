"""The folder source: ``root/<identity>/**/<image>`` scanned into an :class:`~.index.IdentityIndex`."""

from __future__ import annotations

from pathlib import Path

from ..imageio import IMAGE_EXTENSIONS, ImageReadError, check_image, read_rgb
from .index import DataReport, IdentityIndex

__all__ = ["scan_identities"]


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
