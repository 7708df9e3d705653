"""``fvloss align SRC DST``: the command-line front end of :func:`fvloss.align.align_folder`."""

from __future__ import annotations

import argparse
import os
import sys

from ..align.detectors import DEFAULT_MIN_SCORE, DETECTORS, DetectorUnavailable
from ..align.folder import FALLBACKS, PREVIEW_NAME, REPORT_NAME, align_folder
from .parser import Parser


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        examples=["fvloss align ../shared/data/lfw-view1 data/lfw-view1-aligned"],
        prog="fvloss align",
        description=(
            "Detect the main face in every image under SRC, warp it onto the ArcFace 5-point "
            "template and write it to DST under the same relative path. Images without a face "
            f"and unreadable files are listed in DST/{REPORT_NAME}; existing outputs are skipped."
        ),
    )
    p.add_argument(
        "src", metavar="SRC", help="folder of images (identity folders, LFW layout or flat)"
    )
    p.add_argument("dst", metavar="DST", help="output folder (created; same layout as SRC)")
    p.add_argument("--size", type=int, default=112, help="output crop size in px (default 112)")
    p.add_argument(
        "--detector",
        choices=DETECTORS,
        default=None,
        help="face detector (default: yunet if --model is given, else yuface)",
    )
    p.add_argument("--model", metavar="PATH", help="YuNet ONNX model file for --detector yunet")
    p.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="worker processes (default: number of CPUs, at most 8)",
    )
    p.add_argument(
        "--fallback",
        choices=FALLBACKS,
        default="none",
        help="what to write when no face is found: nothing (default) or a centre crop",
    )
    p.add_argument(
        "--preview", type=int, default=0, metavar="N", help=f"write DST/{PREVIEW_NAME} with N crops"
    )
    p.add_argument(
        "--min-score",
        type=float,
        default=DEFAULT_MIN_SCORE,
        help=f"detector confidence threshold (default {DEFAULT_MIN_SCORE})",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=640,
        help="larger images are shrunk to this longest side for detection (default 640)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``fvloss align``; returns the exit status (0 also when some images had no face)."""
    args = _parser().parse_args(argv)
    try:
        report = align_folder(
            args.src,
            args.dst,
            size=args.size,
            detector=args.detector,
            model=args.model,
            workers=args.workers,
            fallback=args.fallback,
            preview=args.preview,
            min_score=args.min_score,
            max_side=args.max_side,
            progress=not args.quiet,
        )
    except (DetectorUnavailable, FileNotFoundError, ValueError) as e:
        print(f"fvloss align: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"fvloss align: interrupted; partial report in {args.dst}/{REPORT_NAME}",
            file=sys.stderr,
        )
        return 130
    c = report["counts"]
    print(
        f"{c['images']} images: {c['aligned']} aligned, {c['skipped']} already done, "
        f"{c['center_crop']} centre crops, {c['no_face']} without a face, "
        f"{c['unreadable']} unreadable, {c['error']} errors "
        f"({report['seconds']:.1f} s, {report['images_per_second'] or 0:.1f} img/s)"
    )
    print(
        f"report: {args.dst}/{REPORT_NAME}"
        + (f", preview: {args.dst}/{PREVIEW_NAME}" if args.preview else "")
    )
    if not c["images"]:
        print(f"fvloss align: warning: no images found under {args.src}", file=sys.stderr)
    return 0
