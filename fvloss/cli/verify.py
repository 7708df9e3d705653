"""``fvloss verify``: score a run (or an ONNX model) on pair protocols, ``.bin`` sets and IJB.

One model, any number of protocols; each one's full result goes to ``OUT/<name>.json``, its ROC
to ``<name>.png`` and its per-pair scores to ``<name>.scores.npz`` (which ``fvloss compare``
reuses). With one protocol the detailed table is printed; with several, also one row per model
like a paper's table (10-fold accuracy per set).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..eval.fairness import image_groups, read_attributes, verification_by_group
from ..eval.ijb import evaluate_ijb, format_ijb, read_ijb
from ..eval.load import as_embedder
from ..eval.metrics import VerificationResult, format_result, verify_scores
from ..eval.plots import training_figure
from ..eval.protocols import PairFileError, PairSet, protocol_names, read_pairs
from ..eval.report import RunMetrics, write_outputs
from ..eval.score import embed_arrays, score_pairs
from ..imageio import ImageReadError
from ..jsonio import write_json
from .parser import Parser, fail

__all__ = [
    "add_model_options",
    "add_pair_options",
    "default_out_dir",
    "load_embedder",
    "main",
    "paper_table",
    "protocol_meta",
    "score_protocol",
]

PROG = "fvloss verify"


def add_pair_options(p: argparse.ArgumentParser) -> None:
    """The options every command that scores a pair protocol shares (``verify``, ``compare``)."""
    p.add_argument(
        "--root", type=Path, help="image folder (default: the pair file's folder; CFP: Data/Images)"
    )
    p.add_argument(
        "--protocol",
        "--format",
        dest="format",
        default="auto",
        choices=protocol_names(),
        help="pair protocol (--format is its old name; default: from the file)",
    )
    p.add_argument("--flip", action="store_true", help="add the mirror image's embedding")
    p.add_argument(
        "--folds", type=int, default=10, help="folds when the protocol defines none (default 10)"
    )
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="drop (and count) pairs with a missing/unreadable image or a malformed line",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    """How an ONNX model's input is prepared (a run folder knows its own preprocessing)."""
    g = p.add_argument_group(
        "ONNX model input (default: the file's fvloss metadata, else insightface's convention: "
        "RGB, 112x112, (x - 127.5) / 127.5)"
    )
    g.add_argument("--input-size", type=int, help="square input size in pixels")
    g.add_argument("--channels", choices=("rgb", "bgr"), help="channel order the model expects")
    g.add_argument("--mean", type=float, help="subtracted after scaling pixels to [0, 1]")
    g.add_argument("--std", type=float, help="divided by after subtracting the mean")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=0, help="image decoding processes")


def load_embedder(model: Path, args: argparse.Namespace):
    """An :class:`~fvloss.eval.embedder.Embedder` for a run folder or an ``.onnx`` file."""
    options = {
        k: v
        for k, v in {
            "size": args.input_size,
            "channels": args.channels,
            "mean": args.mean,
            "std": args.std,
        }.items()
        if v is not None
    }
    if model.suffix.lower() != ".onnx" and options:
        raise ValueError("--input-size/--channels/--mean/--std apply to ONNX models only")
    return as_embedder(model, device=args.device, **options)


def score_protocol(embedder, pairs: PairSet, args: argparse.Namespace, flip: bool):
    """``(result, scores, kept, seconds)`` of one protocol."""
    t0 = time.perf_counter()
    scores, kept = score_pairs(
        embedder,
        pairs,
        batch_size=args.batch_size,
        flip=flip,
        num_workers=args.num_workers,
        skip_missing=args.skip_missing,
    )
    bad = int((~np.isfinite(scores)).sum())
    if bad:  # say so rather than score them: a diverged model, not a verification result
        raise ValueError(
            f"{embedder.name} on {pairs.name}: {bad} of {len(scores)} pair scores are not finite "
            "(the model gives NaN or infinite embeddings: a diverged run?)"
        )
    result = verify_scores(scores, kept.same, kept.folds, args.folds, skipped=kept.skipped)
    return result, scores, kept, time.perf_counter() - t0


def protocol_meta(
    model: Path, pairs: PairSet, args: argparse.Namespace, flip: bool, seconds: float
) -> dict:
    """What a verify output records of how it was made (its JSON's and score file's ``meta``)."""
    return {
        "model": str(model),
        "pairs": pairs.source,
        "root": str(args.root or Path(pairs.source).parent) if pairs.images is None else None,
        "format": pairs.format,
        "protocol": pairs.format,
        "flip": flip,
        "seconds": round(seconds, 3),
    }


def paper_table(label: str, results: dict[str, VerificationResult]) -> str:
    """One Markdown row per model, a column per set: 10-fold accuracy (%) mean ± std, AUC."""
    head = "| model | " + " | ".join(results) + " |"
    rule = "|:--|" + "--:|" * len(results)
    cells = [
        f"{100 * r.acc_mean:.2f} ± {100 * r.acc_std:.2f} (AUC {r.auc:.4f})"
        for r in results.values()
    ]
    return "\n".join([head, rule, f"| {label} | " + " | ".join(cells) + " |"])


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="fvloss verify",
        description="Score a run's embedder (or an ONNX model) on face-verification protocols: "
        "a pair file or CFP folder (--pairs), insightface .bin sets (--bin), IJB-B/C (--ijb). "
        "Writes OUT/<protocol>.json, .png (ROC) and .scores.npz (per-pair scores, which "
        "fvloss compare reuses) and prints the results.",
        epilog="examples:\n"
        "  fvloss verify --run runs/arcface --pairs ../shared/data/lfw-view1/pairsDevTest.txt "
        "--root data/lfw-view1-aligned\n"
        "  fvloss verify --run runs/arcface --pairs ../shared/data/cfp --protocol cfp-fp "
        "--root data/cfp-aligned\n"
        "  fvloss verify --model model.onnx --bin lfw.bin cfp_fp.bin agedb_30.bin",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--run", type=Path, help="run folder (trained weights)")
    who.add_argument("--model", type=Path, help="run folder or .onnx model")
    p.add_argument("--pairs", type=Path, help="pair file, or a CFP folder with --protocol")
    add_pair_options(p)
    p.add_argument(
        "--bin",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="insightface .bin sets (scored with insightface's protocol: flip-sum, 10 folds)",
    )
    p.add_argument("--ijb", type=Path, help="IJB-B or IJB-C folder (meta/ and loose_crop/)")
    p.add_argument(
        "--groups", type=Path,
        help="key,group CSV (image path or identity): AUC per group, FNMR / FMR at one "
        "threshold, the worst-best gap with a bootstrap interval (OUT/<protocol>.groups.json)",
    )  # fmt: skip
    p.add_argument("--group-far", type=float, default=1e-2, help="FAR of that one threshold")
    p.add_argument("--out", type=Path, help="output folder (default: RUN/verify)")
    add_model_options(p)
    return p


def default_out_dir(model: Path) -> Path:
    """Where a model's verify outputs go: ``RUN/verify``, or ``<model>-verify/`` beside an
    ``.onnx`` file."""
    return model / "verify" if model.is_dir() else model.with_name(model.stem + "-verify")


def main(argv: list[str] | None = None) -> int:
    """``fvloss verify``: returns 0 on success, 2 for bad input, 1 for unreadable images."""
    args = _parser().parse_args(argv)
    model: Path = args.run or args.model
    if not (args.pairs or args.bin or args.ijb):
        return fail(PROG, "nothing to score: give --pairs, --bin or --ijb", 2)
    if not model.exists():
        return fail(PROG, f"{'run folder' if args.run else 'model'} not found: {model}", 2)
    if args.run is not None and not model.is_dir():
        return fail(PROG, f"run folder not found: {model} (an .onnx model goes with --model)", 2)
    protocols: list[tuple[PairSet, bool]] = []
    try:
        if args.pairs is not None:
            protocols.append(
                (read_pairs(args.pairs, args.root, args.format, args.skip_missing), args.flip)
            )
        for b in args.bin:
            protocols.append((read_pairs(b, format="bin"), True))  # insightface: flip-sum
        embedder = load_embedder(model, args)
    except (PairFileError, ValueError, OSError) as e:
        return fail(PROG, str(e), 2)
    out = args.out or default_out_dir(model)
    label = model.name if model.is_dir() else model.stem
    results: dict[str, VerificationResult] = {}
    for pairs, flip in protocols:
        try:
            result, scores, kept, seconds = score_protocol(embedder, pairs, args, flip)
        except ImageReadError as e:
            return fail(PROG, f"{e} (use --skip-missing to drop such pairs)", 1)
        except ValueError as e:
            return fail(PROG, str(e), 1)
        meta = protocol_meta(model, pairs, args, flip, seconds)
        if args.run is not None:
            meta["run"] = str(model)
        json_path, png_path = write_outputs(result, out, pairs.name, meta, label, scores, kept)
        results[pairs.name] = result
        print(format_result(result, title=f"{label} on {pairs.name} ({pairs.format})"))
        for message in result.skipped[:5]:
            print(f"  skipped: {message}")
        if result.n_skipped > 5:
            print(f"  ... and {result.n_skipped - 5} more (all listed in the JSON up to 100)")
        print(f"wrote {json_path}, {png_path} and {pairs.name}.scores.npz ({seconds:.1f} s)\n")
        if args.groups is not None and (code := _groups(args, kept, scores, out)):
            return code
    if args.ijb is not None:
        code = _ijb(embedder, args, out, label)
        if code:
            return code
    if len(results) > 1:
        print(paper_table(label, results))
    if args.run is not None:
        _training_figure(model, out)
    return 0


def _groups(args: argparse.Namespace, kept: PairSet, scores: np.ndarray, out: Path) -> int:
    """Verification per group of ``--groups``; writes ``OUT/<protocol>.groups.json``."""
    try:
        groups = image_groups(kept.paths, read_attributes(args.groups), args.root)
        gap = verification_by_group(
            scores, kept.same, [groups[i] for i in kept.index[:, 0]],
            [groups[i] for i in kept.index[:, 1]], far=args.group_far,
        )  # fmt: skip
    except (ValueError, OSError) as e:
        return fail(PROG, str(e), 2)
    print(gap.format() + "\n")
    write_json(out / f"{kept.name}.groups.json", vars(gap))
    return 0


def _training_figure(run: Path, out: Path) -> None:
    """``OUT/training.png``: how the run trained (loss and verification metrics per epoch, from
    its ``metrics.json``), beside what it scores now; nothing when the run has no history."""
    try:
        metrics = RunMetrics.read(run)
    except ValueError as e:  # a damaged metrics.json costs the figure only, not the scores
        print(f"  no training.png: {e}")
        return
    if metrics is not None and metrics.history:
        training_figure(metrics.history).savefig(out / "training.png")
        print(f"wrote {out / 'training.png'} (training curves from {run / 'metrics.json'})")


def _ijb(embedder, args: argparse.Namespace, out: Path, label: str) -> int:
    """Score IJB-B/C 1:1 verification; writes ``OUT/<IJBB|IJBC>.json``."""
    try:
        ijb = read_ijb(args.ijb, skip_missing=args.skip_missing)
    except (ValueError, OSError) as e:
        return fail(PROG, str(e), 2)
    t0 = time.perf_counter()
    try:
        result = evaluate_ijb(
            ijb,
            lambda imgs: embed_arrays(embedder, imgs, batch_size=args.batch_size),
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
    except ImageReadError as e:
        return fail(PROG, f"{e} (use --skip-missing to drop such images)", 1)
    seconds = time.perf_counter() - t0
    doc = {"meta": {"model": label, "ijb": str(args.ijb), "seconds": round(seconds, 1)}}
    write_json(out / f"{ijb.name}.json", {**doc, **result.to_dict()})
    print(format_ijb(result, label=label))
    print(f"wrote {out / f'{ijb.name}.json'} ({seconds:.1f} s)")
    return 0
