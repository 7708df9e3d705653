"""``fvloss pack-bin PAIRS OUT.bin``: a pair protocol as an insightface ``.bin``
(:func:`fvloss.eval.bins.pack_bin`)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from ..eval.bins import BinFoldWarning, describe_folds, pack_bin
from ..eval.protocols import PairFileError, protocol_names, read_pairs
from .parser import Parser, fail

__all__ = ["main"]

PROG = "fvloss pack-bin"


class _Parser(Parser):
    def error(self, message: str):  # one line, not usage + error
        print(f"{self.prog}: {message}{self._suggestion(message)} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """``fvloss pack-bin PAIRS ROOT OUT.bin [--protocol P] [--skip-missing] [--folds N]``."""
    ap = _Parser(
        examples=[
            "fvloss pack-bin ../shared/data/cfp ../shared/data/cfp/Data/Images cfp_fp.bin "
            "--protocol cfp-fp"
        ],
        prog="fvloss pack-bin",
        description="Write a pair protocol as an insightface .bin (original image bytes; pairs "
        "grouped by fold so that insightface's 10 consecutive folds are the protocol's).",
    )
    ap.add_argument("pairs", type=Path, help="pair file (any protocol) or CFP folder")
    ap.add_argument("root", type=Path, help="image folder (CFP: Data/Images)")
    ap.add_argument("out", type=Path, help="the .bin to write")
    ap.add_argument(
        "--protocol", "--format", dest="format", default="auto", choices=protocol_names()
    )
    ap.add_argument("--skip-missing", action="store_true", help="drop pairs with missing images")
    ap.add_argument("--folds", type=int, default=10, help="folds of the .bin (default 10)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.folds < 2:
        return fail(PROG, f"--folds must be >= 2, got {args.folds}")
    try:
        pairs = read_pairs(args.pairs, args.root, args.format, args.skip_missing)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BinFoldWarning)
            out = pack_bin(pairs, args.out, args.folds)
    except (PairFileError, ValueError, OSError) as e:  # BinFileError, ImageReadError among them
        return fail(PROG, str(e))
    for w in caught:
        print(f"fvloss pack-bin: warning: {w.message}", file=sys.stderr)
    skipped = f", {pairs.n_skipped} skipped" if pairs.n_skipped else ""
    print(
        f"packed {len(pairs)} pairs ({pairs.n_same} same, {pairs.n_different} different"
        f"{skipped}; {len(pairs.paths)} distinct images) from {args.pairs} ({pairs.format}) "
        f"into {out} ({out.stat().st_size / 2**20:.1f} MiB); folds: {describe_folds(pairs)}, "
        f"as {args.folds} consecutive blocks"
    )
    return 0
