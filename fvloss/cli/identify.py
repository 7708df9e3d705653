"""``fvloss identify``: 1:N identification of a run or an ONNX model on a gallery and probes.

Closed set (rank-1/5/10, the CMC), open set where some probes are not enrolled (TPIR at
FPIR), and with ``--distractors`` MegaFace-style scaling: rank-1 as 10, 100, ... distractors
join the gallery, with the search time a query. Sources: an identity folder (``--data``), CFP
(``--cfp``: frontal gallery, profile probes) or a CSV (``--csv``: path,identity,role).
Exit status: 0, 2 for bad input, 1 for an unreadable image (``--skip-bad`` counts and skips).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..eval.fairness import cfp_pose, identification_by_group, image_groups, read_attributes
from ..eval.identify import (
    DEFAULT_FPIRS,
    distractor_scaling,
    format_identification,
    identify,
    probe_key,
)
from ..eval.idsets import IdentificationSet, from_cfp, from_csv, from_folder
from ..eval.ijb import embed_ijb, read_ijb
from ..eval.ijb_1n import GALLERIES, evaluate_ijb_1n, read_1n_lists
from ..eval.score import _embed, _PathLoader, embed_arrays
from ..eval.search import INDEXES
from ..eval.store import open_store
from ..imageio import ImageReadError, image_files
from ..jsonio import write_json
from .parser import Parser, fail
from .verify import add_model_options, default_out_dir, load_embedder

__all__ = ["main"]

PROG = "fvloss identify"


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="1:N identification: closed-set rank-k / CMC, open-set TPIR@FPIR and "
        "distractor scaling, searched with FAISS.",
        examples=[
            "fvloss identify --run runs/celeba64-arcface --data data/lfw-view1-aligned --gallery-per-id 1",
            "fvloss identify --model model.onnx --cfp ../shared/data/cfp --root data/cfp-aligned --unenrolled 0.5",
            "fvloss identify --run RUN --data data/lfw-view1-aligned --distractors emb/celeba --sizes 10 100 1000",
        ],
    )  # fmt: skip
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--run", type=Path, help="run folder")
    who.add_argument("--model", type=Path, help="run folder or .onnx model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="identity folder: root/<identity>/*.jpg")
    src.add_argument("--cfp", type=Path, help="CFP folder (Protocol/, Data/): frontal -> profile")
    src.add_argument("--csv", type=Path, help="rows path,identity,role (gallery|probe|distractor)")
    src.add_argument("--ijb", type=Path, help="IJB-B/C folder: the 1:N gallery and probe lists")
    p.add_argument(
        "--ijb-gallery",
        choices=GALLERIES,
        default="G1",
        help="--ijb: one gallery (open set, NIST) or both (closed set, insightface)",
    )
    p.add_argument("--skip-missing", action="store_true", help="--ijb: drop missing images")
    p.add_argument("--root", type=Path, help="images root for --cfp (aligned copy) or --csv")
    p.add_argument(
        "--gallery-per-id",
        type=int,
        help="gallery images per identity (--data: default 1; --cfp: frontal ones, default all)",
    )
    p.add_argument("--groups",
                   help="rank-1 per group of probes: a key,group CSV (image path or identity) "
                   "or cfp-pose (frontal / profile probes)")  # fmt: skip
    p.add_argument(
        "--unenrolled",
        type=float,
        default=0.0,
        help="share of identities left out of the gallery (open set; --data, --cfp)",
    )
    p.add_argument("--seed", type=int, default=0, help="the draw of gallery images / identities")
    p.add_argument(
        "--distractors",
        type=Path,
        help="embedding store or .npz from `fvloss embed` (same model!), or an image folder",
    )
    p.add_argument(
        "--sizes", type=int, nargs="+", help="distractor counts (default 0, 10, 100, ... and all)"
    )
    p.add_argument("--index", choices=sorted(INDEXES), default="flat", help="search index")
    p.add_argument("--max-rank", type=int, default=10)
    p.add_argument("--fpir", type=float, nargs="+", default=list(DEFAULT_FPIRS))
    p.add_argument("--flip", action="store_true", help="add the mirror image's embedding")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images")
    p.add_argument("--out", type=Path, help="where identify.json goes (default: RUN/verify)")
    add_model_options(p)
    return p  # fmt: skip


def _source(args: argparse.Namespace) -> IdentificationSet:
    if args.data is not None:
        return from_folder(args.data, args.gallery_per_id or 1, args.unenrolled, args.seed)
    if args.cfp is not None:
        return from_cfp(args.cfp, args.root, args.unenrolled, args.seed, args.gallery_per_id)
    return from_csv(args.csv, args.root)


def _embed_paths(embedder, paths: list[Path], args) -> tuple[np.ndarray, dict[int, str]]:
    emb, failed = _embed(
        embedder, _PathLoader(paths), [str(p) for p in paths], args.batch_size, args.flip,
        args.num_workers, skip_errors=args.skip_bad,
    )  # fmt: skip
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12), failed


def _kept(paths: list[Path], labels: list[str], failed: dict[int, str], offset: int):
    keep = [i for i in range(len(paths)) if i + offset not in failed]
    return np.array(keep, dtype=np.int64), [labels[i] for i in keep]


def _distractors(args, embedder, s: IdentificationSet):
    """The distractor embeddings: a store (memory-mapped), an image folder, or the CSV's rows."""
    if args.distractors is None:
        if not s.distractors:
            return None
        emb, failed = _embed_paths(embedder, s.distractors, args)
        return emb[[i for i in range(len(emb)) if i not in failed]]
    if args.distractors.is_dir() and not (args.distractors / "embeddings.npy").is_file():
        emb, failed = _embed_paths(embedder, image_files(args.distractors), args)
        return emb[[i for i in range(len(emb)) if i not in failed]]
    store = open_store(args.distractors)
    embedded_by = store.meta.get("model")
    if (
        embedded_by is not None
        and Path(embedded_by).resolve() != Path(args.run or args.model).resolve()
    ):
        print(f"note: {args.distractors} was embedded by {store.meta['model']}, not this model")
    return store.embeddings


def _by_group(args, s: IdentificationSet, probe_paths: list[Path], res):
    """Rank-1 per group of the mated probes (``--groups``), or None."""
    if args.groups is None:
        return None
    if args.groups == "cfp-pose":
        groups = cfp_pose(probe_paths)
    else:
        root = args.data or args.root
        groups = image_groups(probe_paths, read_attributes(args.groups), root)
    mated = res.probes.mated
    return identification_by_group(res.probes.rank[mated], [g for g, m in zip(groups, mated) if m])


def _write(args, doc: dict) -> None:
    """``OUT/identify.json`` (default: ``RUN/verify``, or ``<model>-verify/`` beside an ONNX
    file, where ``fvloss compare`` finds it for its rank-1 and TPIR columns)."""
    out = args.out or default_out_dir(args.run or args.model)
    write_json(out / "identify.json", doc)
    print(f"wrote {out / 'identify.json'}")


def _ijb(args, embedder) -> int:
    """IJB-B/C 1:N: templates pooled as for 1:1, then searched (see fvloss.eval.ijb_1n)."""
    try:
        ijb = read_ijb(args.ijb, skip_missing=args.skip_missing, pairs=False)
        lists = read_1n_lists(ijb.root, ijb.name)
    except (ValueError, OSError) as e:
        return fail(PROG, str(e), 2)
    t0 = time.perf_counter()
    try:
        emb = embed_ijb(
            ijb, lambda imgs: embed_arrays(embedder, imgs, batch_size=args.batch_size),
            batch_size=args.batch_size, num_workers=args.num_workers,
        )  # fmt: skip
        res, counts = evaluate_ijb_1n(
            ijb, lists, emb, args.ijb_gallery, max_rank=args.max_rank, fpirs=args.fpir,
            index=args.index,
        )  # fmt: skip
    except ImageReadError as e:
        return fail(PROG, f"{e} (use --skip-missing to drop such images)", 1)
    except (ValueError, ImportError) as e:
        return fail(PROG, str(e), 2)
    print(
        f"{ijb.name} 1:N, gallery {args.ijb_gallery}: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    print(format_identification(res, embedder.name))
    doc = {"model": str(args.run or args.model), "set": f"{ijb.name} 1:N {args.ijb_gallery}"}
    _write(
        args,
        {**doc, "counts": counts, "seconds": round(time.perf_counter() - t0, 2), **res.to_json()},
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``fvloss identify``: 0 on success, 2 for bad input, 1 for an unreadable image."""
    args = _parser().parse_args(argv)
    try:
        embedder = load_embedder(args.run or args.model, args)
        if args.ijb is not None:
            return _ijb(args, embedder)
        s = _source(args)
    except (ValueError, OSError) as e:
        return fail(PROG, str(e), 2)
    print(s.summary())
    t0 = time.perf_counter()
    try:
        emb, failed = _embed_paths(embedder, s.gallery + s.probes, args)
        distractors = _distractors(args, embedder, s)
    except ImageReadError as e:
        return fail(PROG, f"{e} (use --skip-bad to skip such images)", 1)
    except (ValueError, OSError) as e:
        return fail(PROG, str(e), 2)
    if failed:
        print(f"skipped {len(failed)} unreadable images, e.g. {next(iter(failed.values()))}")
    g_rows, g_labels = _kept(s.gallery, s.gallery_labels, failed, 0)
    p_rows, p_labels = _kept(s.probes, s.probe_labels, failed, len(s.gallery))
    gallery, probes = emb[g_rows], emb[len(s.gallery) + p_rows]
    seconds = time.perf_counter() - t0
    try:
        res = identify(
            gallery, g_labels, probes, p_labels, open_set=s.open_set,
            max_rank=args.max_rank, fpirs=args.fpir, index=args.index,
        )  # fmt: skip
        res.probe_key = probe_key([s.probes[i] for i in p_rows], p_labels)
        points = []
        if distractors is not None:
            n = len(distractors)
            sizes = args.sizes or [0, *(10**k for k in range(1, 7) if 10**k < n), n]
            mated = np.isin(p_labels, g_labels)
            points = distractor_scaling(
                gallery, g_labels, probes[mated], np.asarray(p_labels)[mated], distractors,
                sizes, max_rank=args.max_rank, index=args.index,
            )  # fmt: skip
        by_group = _by_group(args, s, [s.probes[i] for i in p_rows], res)
    except (ValueError, ImportError, RuntimeError, OSError) as e:
        return fail(PROG, str(e), 2)
    print(format_identification(res, embedder.name))
    if by_group is not None:
        print(by_group.format())
    if points:
        print(f"{'distractors':>12} {'rank-1':>8} {'rank-5':>8} {'ms/query':>9}")
        for pt in points:
            r5 = f"{100 * pt.rank(5):7.2f}%" if args.max_rank >= 5 else "      -"
            print(f"{pt.distractors:>12} {100 * pt.rank(1):7.2f}% {r5} {pt.ms_per_query:9.3f}")
    doc = {
        "model": str(args.run or args.model),
        "set": s.name,
        "notes": s.notes,
        "index": args.index,
        "embed_seconds": round(seconds, 2),
        "skipped": [f"{k}: {v}" for k, v in sorted(failed.items())],
        **res.to_json(),
        "scaling": [vars(p) for p in points],
        "groups": None if by_group is None else vars(by_group),
    }
    _write(args, doc)
    return 0
