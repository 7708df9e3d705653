"""Nearest gallery faces by cosine similarity, on FAISS (Johnson, Douze, Jégou, "Billion-scale
similarity search with GPUs", https://arxiv.org/abs/1702.08734).

Rows are L2-normalised, so the inner product is the cosine. :data:`INDEXES` names each kind
(one builder each, :func:`register_index` adds one):

* ``flat``: FAISS's exact inner-product search (``IndexFlatIP``), for galleries that fit in
  memory once (1M x 512 float32 is 2 GiB);
* ``ivf``: an inverted file (``IndexIVFFlat``): the gallery split into ``nlist`` k-means cells,
  ``nprobe`` of them searched; approximate, trained on a seeded sample of the gallery;
* ``hnsw``: a navigable small-world graph (``IndexHNSWFlat``, ``hnsw_m`` links a node,
  ``ef_search`` candidates a query); approximate, no training;
* ``numpy``: a matmul and a partial sort, the baseline FAISS is measured against.

Every index is filled in chunks (:meth:`SearchIndex.add` takes any array-like, a
memory-mapped ``.npy`` included, and copies ``chunk`` rows at a time), so a gallery on disk is
held once, in the index; queries are searched in batches. FAISS's GPU build is used where it
is installed and sees a GPU (``gpu=None``: when available).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["INDEXES", "SearchIndex", "build_index", "faiss_or_error", "register_index"]

CHUNK = 65536  # rows copied (as contiguous float32) per add / search batch


def faiss_or_error():
    """The ``faiss`` module, or an ImportError saying how to install it."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "identification searches galleries with FAISS: pip install faiss-cpu "
            "(or fvloss[search]; faiss-gpu for CUDA), or choose index='numpy'"
        ) from e
    return faiss


def _rows(x: Any, dim: int | None, what: str) -> np.ndarray:
    """``x`` as contiguous float32 ``(n, dim)``, with a clear error for the wrong shape."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, d)"
        raise ValueError(f"{what}: expected embeddings of shape {want}, got {a.shape}")
    return a


class SearchIndex:
    """A gallery searched by inner product: :meth:`add` rows, :meth:`search` queries.

    Subclasses build ``self.index`` (a FAISS index, or the numpy baseline's matrix) and may
    override :meth:`train` (called once, before the first :meth:`add`, with a sample).
    """

    kind = "?"
    needs_training = False

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"embedding width must be positive, got {dim}")
        self.dim = dim
        self.trained = not self.needs_training

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def train(self, sample: np.ndarray) -> None:
        """Fit the index's structure to ``sample`` rows (IVF's k-means)."""
        self.trained = True

    def add(self, rows: Any, chunk: int = CHUNK) -> None:
        """Append ``rows`` (any array-like, e.g. a memory-mapped ``.npy``), ``chunk`` at a time."""
        if not self.trained:
            raise RuntimeError(f"{self.kind} index: call train() before add()")
        n = len(rows)
        for i in range(0, n, chunk):
            self._add(_rows(rows[i : i + chunk], self.dim, "gallery"))

    def _add(self, rows: np.ndarray) -> None:
        self.index.add(rows)

    def search(self, queries: Any, k: int, batch: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best gallery rows per query: scores ``(n, k)`` high to low and their row
        numbers ``(n, k)``; past the gallery's end a score is ``-inf`` and a row ``-1``."""
        q = _rows(queries, self.dim, "queries")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        if self.ntotal == 0 or len(q) == 0:
            return scores, ids
        kk = min(k, self.ntotal)
        for i in range(0, len(q), batch):
            s, j = self._search(q[i : i + batch], kk)
            scores[i : i + len(s), :kk], ids[i : i + len(s), :kk] = s, j
        scores[ids < 0] = -np.inf  # FAISS pads an approximate search that found fewer
        return scores, ids

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(q, k)

    def memory_bytes(self) -> int:
        """The index's size serialised (its memory, near enough)."""
        faiss = faiss_or_error()
        return int(faiss.serialize_index(self._cpu_index()).nbytes)

    def _cpu_index(self):
        faiss = faiss_or_error()
        return faiss.index_gpu_to_cpu(self.index) if self._on_gpu else self.index

    _on_gpu = False

    def _maybe_gpu(self, gpu: bool | None) -> None:
        """Move a FAISS index to the GPU when FAISS was built for it and one is visible."""
        faiss = faiss_or_error()
        n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if gpu and n_gpus == 0:
            raise RuntimeError("gpu=True, but this FAISS build sees no GPU (faiss-gpu needed)")
        if gpu is not False and n_gpus > 0:
            self._res = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._res, 0, self.index)
            self._on_gpu = True


class FlatIndex(SearchIndex):
    """Exact search: every gallery row scored (FAISS ``IndexFlatIP``)."""

    kind = "flat"

    def __init__(self, dim: int, gpu: bool | None = None):
        super().__init__(dim)
        self.index = faiss_or_error().IndexFlatIP(dim)
        self._maybe_gpu(gpu)


class IVFIndex(SearchIndex):
    """Approximate: ``nlist`` k-means cells (trained on a sample), ``nprobe`` searched a query.

    ``nlist=None`` picks ~4 sqrt(n) for the gallery :func:`build_index` is given."""

    kind = "ivf"
    needs_training = True

    def __init__(self, dim: int, nlist: int = 1024, nprobe: int = 32, gpu: bool | None = None):
        super().__init__(dim)
        faiss = faiss_or_error()
        self.nlist, self.nprobe = nlist, nprobe
        self._quantizer = faiss.IndexFlatIP(dim)  # kept: the IVF index refers to it
        self.index = faiss.IndexIVFFlat(self._quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.nprobe = nprobe
        self._gpu = gpu

    def train(self, sample: np.ndarray) -> None:
        sample = _rows(sample, self.dim, "training sample")
        if len(sample) < self.nlist:
            raise ValueError(
                f"ivf index: {len(sample)} training rows for nlist={self.nlist} cells; "
                "choose a smaller nlist or index='flat'"
            )
        self.index.train(sample)
        self._maybe_gpu(self._gpu)
        if self._on_gpu:
            self.index.nprobe = self.nprobe
        self.trained = True


class HNSWIndex(SearchIndex):
    """Approximate: a navigable small-world graph (FAISS ``IndexHNSWFlat``); CPU only."""

    kind = "hnsw"

    def __init__(self, dim: int, hnsw_m: int = 32, ef_search: int = 128, ef_construction: int = 40):
        super().__init__(dim)
        faiss = faiss_or_error()
        self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search


class NumpyIndex(SearchIndex):
    """The baseline: one matmul a batch of queries and a partial sort (no FAISS)."""

    kind = "numpy"

    def __init__(self, dim: int):
        super().__init__(dim)
        self._parts: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None

    @property
    def ntotal(self) -> int:
        return sum(len(p) for p in self._parts)

    def _add(self, rows: np.ndarray) -> None:
        self._parts.append(rows.copy())
        self._matrix = None

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._matrix is None:
            self._matrix = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
            self._parts = [self._matrix]
        s = q @ self._matrix.T
        top = (
            np.argpartition(-s, k - 1, axis=1)[:, :k]
            if k < s.shape[1]
            else np.tile(np.arange(s.shape[1]), (len(q), 1))
        )
        ts = np.take_along_axis(s, top, axis=1)
        order = np.argsort(-ts, axis=1, kind="stable")
        return np.take_along_axis(ts, order, axis=1), np.take_along_axis(top, order, axis=1)

    def memory_bytes(self) -> int:
        return sum(p.nbytes for p in self._parts)


INDEXES: dict[str, Callable[..., SearchIndex]] = {}


def register_index(name: str, builder: Callable[..., SearchIndex]) -> None:
    """Make ``builder(dim, **options)`` available as ``index=name``."""
    if name in INDEXES:
        raise ValueError(f"index kind {name!r} is already registered")
    INDEXES[name] = builder


for _cls in (FlatIndex, IVFIndex, HNSWIndex, NumpyIndex):
    register_index(_cls.kind, _cls)


def build_index(
    gallery: Any, kind: str = "flat", seed: int = 0, train_rows: int = 100_000, **options
) -> SearchIndex:
    """An index of kind ``kind`` holding every row of ``gallery`` (added in chunks).

    An index that needs training (``ivf``) is trained on up to ``train_rows`` rows drawn with
    ``seed``; ``ivf`` without ``nlist`` uses ~4 sqrt(n) cells (at most n / 39, FAISS's
    minimum of training points a cell).
    """
    if kind not in INDEXES:
        raise ValueError(f"unknown index {kind!r}: choose one of {sorted(INDEXES)}")
    n = len(gallery)
    if n == 0:
        raise ValueError("the gallery is empty: nothing to search")
    dim = int(np.shape(gallery[:1])[1]) if np.ndim(gallery[:1]) == 2 else 0
    if kind == "ivf" and "nlist" not in options:
        options["nlist"] = max(1, min(int(4 * np.sqrt(n)), n // 39))
    index = INDEXES[kind](dim, **options)
    if not index.trained:
        rows = np.sort(np.random.default_rng(seed).permutation(n)[:train_rows])
        index.train(np.asarray(gallery[rows]) if n > train_rows else np.asarray(gallery))
    index.add(gallery)
    return index
