"""RecordIO (``fvloss pack`` -> ``train.rec``) against the same faces as an image folder.

    python bench/recordio_speed.py [--data FOLDER] [--quick] [--rounds N] [--save]

The folder (``--data``: an aligned identity folder such as ``data/celeba-wild-aligned``; else
the embedded synthetic set) is packed into a temporary ``train.rec`` first (time reported).

1. **Random access, decoding excluded**, one process: records/s of
   ``IndexedRecordReader.read`` + ``unpack_image`` for keys in a random order, against reading
   the same images as individual files (``Path.read_bytes``) in the same order. Target:
   >= 20,000 records/s for the ``.rec``.
2. **Training-style pass**: ``face_dls(...).train`` over the ``.rec`` and over the folder, the
   same pipeline (decode + Albumentations augment), image size and batch size, with 0 and 1
   DataLoader workers; a fresh iterator per block (so worker start-up counts, as at each
   epoch), ``--batches`` batches per block (0: the whole epoch). Target: ``.rec`` at least as
   fast as the folder.

Variants alternate A B, B A (``bench._common.interleave``), medians over ``--rounds`` after a
warm-up round; after the warm-up both sources sit in the page cache (a cold disk favours the
one big file more than this shows).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    emit,
    finish,
    interleave,
    machine_header,
    md_table,
    median,
    quiet_warnings,
    spread,
)

quiet_warnings()
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from fvloss.data import face_dls, scan_identities  # noqa: E402
from fvloss.data.recordio import IndexedRecordReader, pack_folder, unpack_image  # noqa: E402
from fvloss.data.synthetic import SyntheticSpec, make_synthetic  # noqa: E402


# -- 1. random access ---------------------------------------------------------------------------
def random_access(
    rec: Path, files: list[Path], n_reads: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per record of each reader, per round (interleaved), on the same random order.

    Key ``i + 1`` of a pack holds ``files[i]`` (scan order), so both read the same images."""
    rng = random.Random(0)
    order = [rng.randrange(len(files)) for _ in range(n_reads)]
    reader = IndexedRecordReader(rec)

    def rec_reads() -> float:
        t = time.perf_counter()
        for i in order:
            unpack_image(reader.read(i + 1))
        return (time.perf_counter() - t) / len(order)

    def file_reads() -> float:
        t = time.perf_counter()
        for i in order:
            files[i].read_bytes()
        return (time.perf_counter() - t) / len(order)

    fns = {".rec: IndexedRecordReader.read + unpack_image": rec_reads,
           "folder: Path.read_bytes per file": file_reads}  # fmt: skip
    return interleave(fns, rounds=rounds, warmup=1)


# -- 2. training-style pass ---------------------------------------------------------------------
def loader_pass(
    rec: Path, folder: Path, size: int, bs: int, workers: list[int], batches: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Images/s of iterating each DataLoader (fresh iterator per block); also images per block."""
    fns, n_images = {}, {}
    for w in workers:
        for name, root in ((".rec", rec), ("folder", folder)):
            dl = face_dls(root, img_size=size, bs=bs, num_workers=w, check="none").train
            n = (batches or len(dl)) * bs
            key = f"{name}, {w} worker{'s' if w != 1 else ''}"
            fns[key], n_images[key] = (lambda dl=dl, n=n: _pass(dl, n)), n
    return interleave(fns, rounds=rounds, warmup=1), n_images


def _pass(dl, n_images: int) -> float:
    """Seconds to draw ``n_images`` from a fresh iterator of ``dl``, per image."""
    t, seen = time.perf_counter(), 0
    for xb, _ in dl:
        seen += len(xb)
        if seen >= n_images:
            break
    return (time.perf_counter() - t) / seen


# -- report -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="aligned identity folder (default: synthetic set)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reads", type=int, default=20000, help="random reads per block in part 1")
    ap.add_argument("--img-size", type=int, default=64, help="training size in part 2")
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--batches", type=int, default=0, help="batches per block in part 2 (0: epoch)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.reads, args.batches, args.bs = 2, 500, 2, min(args.bs, 8)
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data
        if folder is None:
            spec = SyntheticSpec(12, 4, 64, 0) if args.quick else SyntheticSpec()
            folder = make_synthetic(spec, None if not args.quick else Path(tmp) / "syn", quiet=True)
        return run(args, folder, Path(tmp), t_start)


def run(args, folder: Path, tmp: Path, t_start: float) -> int:
    out = ["## RecordIO vs image folder (`bench/recordio_speed.py`)", "", machine_header(), ""]
    print("\n".join(out), flush=True)
    t = time.perf_counter()
    packed = pack_folder(folder, tmp / "rec", check="none")
    pack_s = time.perf_counter() - t
    files = scan_identities(folder, check="none").items
    rec_mib = packed.n_bytes / 2**20
    folder_mib = sum(f.stat().st_size for f in files) / 2**20
    emit(out, f"data: {folder.name}: {packed.n_images} images of {packed.n_identities} identities, "
              f"{packed.height}x{packed.width}; files {folder_mib:.1f} MiB, train.rec {rec_mib:.1f} MiB, "
              f"packed (original bytes) in {pack_s:.1f} s", "")  # fmt: skip

    res = random_access(packed.rec, files, args.reads, args.rounds)
    rates = {name: [1 / s for s in v] for name, v in res.items()}
    base = median(rates["folder: Path.read_bytes per file"])
    rows = [[name, f"{median(r):.0f}", spread(r), f"{1e6 / median(r):.1f}", f"{median(r) / base:.2f}"]
            for name, r in rates.items()]  # fmt: skip
    rec_rate = median(rates[".rec: IndexedRecordReader.read + unpack_image"])
    note = (f"{args.reads} random reads per block, {args.rounds} rounds after a warm-up (median), one "
            f"process. Target >= 20,000 records/s: {'met' if rec_rate >= 20000 else 'NOT met'} "
            f"({rec_rate:.0f}/s).")  # fmt: skip
    tab = md_table(["reader", "records/s (median)", "IQR", "us/record", "speed vs folder"], rows)
    emit(out, "### 1. Random access, decoding excluded", "", note, "", tab, "")

    res, n_images = loader_pass(packed.rec, folder, args.img_size, args.bs, args.workers,
                                args.batches, args.rounds)  # fmt: skip
    rows, verdict = [], []
    for w in args.workers:
        suffix = f"{w} worker{'s' if w != 1 else ''}"
        r, f = ([1 / s for s in res[f"{name}, {suffix}"]] for name in (".rec", "folder"))
        for name, v in ((".rec", r), ("folder", f)):
            rows.append([name, w, f"{median(v):.0f}", spread(v),
                         f"{n_images[f'{name}, {suffix}'] / median(v):.2f}",
                         f"{median(v) / median(f):.2f}"])  # fmt: skip
        verdict.append(f"{suffix}: {'met' if median(r) >= median(f) else 'NOT met'}")
    per = f"{args.batches} batches" if args.batches else "one epoch"
    note = (f"face_dls(...).train, {args.img_size} px, bs {args.bs}, check='none'; {per} per block from a "
            f"fresh iterator (worker start-up included), {args.rounds} rounds after a warm-up (median). "
            f"Target .rec >= folder: {'; '.join(verdict)}.")  # fmt: skip
    tab = md_table(
        ["source", "workers", "img/s (median)", "IQR", "s/block", "speed vs folder"], rows
    )
    emit(out, "### 2. Training-style DataLoader pass (decode + augment)", "", note, "", tab, "")
    finish(out, t_start, args.save, "recordio_speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
