"""``fvloss embed --model RUN|model.onnx FOLDER --out OUT``: embeddings of every image.

``OUT`` ending in ``.npz``: one file holding ``paths`` (relative to FOLDER, sorted),
``embeddings`` (float32, L2-normalised, one row per path), ``skipped`` (paths that could not be
read, with ``--skip-bad``) and ``meta`` (JSON text: model, preprocessing, flip). Read it with
``np.load(FILE)`` (no pickle needed). Any other ``OUT`` is an embedding store folder
(:mod:`fvloss.eval.store`): the rows go to a memory-mapped ``.npy`` batch by batch, with each
embedding's norm kept (image quality), for galleries and distractor sets of any size.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from ..eval.score import _embed, _PathLoader
from ..eval.store import write_store
from ..imageio import IMAGE_EXTENSIONS, ImageReadError, image_files
from ..jsonio import atomic_write
from .parser import Parser, fail
from .verify import add_model_options, load_embedder

__all__ = ["main"]

PROG = "fvloss embed"


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="fvloss embed",
        description="Embed every image under FOLDER with a run's embedder or an ONNX model; "
        "writes paths + L2-normalised embeddings to one .npz file, or to an embedding store "
        "folder (memory-mapped, with each embedding's norm) for any other OUT.",
        examples=[
            "fvloss embed --model runs/celeba64-arcface data/lfw-view1-aligned --out lfw.npz --flip",
            "fvloss embed --model runs/celeba64-arcface data/celeba-wild-aligned --out emb/celeba",
        ],
    )
    p.add_argument("folder", type=Path, metavar="FOLDER", help="images (aligned faces)")
    p.add_argument("--model", required=True, type=Path, help="run folder or .onnx model")
    p.add_argument("--out", required=True, type=Path, help="output .npz file or store folder")
    p.add_argument("--flip", action="store_true", help="add the mirror image's embedding")
    p.add_argument("--skip-bad", action="store_true", help="skip (and list) unreadable images")
    add_model_options(p)
    return p


def _write_npz(out: Path, rel: list[str], emb: np.ndarray, failed: dict[int, str], meta: dict):
    keep = np.array([i not in failed for i in range(len(rel))], dtype=bool)
    emb = emb[keep]
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    buf = io.BytesIO()
    np.savez(
        buf,
        paths=np.array([r for r, k in zip(rel, keep) if k]),
        embeddings=emb.astype(np.float32),
        skipped=np.array([f"{rel[i]}: {why}" for i, why in sorted(failed.items())], dtype=str),
        meta=np.array(json.dumps({**meta, "normalised": True})),
    )
    atomic_write(out, buf.getvalue())
    return len(emb), emb.shape[1]


def main(argv: list[str] | None = None) -> int:
    """``fvloss embed``: 0 on success, 2 for bad input, 1 for an unreadable image."""
    args = _parser().parse_args(argv)
    if not args.folder.is_dir():
        return fail(PROG, f"image folder not found: {args.folder}", 2)
    paths = image_files(args.folder)
    if not paths:
        return fail(PROG, f"{args.folder}: no images ({', '.join(IMAGE_EXTENSIONS)})", 2)
    try:
        embedder = load_embedder(args.model, args)
    except (ValueError, OSError) as e:
        return fail(PROG, str(e), 2)
    rel = [str(p.relative_to(args.folder)) for p in paths]
    meta = {
        "model": str(args.model),
        "folder": str(args.folder),
        "flip": args.flip,
        "transform": repr(embedder.transform),
    }
    t0 = time.perf_counter()

    def fill(out: np.ndarray | None):
        emb, failed = _embed(
            embedder, _PathLoader(paths), [str(p) for p in paths], args.batch_size, args.flip,
            args.num_workers, skip_errors=args.skip_bad, out=out,
        )  # fmt: skip
        meta["seconds"] = round(time.perf_counter() - t0, 2)
        return emb, failed

    try:
        if args.out.suffix == ".npz":
            emb, failed = fill(None)
            n, dim = _write_npz(args.out, rel, emb, failed, meta)
        else:
            store = write_store(args.out, rel, lambda rows: fill(rows)[1], embedder.width(), meta)
            n, dim, failed = len(store), store.dim, store.skipped
    except ImageReadError as e:
        return fail(PROG, f"{e} (use --skip-bad to skip such images)", 1)
    except FileExistsError as e:
        return fail(PROG, str(e), 2)
    print(
        f"embedded {n} images ({dim}-d) from {args.folder} in {meta['seconds']:.1f} s"
        + (f"; skipped {len(failed)} unreadable" if failed else "")
        + f"; wrote {args.out}"
    )
    return 0
