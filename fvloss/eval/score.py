"""Embed images and score verification pairs with any :class:`~fvloss.eval.embedder.Embedder`.

Each unique image of a :class:`~fvloss.eval.protocols.PairSet` is decoded once (from its file,
or from memory for a ``.bin``), transformed by the embedder's preprocessing and embedded in
batches; optionally with flip test-time augmentation (the embeddings of the image and of its
mirror summed, insightface's protocol). Pairs are scored by cosine similarity and measured by
:func:`~fvloss.eval.metrics.verify_scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..imageio import ImageReadError, read_rgb
from .embedder import Embedder, model_device
from .load import as_embedder
from .metrics import DEFAULT_FARS, VerificationResult, cosine_scores, verify_scores
from .protocols import PairSet

__all__ = ["embed_images", "embed_arrays", "evaluate_pairs", "model_device", "score_pairs"]

Transform = Callable[[np.ndarray], torch.Tensor]
Loader = Callable[[int], np.ndarray]  # image index -> HxWx3 uint8 RGB


# ----------------------------------------------------------------------------- image batches


def _load(load: Loader, i: int, transform: Transform) -> tuple[torch.Tensor | None, str | None]:
    """(tensor, None) or (None, reason): reasons cross worker processes as text."""
    try:
        return transform(load(i)), None
    except ImageReadError as e:
        return None, e.reason


class _Images(torch.utils.data.Dataset):
    def __init__(self, load: Loader, items: Sequence[int], transform: Transform):
        self.load, self.items, self.transform = load, items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        i = self.items[k]
        return (i, *_load(self.load, i, self.transform))


def _collate(batch):
    return batch  # a list of (index, tensor | None, reason | None); stacked by the caller


def _batches(
    load: Loader,
    keys: Sequence[str],
    transform: Transform,
    batch_size: int,
    num_workers: int,
    cache: dict | None,
    indices: Sequence[int] | None = None,
) -> Iterator[list[tuple[int, torch.Tensor | None, str | None]]]:
    """Batches of (index, tensor or None, reason or None) over images ``0..len(keys)-1`` (or
    ``indices`` of them); ``cache`` (keyed by ``keys``) keeps transformed images between calls."""
    todo = list(range(len(keys)) if indices is None else indices)
    if cache is not None:
        hits = [i for i in todo if keys[i] in cache]
        for k in range(0, len(hits), batch_size):
            yield [(i, cache[keys[i]], None) for i in hits[k : k + batch_size]]
        todo = [i for i in todo if keys[i] not in cache]
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            _Images(load, todo, transform),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
        )
        batches: Iterator = iter(loader)
    else:
        batches = (
            [(i, *_load(load, i, transform)) for i in todo[k : k + batch_size]]
            for k in range(0, len(todo), batch_size)
        )
    for batch in batches:
        if cache is not None:
            cache.update((keys[i], x) for i, x, _ in batch if x is not None)
        yield batch


def _embed(
    embedder: Embedder,
    load: Loader,
    keys: Sequence[str],
    batch_size: int = 256,
    flip: bool = False,
    num_workers: int = 0,
    skip_errors: bool = False,
    cache: dict | None = None,
    share: tuple[int, int] = (0, 1),
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Embeddings ``(N, D)`` float32 of the images and ``{index: reason}`` of unreadable ones.

    ``out``: an ``(N, D)`` array to fill (e.g. a memory-mapped ``.npy``, so a million
    embeddings go to disk batch by batch instead of being held in memory).

    Unreadable images raise :class:`ImageReadError` unless ``skip_errors`` (their rows are 0).
    ``share=(rank, world)``: this rank embeds images ``rank, rank + world, ...`` and every
    rank gets all of them (gathered; every rank must call it together).
    """
    if not keys:
        return np.zeros((0, 0), dtype=np.float32), {}
    if embedder.transform is None:
        raise ValueError(f"{embedder.name}: the embedder has no transform (preprocessing)")
    failed: dict[int, str] = {}
    rank, world = share
    mine = range(rank, len(keys), world) if world > 1 else None
    read = 0
    with embedder.running():
        for batch in _batches(load, keys, embedder.transform, batch_size, num_workers, cache, mine):
            for i, _, reason in batch:
                if reason is not None:
                    if not skip_errors:
                        raise ImageReadError(keys[i], reason)
                    failed[i] = reason
            ok = [(i, x) for i, x, _ in batch if x is not None]
            if not ok:
                continue
            x = torch.stack([x for _, x in ok])
            # One pass over image + mirror: the same cost as two, fewer launches.
            e = embedder.embed_batch(torch.cat([x, x.flip(-1)]) if flip else x)
            if flip:
                e = e[: len(x)] + e[len(x) :]
            e = e.numpy()
            if out is None:
                out = np.zeros((len(keys), e.shape[1]), dtype=np.float32)
            elif out.shape != (len(keys), e.shape[1]):
                raise ValueError(
                    f"out is {out.shape}; the embeddings are {(len(keys), e.shape[1])}"
                )
            out[[i for i, _ in ok]] = e
            read += len(ok)
    if world > 1:
        out, failed = _gathered(out, failed, mine, len(keys))
    elif not read:
        out = None
    if out is None:
        raise ImageReadError(keys[0], f"no image could be read ({len(failed)} failed)")
    return out, failed


def _gathered(out: np.ndarray | None, failed: dict[int, str], mine: range, n: int):
    """Every rank's rows ``mine`` of ``out`` and its failures, put together on every rank."""
    parts: list = [None] * mine.step  # (the number of ranks)
    dist.all_gather_object(parts, (None if out is None else out[mine], failed, mine))
    full: np.ndarray | None = None
    failed = {}
    for rows, bad, idx in parts:
        failed.update(bad)
        if rows is not None:
            if full is None:
                full = np.zeros((n, rows.shape[1]), dtype=np.float32)
            full[idx] = rows
    return full, failed


def embed_images(
    model: nn.Module | Embedder,
    paths: Sequence[str | Path],
    transform: Transform | None = None,
    batch_size: int = 256,
    flip: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
) -> np.ndarray:
    """Embed image files: ``(N, D)`` float32, row ``i`` for ``paths[i]``.

    ``model`` is a torch module (run in eval mode under ``torch.no_grad`` on ``device``,
    default its own, its mode restored afterwards) or an :class:`Embedder`. ``transform`` maps
    an ``HxWx3`` uint8 RGB array to a ``(3, H, W)`` float tensor (default: the embedder's).
    ``flip`` sums the embeddings of each image and its mirror. ``num_workers > 0`` decodes in
    a torch ``DataLoader``. Raises :class:`ImageReadError` for an unreadable image.
    """
    paths = [Path(p) for p in paths]
    emb, _ = _embed(
        as_embedder(model, transform, device),
        _PathLoader(paths),
        [str(p) for p in paths],
        batch_size,
        flip,
        num_workers,
    )
    return emb


def embed_arrays(
    model: nn.Module | Embedder,
    images: Sequence[np.ndarray],
    transform: Transform | None = None,
    batch_size: int = 256,
    flip: bool = False,
) -> np.ndarray:
    """Embed decoded ``HxWx3`` uint8 RGB images held in memory: ``(N, D)`` float32."""
    keys = [f"<array {i}>" for i in range(len(images))]
    emb, _ = _embed(as_embedder(model, transform), images.__getitem__, keys, batch_size, flip)
    return emb


class _PathLoader:
    """Picklable ``index -> RGB`` over a list of files (DataLoader workers get a copy)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __call__(self, i: int) -> np.ndarray:
        return read_rgb(self.paths[i])


def score_pairs(
    model: nn.Module | Embedder,
    pairs: PairSet,
    transform: Transform | None = None,
    *,
    batch_size: int = 256,
    flip: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_missing: bool = False,
    cache: dict | None = None,
    share: tuple[int, int] = (0, 1),
) -> tuple[np.ndarray, PairSet]:
    """Cosine similarity of every pair, each unique image embedded once.

    Returns ``(scores, kept)`` where ``kept`` is ``pairs`` less the pairs with an unreadable
    image (only with ``skip_missing``; they are counted in ``kept.skipped``). ``cache``, a dict
    kept by the caller, holds transformed images between calls (memory: N x 3 x H x W floats).
    ``share=(rank, world)``: the images are split across the ranks, which call it together.
    """
    emb, failed = _embed(
        as_embedder(model, transform, device),
        pairs.load if pairs.images is not None else _PathLoader(pairs.paths),
        [str(p) for p in pairs.paths],
        batch_size,
        flip,
        num_workers,
        skip_errors=skip_missing,
        cache=cache,
        share=share,
    )
    if failed:
        bad = np.zeros(len(pairs.paths), dtype=bool)
        bad[list(failed)] = True
        drop = bad[pairs.index].any(axis=1)
        name = Path(pairs.source).name or "pairs"
        reasons = []
        for k in np.flatnonzero(drop):
            i = next(int(i) for i in pairs.index[k] if bad[i])
            line = f", line {pairs.lines[k]}" if pairs.lines is not None else ""
            reasons.append(f"{name}{line}: unreadable image {pairs.paths[i]}: {failed[i]}")
        scores = cosine_scores(emb, pairs.index[~drop])
        return scores, pairs.subset(~drop, reasons)
    return cosine_scores(emb, pairs.index), pairs


def evaluate_pairs(
    model: nn.Module | Embedder,
    pairs: PairSet,
    transform: Transform | None = None,
    *,
    batch_size: int = 256,
    flip: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_missing: bool = False,
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
    cache: dict | None = None,
) -> VerificationResult:
    """Embed, score and measure ``pairs``: :func:`score_pairs` then :func:`verify_scores`.

    The protocol's folds are used when it has them, else ``n_folds`` assigned folds.
    """
    scores, kept = score_pairs(
        model,
        pairs,
        transform,
        batch_size=batch_size,
        flip=flip,
        device=device,
        num_workers=num_workers,
        skip_missing=skip_missing,
        cache=cache,
    )
    return verify_scores(scores, kept.same, kept.folds, n_folds, fars, skipped=kept.skipped)
