"""``fvloss pack FOLDER OUT_DIR``: an identity folder as an insightface RecordIO set
(:func:`fvloss.data.recordio.pack_folder`)."""

from __future__ import annotations

from pathlib import Path

from ..data.recordio import pack_folder
from .parser import Parser, fail

__all__ = ["main"]

PROG = "fvloss pack"


def main(argv: list[str] | None = None) -> int:
    """``fvloss pack FOLDER OUT_DIR [--quality Q] [--reencode] [--check MODE]``."""
    ap = Parser(
        examples=[
            "fvloss pack data/celeba-wild-aligned data/celeba-rec",
            "fvloss pack data/celeba-wild-aligned data/celeba-rec --reencode --quality 90",
        ],
        prog="fvloss pack",
        description="Write an identity folder (FOLDER/<identity>/<image>) as an insightface "
        "RecordIO set: OUT_DIR/train.rec, train.idx, property, identities.txt.",
    )
    ap.add_argument("folder", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument(
        "--reencode",
        action="store_true",
        help="store JPEGs re-encoded at --quality instead of each file's own bytes",
    )
    ap.add_argument("--quality", type=int, help="JPEG quality with --reencode (default 95)")
    ap.add_argument(
        "--check",
        choices=["none", "quick", "full"],
        default="quick",
        help="vet the images first, as training does (default quick); a bad one stops the pack",
    )
    args = ap.parse_args(argv)
    if args.quality is not None and not args.reencode:
        return fail(PROG, "--quality needs --reencode (without it the original bytes are stored)")
    quality = (args.quality if args.quality is not None else 95) if args.reencode else None
    if quality is not None and not 1 <= quality <= 100:
        return fail(PROG, f"--quality must be 1..100, got {quality}")
    try:
        r = pack_folder(args.folder, args.out_dir, quality, args.check)
    except (ValueError, OSError) as e:  # bad input (ImageReadError is an OSError), full disk
        return fail(PROG, str(e))
    stored = f"re-encoded as JPEG q{quality}" if quality else "original bytes"
    print(
        f"packed {r.n_images} images of {r.n_identities} identities ({r.height}x{r.width}, "
        f"{stored}) into {r.rec} ({r.n_bytes / 2**20:.1f} MiB); labels 0..{r.n_identities - 1} "
        f"are the lines of {r.rec.parent / 'identities.txt'}"
    )
    return 0
