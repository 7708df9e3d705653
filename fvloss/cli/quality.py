"""``fvloss quality MODEL [MODEL ...] --pairs P --root R``: does the embedding norm track quality?

For each model (run folder or ONNX file): the error-versus-reject curve on the pairs (FNMR at
the threshold fixed at ``--fmr``, as the lowest-quality pairs are rejected; a pair's quality is
the lower of its two images' norms, or of their scores in ``--quality-file``) and, with
``--degrade N``, the norm's response to blur, downscaling, noise and occlusion at known
strengths on N of the pairs' images (Spearman's correlation with the strength: clearly
negative if the norm tracks quality). One table, ``OUT/quality.json`` and ``OUT/quality.png``
with every model's curves overlaid. Exit status: 0, 2 for bad input, 1 for an unreadable image.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..eval.fairness import verification_by_group
from ..eval.metrics import roc_auc
from ..eval.plots import plot_reject
from ..eval.protocols import PairFileError, read_pairs
from ..eval.quality import (
    DEFAULT_REJECT,
    DEGRADATIONS,
    degrade,
    norm_response,
    reject_curve_verification,
)
from ..eval.score import _embed, _PathLoader, embed_arrays
from ..imageio import ImageReadError, read_rgb
from ..jsonio import atomic_write
from .parser import Parser, fail
from .verify import add_model_options, add_pair_options, default_out_dir, load_embedder

__all__ = ["main"]

PROG = "fvloss quality"


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Error-vs-reject curves (embedding norm or a quality file as the quality) "
        "and the norm's response to controlled degradation, for one or more models.",
        examples=[
            "fvloss quality runs/celeba64-arcface runs/celeba64-adaface --pairs "
            "../shared/data/lfw-view1/pairsDevTest.txt --root data/lfw-view1-aligned --degrade 200",
        ],
    )
    p.add_argument(
        "models", type=Path, nargs="+", metavar="MODEL", help="run folders or .onnx files"
    )
    p.add_argument(
        "--pairs", type=Path, required=True, help="pair file, or a CFP folder with --protocol"
    )
    add_pair_options(p)
    p.add_argument("--fmr", type=float, default=1e-2, help="false-match rate fixing the threshold")
    p.add_argument(
        "--quality-file", type=Path, help="path,score CSV: quality per image instead of the norm"
    )
    p.add_argument("--degrade", type=int, default=0, metavar="N", help="norm response on N images")
    p.add_argument("--kinds", nargs="+", choices=sorted(DEGRADATIONS), default=list(DEGRADATIONS))
    p.add_argument(
        "--levels",
        choices=sorted(DEGRADATIONS),
        help="verification per degradation level of this kind (the second image of "
        "each pair degraded): AUC per level, the gap and its interval",
    )
    p.add_argument("--seed", type=int, default=0, help="which images --degrade takes")
    p.add_argument("--out", type=Path, default=Path("quality"), help="output folder")
    add_model_options(p)
    return p  # fmt: skip


def _quality_file(path: Path, paths: list[Path], root: Path | None) -> np.ndarray:
    """One score per image from ``path,score`` rows (paths relative to ``root`` or as listed)."""
    table: dict[str, float] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or (n == 1 and row[-1].strip().lower() in ("score", "quality")):
                continue
            try:
                table[row[0].strip()] = float(row[1])
            except (ValueError, IndexError):
                raise ValueError(f"{path}:{n}: expected 'path,score', got {row}") from None
    out = []
    for p in paths:
        key = (
            p.relative_to(root).as_posix()
            if root is not None and p.is_relative_to(root)
            else str(p)
        )
        if key not in table:
            raise ValueError(f"{path}: no score for {key}")
        out.append(table[key])
    return np.asarray(out)


def _one(model: Path, pairs, args) -> dict:
    embedder = load_embedder(model, args)
    raw, _ = _embed(
        embedder, _PathLoader(pairs.paths), [str(p) for p in pairs.paths], args.batch_size,
        args.flip, args.num_workers,
    )  # fmt: skip
    norms = np.linalg.norm(raw, axis=1)
    emb = raw / np.maximum(norms, 1e-12)[:, None]
    a, b = pairs.index[:, 0], pairs.index[:, 1]
    scores = np.einsum("ij,ij->i", emb[a], emb[b])
    q = _quality_file(args.quality_file, pairs.paths, args.root) if args.quality_file else norms
    curve = reject_curve_verification(scores, pairs.same, np.minimum(q[a], q[b]), args.fmr)
    doc = {
        "model": str(model),
        "quality": "file" if args.quality_file else "norm",
        "auc": roc_auc(scores, pairs.same),
        "norm_mean": float(norms.mean()),
        "norm_cv": float(norms.std() / norms.mean()),
        "reject": vars(curve),
        "reject_area": curve.area(),
    }
    if args.levels:
        doc["levels"] = vars(_by_level(embedder, pairs, emb, args))
    if args.degrade:
        rng = np.random.default_rng(args.seed)
        pick = rng.permutation(len(pairs.paths))[: args.degrade]
        images = [read_rgb(pairs.paths[i]) for i in sorted(pick)]
        embed = lambda xs: embed_arrays(embedder, xs, batch_size=args.batch_size)  # noqa: E731
        doc["degradation"] = [vars(r) for r in norm_response(embed, images, args.kinds)]
    return doc


def _by_level(embedder, pairs, emb: np.ndarray, args):
    """Every pair scored with its second image degraded at each level of ``args.levels``:
    the levels are the groups (built in, no attribute file)."""
    a, b = pairs.index[:, 0], pairs.index[:, 1]
    second = sorted(set(b.tolist()))
    pos = {j: k for k, j in enumerate(second)}
    images = [read_rgb(pairs.paths[j]) for j in second]
    scores, groups = [], []
    for level in DEGRADATIONS[args.levels][1]:
        e = embed_arrays(
            embedder, [degrade(x, args.levels, level) for x in images], batch_size=args.batch_size
        )
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        scores.append(np.einsum("ij,ij->i", emb[a], e[[pos[j] for j in b]]))
        groups += [f"{args.levels} {level:g}"] * len(b)
    same = np.tile(pairs.same, len(scores))
    return verification_by_group(np.concatenate(scores), same, groups, groups, far=args.fmr)


def _levels_text(g: dict) -> str:
    rows = [
        f"  {k:<16} AUC {v:.4f}  FNMR {g['extra']['fnmr'][k]:.4f}" for k, v in g["values"].items()
    ]
    lo, hi = g["gap_ci"]
    return "\n".join(rows + [f"  gap {g['gap']:.4f} [{lo:.4f}, {hi:.4f}] 95% bootstrap"])


def _table(docs: list[dict], rejected: list[float]) -> str:
    shares = [r for r in (0.0, 0.1, 0.3) if r in rejected]
    head = f"{'model':<28} {'AUC':>6} " + " ".join(f"{f'rej {int(100 * r)}%':>8}" for r in shares)
    kinds = [d["kind"] for d in docs[0].get("degradation", [])]
    head += f" {'area':>7}" + "".join(f" {f'rho {k}':>14}" for k in kinds)
    rows = [head]
    for d in docs:
        err = dict(zip(d["reject"]["rejected"], d["reject"]["error"]))
        row = f"{Path(d['model']).name[:28]:<28} {d['auc']:6.4f} " + " ".join(
            f"{err[r]:8.4f}" for r in shares
        )
        row += f" {d['reject_area']:7.4f}" + "".join(
            f" {r['spearman']:14.3f}" for r in d.get("degradation", [])
        )
        rows.append(row)
    return "\n".join(rows)


def _figure(docs: list[dict], path: Path) -> None:
    kinds = [r["kind"] for r in docs[0].get("degradation", [])]
    fig = Figure(figsize=(4.5 * (1 + len(kinds)), 3.6))
    axes = fig.subplots(1, 1 + len(kinds), squeeze=False)
    curves = {Path(d["model"]).name: (d["reject"]["rejected"], d["reject"]["error"]) for d in docs}
    plot_reject(axes[0, 0], curves, docs[0]["reject"]["what"])
    for k, kind in enumerate(kinds, 1):
        for d in docs:
            r = d["degradation"][k - 1]
            axes[0, k].plot(
                r["strengths"], r["relative_norm"], marker="o", label=Path(d["model"]).name
            )
        axes[0, k].set(xlabel=f"{kind} strength", ylabel="norm / clean norm", title=kind)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """``fvloss quality``: 0 on success, 2 for bad input, 1 for an unreadable image."""
    args = _parser().parse_args(argv)
    try:
        pairs = read_pairs(args.pairs, args.root, args.format, args.skip_missing)
        docs = [_one(m, pairs, args) for m in args.models]
    except ImageReadError as e:
        return fail(PROG, str(e), 1)
    except (PairFileError, ValueError, OSError) as e:
        return fail(PROG, str(e), 2)
    print(
        f"{pairs.name}: {len(pairs)} pairs; quality = {docs[0]['quality']}; {docs[0]['reject']['what']}"
    )
    print(_table(docs, list(DEFAULT_REJECT)))
    for d in docs:
        if "levels" in d:
            print(f"\n{Path(d['model']).name}, by {args.levels} level (the second image degraded):")
            print(_levels_text(d["levels"]))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(
        args.out / "quality.json", json.dumps({"pairs": pairs.name, "models": docs}, indent=1)
    )
    _figure(docs, args.out / "quality.png")
    for model, d in zip(args.models, docs):  # beside the run's scores: compare overlays them
        if model.is_dir():
            out = default_out_dir(model)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / f"{pairs.name}.quality.json",
                         json.dumps({"pairs": pairs.name, "n_pairs": len(pairs), **d}, indent=1))  # fmt: skip
    print(f"wrote {args.out / 'quality.json'} and {args.out / 'quality.png'}")
    return 0
