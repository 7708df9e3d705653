"""Gallery search speed: FAISS exact vs a numpy matmul, and the approximate indexes' recall.

    python bench/faiss_search.py [--sizes 10000 100000 1000000] [--dim 512] [--queries 1000]
                                 [--approx ivf hnsw] [--hnsw-max 100000] [--save]

For each gallery size, one run builds every index on the same gallery and times the same
queries (top-10) through each, interleaved:

* ``numpy``: a matmul of a query batch against the gallery and a partial sort (the baseline);
* ``flat``: FAISS's exact inner-product search (``IndexFlatIP``): its top-10 must equal numpy's;
* ``ivf`` (``nlist`` ~ 4 sqrt(n), ``nprobe`` 32) and ``hnsw`` (M 32, efSearch 128):
  approximate; recall@1 and recall@10 against the exact top-10, and the build time.

The gallery is synthetic: L2-normalised 512-d points around 2,000 random centres (faces of one
person cluster; real embeddings would be the same arithmetic), stored as a memory-mapped
``.npy`` the way ``fvloss embed --out DIR`` writes one, and added to each index in chunks.
Memory is the index's serialised size (numpy: the gallery matrix). HNSW builds slowly on two
cores: it is measured up to ``--hnsw-max`` rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, finish, machine_header, md_table  # noqa: E402
from fvloss.eval.search import build_index  # noqa: E402


def gallery_file(folder: Path, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around 2,000 centres, written in chunks to a memory-mapped .npy."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    mm = np.lib.format.open_memmap(folder / f"g{n}.npy", "w+", np.float32, (n, dim))
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        x = centres[rng.integers(0, 2000, m)] + 0.9 * rng.normal(size=(m, dim)).astype(np.float32)
        mm[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    mm.flush()
    return np.load(folder / f"g{n}.npy", mmap_mode="r")


def queries(gallery: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """Noisy copies of gallery rows: each query has true near neighbours."""
    rng = np.random.default_rng(seed)
    q = np.asarray(gallery[np.sort(rng.choice(len(gallery), n, replace=False))])
    q = q + 0.05 * rng.normal(size=q.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--approx", nargs="*", default=["ivf", "hnsw"], choices=["ivf", "hnsw"])
    p.add_argument("--hnsw-max", type=int, default=100_000)
    p.add_argument("--save", action="store_true")
    p.add_argument("--tag", default="", help="saved beside the untagged section")
    args = p.parse_args(argv)
    t_start = time.time()
    out: list[str] = []
    emit(out, "## Gallery search: FAISS vs numpy (bench/faiss_search.py)", "", machine_header(), "")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            g = gallery_file(Path(tmp), n, args.dim)
            q = queries(g, min(args.queries, n))
            exact_ids = None
            for kind in ["numpy", "flat", *args.approx]:
                if kind == "hnsw" and n > args.hnsw_max:
                    continue
                t0 = time.perf_counter()
                opts = {"nprobe": 32} if kind == "ivf" else {}
                index = build_index(g, kind, **opts)
                build = time.perf_counter() - t0
                index.search(q[:10], 10)  # warm up
                t0 = time.perf_counter()
                _, ids = index.search(q, 10, batch=256)
                secs = time.perf_counter() - t0
                if exact_ids is None:
                    exact_ids = ids
                r1 = float(np.mean(ids[:, 0] == exact_ids[:, 0]))
                r10 = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)]))
                rows.append([f"{n:,}", kind, round(len(q) / secs), f"{build:.1f}", f"{r1:.4f}",
                             f"{r10:.4f}", f"{index.memory_bytes() / 2**20:.0f}"])  # fmt: skip
                emit(out, f"  {n:>9,} {kind:<6} {len(q) / secs:10.0f} queries/s  build {build:6.1f} s  "
                     f"recall@1 {r1:.4f}  recall@10 {r10:.4f}")  # fmt: skip
                del index
            del g
    emit(
        out,
        "",
        md_table(
            ["gallery", "index", "queries/s", "build s", "recall@1", "recall@10", "MiB"], rows
        ),
        "",
    )
    emit(
        out,
        f"{args.queries} queries, top-10, {args.dim}-d, batches of 256; recall against numpy's exact top-10.",
    )
    finish(out, t_start, args.save, "faiss_search", args.tag)


if __name__ == "__main__":
    main()
