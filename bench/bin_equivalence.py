"""A pair protocol and the insightface ``.bin`` packed from it score the same.

    python bench/bin_equivalence.py [--run RUN] [--pairs FILE] [--root DIR] [--protocol P]
                                    [--img-size 32] [--rounds 5] [--quick] [--save]

Packs ``--pairs`` (any protocol; default LFW View 1 ``pairsDevTest.txt`` from ``../shared``)
into a temporary ``.bin`` with ``fvloss.eval.bins.pack_bin``, then scores both with the same
model (``--run``, else an untrained seeded ResNet18 with a 16-d embedding at ``--img-size``
pixels), flip test-time augmentation on, and prints: accuracy (10-fold mean), its std, AUC and
EER from each, their differences (target <= 1e-9), the largest per-pair score difference, and
the time to read the pair file (parse and check the files; and with every image's bytes read,
which is what a ``.bin`` holds) vs loading the ``.bin``, interleaved over ``--rounds``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    emit,
    finish,
    interleave,
    machine_header,
    median,
    quiet_warnings,
    shared_dir,
    spread,
)

TARGET = 1e-9


def _model(args: argparse.Namespace):
    """``(embedder, description)``: the run's, or a tiny untrained deterministic model."""
    import torch

    from fvloss.data import EvalTransform
    from fvloss.eval.load import as_embedder
    from fvloss.model import EmbeddingNet

    if args.run:
        return as_embedder(args.run, device="cpu"), f"run {args.run}"
    torch.manual_seed(0)
    model = EmbeddingNet("resnet18", 16).eval()
    return (
        as_embedder(model, EvalTransform(args.img_size), device="cpu"),
        f"untrained ResNet18, 16-d, seed 0, {args.img_size} px",
    )


def _score(embedder, pairs):
    from fvloss.eval.metrics import verify_scores
    from fvloss.eval.score import score_pairs

    t0 = time.perf_counter()
    scores, kept = score_pairs(embedder, pairs, flip=True)
    result = verify_scores(scores, kept.same, kept.folds)
    return scores, result, time.perf_counter() - t0


def _read_with_bytes(args: argparse.Namespace) -> float:
    """Seconds to read the pair file and every image file's bytes (what a ``.bin`` holds)."""
    from fvloss.eval.protocols import read_pairs

    t0 = time.perf_counter()
    pairs = read_pairs(args.pairs, args.root, args.protocol, args.skip_missing)
    for p in pairs.paths:
        p.read_bytes()
    return time.perf_counter() - t0


def main() -> None:
    default = shared_dir() / "data" / "lfw-view1"
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, help="run folder (default: a tiny untrained model)")
    p.add_argument("--pairs", type=Path, default=default / "pairsDevTest.txt")
    p.add_argument("--root", type=Path, default=default / "images")
    p.add_argument("--protocol", default="auto", help="pair protocol (default: from the file)")
    p.add_argument("--skip-missing", action="store_true")
    p.add_argument("--img-size", type=int, default=32, help="input size of the untrained model")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds of the loads")
    p.add_argument("--quick", action="store_true", help="2 timing rounds")
    p.add_argument("--save", action="store_true", help="write into bench/results/cpu_<cpu>.md")
    args = p.parse_args()
    quiet_warnings()
    rounds = 2 if args.quick else args.rounds

    from fvloss.eval.bins import pack_bin, pack_order, read_bin_pairs
    from fvloss.eval.protocols import read_pairs

    t_start = time.time()
    out: list[str] = []
    embedder, what = _model(args)
    emit(out, "## .bin equivalence (bench/bin_equivalence.py)", "", machine_header(what), "")
    pairs = read_pairs(args.pairs, args.root, args.protocol, args.skip_missing)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bin_path = pack_bin(pairs, Path(tmp) / f"{pairs.name or 'pairs'}.bin")
        t_pack = time.perf_counter() - t0
        packed = read_bin_pairs(bin_path)
        size_mib = bin_path.stat().st_size / 2**20

        def read_file() -> None:
            read_pairs(args.pairs, args.root, args.protocol, args.skip_missing)

        def read_bin() -> None:
            read_bin_pairs(bin_path)

        times = interleave(
            {
                "pair file": read_file,
                "pair file + image bytes": lambda: _read_with_bytes(args),
                ".bin": read_bin,
            },
            rounds,
        )
    from fvloss.eval.score import score_pairs

    score_pairs(embedder, packed.subset(np.arange(len(packed)) < 50), flip=True)  # warm-up
    s_file, r_file, t_file = _score(embedder, pairs)
    s_bin, r_bin, t_bin = _score(embedder, packed)

    emit(
        out,
        f"{args.pairs} ({pairs.format}): {len(pairs)} pairs, {len(pairs.paths)} images, "
        f"folds {r_file.folds_from}; the .bin: {len(packed.paths)} distinct images, "
        f"{size_mib:.1f} MiB, folds: 10 consecutive blocks (KFold); flip on",
        "",
    )
    rows = [
        ("accuracy (10-fold mean)", r_file.acc_mean, r_bin.acc_mean),
        ("accuracy std", r_file.acc_std, r_bin.acc_std),
        ("AUC", r_file.auc, r_bin.auc),
        ("EER", r_file.eer, r_bin.eer),
    ]
    lines = ["| metric | pair file | .bin | abs. difference | <= 1e-9 |", "|---|---|---|---|---|"]
    for name, a, b in rows:
        d = abs(a - b)
        lines.append(f"| {name} | {a:.6f} | {b:.6f} | {d:.1e} | {'yes' if d <= TARGET else 'NO'} |")
    fold_d = float(np.max(np.abs(np.subtract(r_file.fold_acc, r_bin.fold_acc))))
    lines.append(
        f"| per-fold accuracy (max) | | | {fold_d:.1e} | {'yes' if fold_d <= TARGET else 'NO'} |"
    )
    score_d = float(np.max(np.abs(s_bin - s_file[pack_order(pairs)])))
    lines.append(f"| per-pair cosine score (max) | | | {score_d:.1e} | (float noise) |")
    emit(out, *lines, "")

    lines = ["| step | median s | spread (IQR) |", "|---|---|---|"]
    labels = {
        "pair file": "read the pair file (parse, check the images exist)",
        "pair file + image bytes": "read the pair file + every image's bytes",
        ".bin": "load the .bin (read_bin_pairs: unpickle, check, de-duplicate)",
    }
    for key, label in labels.items():
        lines.append(f"| {label} | {median(times[key]):.4f} | {spread(times[key])} |")
    lines += [
        f"| pack the .bin (once) | {t_pack:.4f} | |",
        f"| score from the pair file: decode, embed, metrics (once) | {t_file:.2f} | |",
        f"| score from the .bin (once) | {t_bin:.2f} | |",
    ]  # scored once each, after a warm-up pass over 50 pairs
    emit(out, *lines, "", f"load timings: {rounds} rounds, interleaved, after 1 warm-up round")
    finish(out, t_start, args.save, "bin_equivalence")


if __name__ == "__main__":
    main()
