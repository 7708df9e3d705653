"""Embedding stores: what ``fvloss embed --out DIR`` writes, read back memory-mapped.

A store is a folder::

    DIR/embeddings.npy   float32 (N, D), rows L2-normalised (a plain .npy: np.load(mmap_mode="r"))
    DIR/norms.npy        float32 (N,), each embedding's norm before normalising: the quality
                         MagFace and AdaFace train the norm to carry
    DIR/paths.txt        the N image paths, one a line, relative to the embedded folder
    DIR/skipped.txt      "path: reason" of images that could not be read (--skip-bad)
    DIR/meta.json        model, folder, flip, preprocessing, seconds

Rows are written batch by batch into the memory-mapped file and normalised a chunk at a time,
so a million 512-d embeddings (2 GiB) never sit in memory; :func:`open_store` maps them back
without reading them. The older single-file ``.npz`` (no norms) is read too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonio import atomic_write

__all__ = ["EmbeddingStore", "open_store", "write_store"]

_CHUNK = 65536


@dataclass
class EmbeddingStore:
    """Paths, their L2-normalised embeddings (memory-mapped for a folder store) and norms."""

    paths: list[str]
    embeddings: np.ndarray
    norms: np.ndarray | None
    meta: dict[str, Any]
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def open_store(path: str | Path) -> EmbeddingStore:
    """Read a store folder (memory-mapped) or an ``fvloss embed`` ``.npz`` file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return EmbeddingStore(
                z["paths"].tolist(), z["embeddings"], None,
                json.loads(str(z["meta"])), z["skipped"].tolist(),
            )  # fmt: skip
    if not (path / "embeddings.npy").is_file():
        raise FileNotFoundError(
            f"{path}: not an embedding store (no embeddings.npy; see fvloss embed)"
        )
    emb = np.load(path / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    paths = (path / "paths.txt").read_text(encoding="utf-8").splitlines()
    if emb.ndim != 2 or len(paths) != len(emb):
        raise ValueError(
            f"{path}: embeddings.npy is {emb.shape} for {len(paths)} paths in paths.txt"
        )
    norms = np.load(path / "norms.npy", mmap_mode="r") if (path / "norms.npy").is_file() else None
    skipped = path / "skipped.txt"
    return EmbeddingStore(
        paths, emb, norms, json.loads((path / "meta.json").read_text()),
        skipped.read_text(encoding="utf-8").splitlines() if skipped.is_file() else [],
    )  # fmt: skip


def write_store(
    out: str | Path,
    paths: Sequence[str],
    fill: Callable[[np.ndarray], dict[int, str]],
    dim: int,
    meta: dict[str, Any],
) -> EmbeddingStore:
    """Write a store: ``fill(rows)`` writes raw embeddings into the ``(N, dim)`` memory-mapped
    ``rows`` and returns ``{row: reason}`` of unreadable images (their rows are dropped).

    The folder appears whole or not at all (written beside it, then renamed); an existing
    store there is replaced, any other existing path is an error.
    """
    out = Path(out)
    if out.exists() and not (out / "embeddings.npy").is_file():
        raise FileExistsError(f"{out}: exists and is not an embedding store; not overwriting it")
    part = out.with_name(out.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    raw = np.lib.format.open_memmap(part / "raw.npy", "w+", np.float32, (len(paths), dim))
    try:
        failed = fill(raw)
    except BaseException:
        del raw
        shutil.rmtree(part, ignore_errors=True)  # no half-written store left behind
        raise
    keep = np.array([i for i in range(len(paths)) if i not in failed], dtype=np.int64)
    # Normalise a chunk at a time: in place, or (when images failed) into a compacted copy.
    emb = raw if not failed else np.lib.format.open_memmap(
        part / "embeddings.npy", "w+", np.float32, (len(keep), dim)
    )  # fmt: skip
    norms = np.empty(len(keep), np.float32)
    for i in range(0, len(keep), _CHUNK):
        rows = np.asarray(raw[keep[i : i + _CHUNK]])
        n = np.linalg.norm(rows, axis=1)
        emb[i : i + len(rows)] = rows / np.maximum(n, 1e-12)[:, None]
        norms[i : i + len(rows)] = n
    emb.flush()
    del raw, emb
    if failed:
        (part / "raw.npy").unlink()
    else:
        (part / "raw.npy").rename(part / "embeddings.npy")
    np.save(part / "norms.npy", norms)
    (part / "paths.txt").write_text("".join(f"{paths[i]}\n" for i in keep), encoding="utf-8")
    if failed:
        lines = "".join(f"{paths[i]}: {why}\n" for i, why in sorted(failed.items()))
        (part / "skipped.txt").write_text(lines, encoding="utf-8")
    atomic_write(part / "meta.json", json.dumps({**meta, "normalised": True}, indent=1))
    if out.exists():
        shutil.rmtree(out)
    part.rename(out)
    return open_store(out)
