"""``fvloss synthetic [DST]``: the embedded synthetic data set written to a folder
(:mod:`fvloss.data.synthetic`)."""

from __future__ import annotations

from ..data.synthetic import SyntheticSpec, make_synthetic
from .parser import Parser

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``fvloss synthetic DST``: write the synthetic set to DST."""
    ap = Parser(
        examples=[
            "fvloss synthetic data/synthetic",
            "fvloss synthetic data/synth-big --identities 200 --images 20",
        ],
        prog="fvloss synthetic",
        description="Write the embedded synthetic data set (procedural faces, generated from a seed) to a folder.",
    )
    ap.add_argument("dst", nargs="?", help="output folder (default: the cache folder)")
    ap.add_argument("--identities", type=int, default=SyntheticSpec.n_identities)
    ap.add_argument("--images", type=int, default=SyntheticSpec.images_per_identity)
    ap.add_argument("--size", type=int, default=SyntheticSpec.size)
    ap.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    a = ap.parse_args(argv)
    make_synthetic(SyntheticSpec(a.identities, a.images, a.size, a.seed), a.dst)
    return 0
