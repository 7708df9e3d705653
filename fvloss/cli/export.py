"""``fvloss export RUN --onnx OUT.onnx [--opset N] [--no-check]``: a run's embedder as ONNX,
checked against PyTorch before it replaces anything (:mod:`fvloss.export`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..export import INPUT_NAME, OUTPUT_NAME, TOLERANCE, check_onnx, export_onnx
from ..runs import load_run
from .parser import Parser, fail

__all__ = ["main"]

PROG = "fvloss export"


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        examples=[
            "fvloss export runs/celeba64-arcface --onnx arcface.onnx",
            "fvloss export runs/celeba64-arcface --onnx arcface.onnx --opset 17",
        ],
        prog="fvloss export",
        description="Export a run's embedder to ONNX (preprocessing stored in the file's "
        "metadata) and check it against PyTorch.",
    )
    p.add_argument("run", type=Path, help="run folder (config.json + model.pth)")
    p.add_argument("--onnx", type=Path, required=True, metavar="OUT.onnx", help="file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    return p


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """``fvloss export RUN --onnx OUT.onnx [--opset N] [--no-check]``.

    Exit status 0 when written (and the check passed), 1 when the check failed (``OUT`` is
    then left as it was), 2 on bad input (one line on stderr; ``FVLOSS_DEBUG=1`` re-raises).
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed its usage line and error
        return int(e.code or 0)
    out: Path = args.onnx
    if out.suffix.lower() != ".onnx":
        return fail(PROG, f"{out}: the output file must end in .onnx")
    if out.is_dir():
        return fail(PROG, f"{out}: is a folder")
    try:
        if not args.run.is_dir():
            raise FileNotFoundError(f"{args.run}: no such run folder")
        run = load_run(args.run, device="cpu")
    except Exception as e:  # a missing / foreign folder, missing or unreadable weights
        if os.environ.get("FVLOSS_DEBUG"):
            raise
        if isinstance(e, FileNotFoundError):
            return fail(PROG, _first_line(e))
        return fail(PROG, f"{args.run}: cannot load the run ({type(e).__name__}: {_first_line(e)})")
    # write beside OUT first: a file that fails the check never replaces a good one
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.onnx")
    try:
        export_onnx(run, tmp, opset=args.opset)
        report = None if args.no_check else check_onnx(run, tmp)
        if report is not None and not report["ok"]:
            print(_describe(report), file=sys.stderr)
            print(
                f"fvloss export: ONNX and PyTorch disagree: max |diff| of L2-normalised "
                f"embeddings {report['max_abs_diff_l2']:.2e} > {TOLERANCE:g}; {out} not written "
                "(--no-check writes it anyway)",
                file=sys.stderr,
            )
            return 1
        os.replace(tmp, out)
    except (OSError, ValueError, ImportError) as e:
        if os.environ.get("FVLOSS_DEBUG"):
            raise
        return fail(PROG, _first_line(e))
    finally:
        if tmp.exists():
            tmp.unlink()
    cfg = run.config
    size = cfg["img_size"]
    print(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, opset {args.opset}): "
        f"{cfg.get('arch')} embedder, {INPUT_NAME} (B, 3, {size}, {size}) -> {OUTPUT_NAME} "
        f"(B, {cfg.get('emb_dim')}), dynamic batch; preprocessing in the metadata "
        f"(mean {cfg.get('mean')}, std {cfg.get('std')}, rgb)"
    )
    if report is not None:
        print(_describe(report))
    return 0


def _describe(r: dict[str, Any]) -> str:
    sizes = ", ".join(map(str, r["batch_sizes"]))
    verdict = "ok" if r["ok"] else "FAILED"
    return (
        f"check: onnxruntime vs PyTorch on {r['n']} random images (batches of {sizes}): "
        f"max |diff| {r['max_abs_diff']:.2e} raw (embeddings up to {r['max_abs']:.2f}), "
        f"{r['max_abs_diff_l2']:.2e} L2-normalised (<= {r['tolerance']:g}): {verdict}"
    )
