"""Memory of the data index per million images: the default path's Python objects against
``fvloss.data.stream``'s packed arrays.

    python bench/data_index.py [--quick] [--images 1000000] [--per-identity 40] [--save]

The index of ``--images`` made-up image paths in VGGFace2's layout (``n000123/0001_01.jpg``,
``--per-identity`` images per identity; no files are read: the scan's cost is not measured
here) held four ways, each measured with ``tracemalloc`` (every Python and numpy allocation):

1. the scan's result, ``list[Path]`` + ``list[str]`` (``IdentityIndex``), the baseline;
2. that plus fastai's ``Datasets`` over it, as ``face_dls``'s per-image path builds them (the
   items, the split's index lists);
3. the packed index in memory (``PackedIndex.from_scan``);
4. the packed index loaded from its ``.npy`` files with ``mmap_mode="r"`` (what each rank
   holds under ``--stream``: the arrays are pages of the OS's file cache, shared by the ranks
   of a machine, read when touched).

Per-million figures are the measured bytes scaled by ``1e6 / --images``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import tracemalloc
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, finish, machine_header, md_table, quiet_warnings  # noqa: E402

quiet_warnings()

from fvloss.data import DataReport, IdentityIndex  # noqa: E402
from fvloss.data.stream import PackedIndex  # noqa: E402

MiB = 2**20


def made_up_index(n: int, per_id: int, root: Path) -> IdentityIndex:
    items, labels = [], []
    for i in range(n):
        name = f"n{i // per_id:06d}"
        items.append(root / name / f"{i % per_id:04d}_01.jpg")
        labels.append(name)
    report = DataReport(root=str(root), n_images=n, n_identities=-(-n // per_id))
    return IdentityIndex(items, labels, report)


def traced(fn):
    """``(result, bytes allocated and still held by it, seconds)``."""
    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, held, dt


def fastai_datasets(index: IdentityIndex):
    """The per-image path's ``Datasets`` (face_dls: read, label, identity split)."""
    from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
    from fastai.data.transforms import IndexSplitter

    from fvloss.data.index import split_identities
    from fvloss.data.loaders import _label_of

    train_ids, valid_ids = split_identities(sorted(set(index.labels)), 0.1, 42)
    valid = set(valid_ids)
    valid_idx = [i for i, lab in enumerate(index.labels) if lab in valid]
    block = DataBlock(
        blocks=(TransformBlock(), CategoryBlock(vocab=train_ids + valid_ids, sort=False)),
        get_y=partial(_label_of, root=Path(index.report.root)),
        splitter=IndexSplitter(valid_idx),
    )
    return block.datasets(index.items)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 images")
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--per-identity", type=int, default=40)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.images = 100_000
    t_start = time.time()
    n, root = args.images, Path("/data/vggface2/train")
    out = ["## Data index memory per million images (`bench/data_index.py`)", "",
           machine_header(f"{n:,} made-up paths, {args.per_identity} per identity"), ""]  # fmt: skip
    print("\n".join(out), flush=True)
    scale = 1e6 / n
    rows = []
    index, base, dt = traced(lambda: made_up_index(n, args.per_identity, root))
    rows.append(["scan result: list[Path] + list[str] (baseline)", base, dt])
    (_, held, dt) = traced(lambda: fastai_datasets(index))
    rows.append(["+ fastai Datasets over it (per-image path)", base + held, dt])
    packed, held, dt = traced(lambda: PackedIndex.from_scan(index))
    rows.append(["packed index, in memory (arrays)", held, dt])
    with tempfile.TemporaryDirectory() as tmp:
        packed.save(tmp)
        on_disk = sum(f.stat().st_size for f in Path(tmp).iterdir())
        index = packed = None  # freed before the mapped one is measured
        mapped, held, dt = traced(lambda: PackedIndex.load(tmp))
        rows.append([f"packed index, mapped from its files ({on_disk / MiB:.1f} MiB on disk)",
                     held, dt])  # fmt: skip
        assert len(mapped) == n
        del mapped
    tab = md_table(
        ["index", "Python/numpy bytes held", "per million images", "vs baseline", "build s"],
        [[name, f"{b / MiB:.1f} MiB", f"{b * scale / MiB:.1f} MiB", f"{b / base:.3f}", f"{t:.2f}"]
         for name, b, t in rows],
    )  # fmt: skip
    emit(out, tab, "")
    finish(out, t_start, args.save, "data_index")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
