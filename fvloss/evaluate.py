"""Evaluate an embedder on verification pairs: embedding, a per-epoch fastai callback, the CLI.

* :func:`embed_images` / :func:`score_pairs` / :func:`evaluate_pairs`: each unique image of a
  :class:`~fvloss.pairs.PairSet` is decoded with :func:`~fvloss.imageio.read_rgb`, transformed
  and embedded once, in batches, on the model's device; optionally with flip test-time
  augmentation; pairs are scored by cosine similarity and measured by
  :func:`~fvloss.verify.verify_scores`.
* :class:`VerifyPairs`: a fastai callback that evaluates ``learn.model`` on a pair set every N
  epochs and shows the numbers as columns of the progress table.
* :func:`main`: ``fvloss verify --run RUN_DIR --pairs FILE ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.learner import Metric, Recorder

from .imageio import ImageReadError, read_rgb
from .pairs import PairFileError, PairSet, add_pair_options, read_pairs
from .verify import (
    DEFAULT_FARS,
    VerificationResult,
    cosine_scores,
    far_key,
    format_result,
    plot_roc,
    verify_scores,
)

__all__ = [
    "VerifyPairs",
    "embed_images",
    "evaluate_pairs",
    "main",
    "model_device",
    "pairs_digest",
    "score_pairs",
    "write_outputs",
]

Transform = Callable[[np.ndarray], torch.Tensor]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-less model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


# ----------------------------------------------------------------------------- image batches


def _load(path: Path, transform: Transform) -> tuple[torch.Tensor | None, str | None]:
    """(tensor, None) or (None, reason): reasons cross worker processes as text."""
    try:
        return transform(read_rgb(path)), None
    except ImageReadError as e:
        return None, e.reason


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], items: Sequence[int], transform: Transform):
        self.paths, self.items, self.transform = paths, items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        i = self.items[k]
        return (i, *_load(self.paths[i], self.transform))


def _collate(batch):
    return batch  # a list of (index, tensor | None, reason | None); stacked by the caller


def _batches(
    paths: Sequence[Path],
    transform: Transform,
    batch_size: int,
    num_workers: int,
    cache: dict | None,
) -> Iterator[list[tuple[int, torch.Tensor | None, str | None]]]:
    """Batches of (index, tensor or None, reason or None) over ``paths``."""
    todo = list(range(len(paths)))
    if cache is not None:
        hits = [i for i in todo if str(paths[i]) in cache]
        for k in range(0, len(hits), batch_size):
            yield [(i, cache[str(paths[i])], None) for i in hits[k : k + batch_size]]
        todo = [i for i in todo if str(paths[i]) not in cache]
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            _Images(paths, todo, transform),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
        )
        batches: Iterator = iter(loader)
    else:
        batches = (
            [(i, *_load(paths[i], transform)) for i in todo[k : k + batch_size]]
            for k in range(0, len(todo), batch_size)
        )
    for batch in batches:
        if cache is not None:
            cache.update((str(paths[i]), x) for i, x, _ in batch if x is not None)
        yield batch


def _embed(
    model: torch.nn.Module,
    paths: Sequence[Path],
    transform: Transform,
    batch_size: int = 256,
    flip: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_errors: bool = False,
    cache: dict | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Embeddings ``(N, D)`` float32 of ``paths`` and ``{index: reason}`` of unreadable images.

    Unreadable images raise :class:`ImageReadError` unless ``skip_errors`` (their rows are 0).
    """
    if not paths:
        return np.zeros((0, 0), dtype=np.float32), {}
    device = torch.device(device) if device is not None else model_device(model)
    dtype = _model_dtype(model)
    out: np.ndarray | None = None
    failed: dict[int, str] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in _batches(paths, transform, batch_size, num_workers, cache):
                for i, _, reason in batch:
                    if reason is not None:
                        if not skip_errors:
                            raise ImageReadError(paths[i], reason)
                        failed[i] = reason
                ok = [(i, x) for i, x, _ in batch if x is not None]
                if not ok:
                    continue
                x = torch.stack([x for _, x in ok]).to(device, dtype, non_blocking=True)
                # One forward pass over image + mirror: the same cost as two, fewer launches.
                e = model(torch.cat([x, x.flip(-1)]) if flip else x)
                expected = len(x) * (2 if flip else 1)
                if not (isinstance(e, torch.Tensor) and e.ndim == 2 and len(e) == expected):
                    shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
                    raise TypeError(
                        "the model in eval mode must map (B, 3, H, W) to embeddings (B, D); "
                        f"got {shape} for B={expected}"
                    )
                if flip:
                    e = e[: len(x)] + e[len(x) :]
                e = e.float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(paths), e.shape[1]), dtype=np.float32)
                out[[i for i, _ in ok]] = e
    finally:
        model.train(was_training)
    if out is None:
        raise ImageReadError(paths[0], f"no image could be read ({len(failed)} failed)")
    return out, failed


def embed_images(
    model: torch.nn.Module,
    paths: Sequence[str | Path],
    transform: Transform,
    batch_size: int = 256,
    flip: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
) -> np.ndarray:
    """Embed image files: ``(N, D)`` float32, row ``i`` for ``paths[i]``.

    The model runs in eval mode under ``torch.no_grad`` (its mode is restored afterwards) on
    ``device`` (default: the model's). ``transform`` maps an ``HxWx3`` uint8 RGB array to a
    ``(3, H, W)`` float tensor. ``flip`` sums the embeddings of each image and its mirror.
    ``num_workers > 0`` decodes in a torch ``DataLoader``. Raises :class:`ImageReadError` for an
    unreadable image.
    """
    emb, _ = _embed(
        model, [Path(p) for p in paths], transform, batch_size, flip, device, num_workers
    )
    return emb


def score_pairs(
    model: torch.nn.Module,
    pairs: PairSet,
    transform: Transform,
    *,
    batch_size: int = 256,
    flip: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    skip_missing: bool = False,
    cache: dict | None = None,
) -> tuple[np.ndarray, PairSet]:
    """Cosine similarity of every pair, each unique image embedded once.

    Returns ``(scores, kept)`` where ``kept`` is ``pairs`` less the pairs with an unreadable
    image (only with ``skip_missing``; they are counted in ``kept.skipped``). ``cache``, a dict
    kept by the caller, holds transformed images between calls (memory: N x 3 x H x W floats).
    """
    emb, failed = _embed(
        model,
        pairs.paths,
        transform,
        batch_size,
        flip,
        device,
        num_workers,
        skip_errors=skip_missing,
        cache=cache,
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
    model: torch.nn.Module,
    pairs: PairSet,
    transform: Transform,
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

    The file's folds are used when it has them, else ``n_folds`` assigned folds.
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


def pairs_digest(pairs: PairSet) -> str:
    """SHA-1 of what a pair set compares: each pair's two absolute image paths, label and fold.

    Equal digests mean two score files scored the very same comparisons in the same order, so
    their scores can be compared pair by pair (``fvloss compare``'s paired bootstrap).
    Absolute paths rather than paths under a root: two data sets with the same layout (e.g.
    synthetic sets of different seeds) must not pass for one another.
    """
    folds = pairs.folds if pairs.folds is not None else np.full(len(pairs), -1)
    paths = [os.path.abspath(p) for p in pairs.paths]
    h = hashlib.sha1()
    for (a, b), same, fold in zip(pairs.index.tolist(), pairs.same.tolist(), folds.tolist()):
        h.update(f"{paths[a]}\0{paths[b]}\0{int(same)}\0{fold}\n".encode())
    return h.hexdigest()


def write_outputs(
    result: VerificationResult,
    out_dir: str | Path,
    stem: str,
    meta: dict | None = None,
    label: str | None = None,
    scores: np.ndarray | None = None,
    pairs: PairSet | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/stem.json`` (metrics + ``meta``) and ``out_dir/stem.png`` (the ROC).

    With ``scores`` and the ``pairs`` they score (the kept pairs of :func:`score_pairs`) also
    ``out_dir/stem.scores.npz``: ``scores`` (float64), ``same`` (bool), ``folds`` (int64, empty
    when the file has none), ``pairs_sha1`` (:func:`pairs_digest`) and ``meta`` (JSON text), so
    that ``fvloss compare`` can reuse them and check that runs were scored on the same pairs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    doc = {"meta": meta or {}, **result.to_dict()}
    json_path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    plot_roc({label or stem: result}, png_path, title=stem)
    if scores is not None or pairs is not None:
        if scores is None or pairs is None or len(scores) != len(pairs):
            raise ValueError("scores and pairs go together, one score per pair")
        buf = io.BytesIO()
        np.savez(
            buf,
            scores=np.asarray(scores, dtype=np.float64),
            same=pairs.same,
            folds=pairs.folds if pairs.folds is not None else np.zeros(0, dtype=np.int64),
            pairs_sha1=np.array(pairs_digest(pairs)),
            meta=np.array(json.dumps(meta or {})),
        )
        npz_path = out_dir / f"{stem}.scores.npz"
        tmp = npz_path.with_name(npz_path.name + ".tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, npz_path)  # never a half-written file for compare to trust
    return json_path, png_path


# ----------------------------------------------------------------------------- fastai


class _PairMetric(Metric):
    """A progress-table column showing one number of the callback's latest evaluation."""

    def __init__(self, cb: VerifyPairs, key: str):
        self.cb, self.key = cb, key

    @property
    def value(self) -> float:
        return self.cb.current.get(self.key, math.nan)

    @property
    def name(self) -> str:
        return self.cb.prefix + self.key


class VerifyPairs(Callback):
    """Evaluate ``learn.model`` on a :class:`PairSet` during ``fit``, every ``every`` epochs.

    The numbers named by ``columns`` (keys of :meth:`VerificationResult.scalars`: ``auc``,
    ``acc``, ``acc_std``, ``eer``, ``threshold``, ``tar@far=1e-3``, ...) appear, prefixed with
    ``prefix``, as progress-table columns and in ``learn.recorder.values``; epochs that are not
    evaluated (and unresolved TARs) show NaN. The last epoch is always evaluated. After the fit,
    ``best`` and ``best_epoch`` hold the best AUC and its epoch, ``best_result`` its full result,
    ``last`` the latest one and ``history`` a list of ``(epoch, scalars)``; ``out_dir`` also
    writes ``{prefix}epoch{NNN}.json/.png`` per evaluation.

    ``embedder(learn)`` picks the module to evaluate (default ``learn.model``); in eval mode it
    must map image batches to embeddings. Evaluation happens only inside ``fit`` after a
    validation pass: ``learn.validate()``, ``get_preds()`` and ``lr_find()`` leave the columns
    NaN. ``best*`` and ``history`` restart with each ``fit`` (``fine_tune`` runs two).
    """

    # Before the Recorder (50): its before_fit reads learn.metrics to build the column names
    # and its after_validate reads each metric's value, so our columns must be registered and
    # our evaluation done earlier in both events. After TrainEvalCallback (-10), which puts the
    # model on its device. Trackers such as SaveModelCallback(monitor="auc") (60) then see the
    # numbers in recorder.values at after_epoch.
    order = Recorder.order - 10
    remove_on_fetch = True  # get_preds' fetch callbacks drop us, like the Recorder
    _only_train_loop = True  # learn.summary() leaves us out

    def __init__(
        self,
        pairs: PairSet,
        transform: Transform,
        every: int = 1,
        flip: bool = False,
        prefix: str = "",
        columns: Sequence[str] = ("auc", "acc", "tar@far=1e-3", "eer"),
        batch_size: int = 256,
        num_workers: int = 0,
        n_folds: int = 10,
        fars: Sequence[float] = DEFAULT_FARS,
        cache: bool = False,
        out_dir: str | Path | None = None,
        embedder: Callable | None = None,
    ):
        super().__init__()
        if every < 1:
            raise ValueError("every must be >= 1")
        self.pairs, self.transform, self.every, self.flip = pairs, transform, every, flip
        self.prefix, self.columns = prefix, tuple(columns)
        self.batch_size, self.num_workers, self.n_folds = batch_size, num_workers, n_folds
        self.fars, self.out_dir, self.embedder = tuple(fars), out_dir, embedder
        known = ["auc", "acc", "acc_std", "eer", "threshold"]
        known += [f"tar@far={far_key(f)}" for f in self.fars]
        unknown = [c for c in self.columns if c not in known]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; choose from {known}")
        self.image_cache: dict | None = {} if cache else None
        self.col_metrics = [_PairMetric(self, k) for k in self.columns]
        self.current: dict[str, float] = {}
        self.last: VerificationResult | None = None
        self.best, self.best_epoch = -math.inf, None
        self.best_result: VerificationResult | None = None
        self.history: list[tuple[int, dict[str, float]]] = []
        self.trained = False
        self.epoch_result: VerificationResult | None = None

    def _scores(self, model: torch.nn.Module | None) -> tuple[np.ndarray, PairSet]:
        if model is None:
            if self.learn is None:
                raise ValueError("VerifyPairs is not attached to a Learner: pass the model")
            model = self.embedder(self.learn) if self.embedder else self.learn.model
        return score_pairs(
            model,
            self.pairs,
            self.transform,
            batch_size=self.batch_size,
            flip=self.flip,
            num_workers=self.num_workers,
            cache=self.image_cache,
        )

    def evaluate(self, model: torch.nn.Module | None = None) -> VerificationResult:
        """Evaluate ``model`` (default: the attached learner's embedder) on the pairs now."""
        scores, kept = self._scores(model)
        return verify_scores(scores, kept.same, kept.folds, self.n_folds, self.fars)

    def _our_metric(self, m) -> bool:
        return isinstance(m, _PairMetric) and m.cb is self

    def before_fit(self) -> None:
        others = [m for m in self.learn.metrics if not self._our_metric(m)]
        self.learn.metrics = others + self.col_metrics
        self.best, self.best_epoch, self.best_result = -math.inf, None, None
        self.history, self.last, self.current = [], None, {}

    def before_epoch(self) -> None:
        self.current, self.trained, self.epoch_result = {}, False, None

    def after_train(self) -> None:
        self.trained = True  # tells a fit's validation from learn.validate()/get_preds()

    def after_cancel_validate(self) -> None:
        self.trained = False  # e.g. lr_find cancels validation: no evaluation either

    def after_validate(self) -> None:
        epoch = self.learn.epoch
        due = (epoch + 1) % self.every == 0 or epoch == self.learn.n_epoch - 1
        if not (self.trained and due):
            return
        scores, kept = self._scores(None)
        n_bad = int((~np.isfinite(scores)).sum())
        if n_bad:
            # A diverged model gives NaN embeddings: show NaN columns and let training go on
            # (stopping it is the job of the loss and of callbacks such as TerminateOnNaN).
            warnings.warn(
                f"VerifyPairs: epoch {epoch}: {n_bad} of {len(scores)} scores are not finite; "
                "not evaluated",
                stacklevel=1,
            )
            self.current = {k: math.nan for k in self.columns}
            return
        result = verify_scores(scores, kept.same, kept.folds, self.n_folds, self.fars)
        self.last = self.epoch_result = result
        self.current = result.scalars()
        if self.out_dir is not None:
            meta = {"epoch": epoch, "pairs": self.pairs.source, "flip": self.flip}
            write_outputs(result, self.out_dir, f"{self.prefix}epoch{epoch:03d}", meta)

    def after_epoch(self) -> None:
        if not (self.trained and self.current):
            return  # not a fit's epoch, or not one we evaluated
        epoch = self.learn.epoch
        self.history.append((epoch, dict(self.current)))
        r = self.epoch_result
        if r is not None and r.auc > self.best:
            self.best, self.best_epoch, self.best_result = r.auc, epoch, r

    def after_fit(self) -> None:
        # Leave learn.metrics as we found it: a later validate()/fit without us shows no
        # stale columns.
        self.learn.metrics = [m for m in self.learn.metrics if not self._our_metric(m)]


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fvloss verify",
        description="Evaluate a run's trained weights on a face-verification pair protocol; "
        "writes RUN/verify/<pairs-stem>.json, .png (ROC) and .scores.npz (per-pair scores, "
        "which fvloss compare reuses) and prints a table.",
    )
    p.add_argument("--run", required=True, type=Path, help="run folder (trained weights)")
    p.add_argument("--pairs", required=True, type=Path, help="pair file")
    add_pair_options(p)
    p.add_argument("--out", type=Path, help="output folder (default: RUN/verify)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    p.add_argument("--device", default=None, help="torch device (default: the run's choice)")
    p.add_argument(
        "--folds", type=int, default=10, help="folds when the pair file defines none (default 10)"
    )
    return p


def _fail(message: str, code: int) -> int:
    print(f"fvloss verify: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """``fvloss verify``: returns 0 on success, 2 for bad input, 1 for unreadable images."""
    args = _parser().parse_args(argv)
    if not args.run.is_dir():
        return _fail(f"run folder not found: {args.run}", 2)
    try:
        pairs = read_pairs(args.pairs, args.root, args.format, args.skip_missing)
    except (PairFileError, ValueError) as e:
        return _fail(str(e), 2)
    try:
        from fvloss.runs import load_run  # the core's run loader; imported late on purpose
    except ImportError as e:
        return _fail(f"cannot load runs ({e})", 2)
    run = load_run(args.run, device=args.device)
    t0 = time.perf_counter()
    try:
        scores, kept = score_pairs(
            run.model,
            pairs,
            run.eval_transform,
            batch_size=args.batch_size,
            flip=args.flip,
            num_workers=args.num_workers,
            skip_missing=args.skip_missing,
        )
    except ImageReadError as e:
        return _fail(f"{e} (use --skip-missing to drop such pairs)", 1)
    result = verify_scores(scores, kept.same, kept.folds, args.folds, skipped=kept.skipped)
    seconds = time.perf_counter() - t0
    stem = args.pairs.stem
    meta = {
        "run": str(args.run),
        "pairs": str(args.pairs),
        "root": str(args.root or args.pairs.parent),
        "format": pairs.format,
        "flip": args.flip,
        "seconds": round(seconds, 3),
    }
    json_path, png_path = write_outputs(
        result, args.out or args.run / "verify", stem, meta, args.run.name, scores, kept
    )
    print(format_result(result, title=f"{args.run.name} on {args.pairs.name}"))
    for message in result.skipped[:5]:
        print(f"  skipped: {message}")
    if result.n_skipped > 5:
        print(f"  ... and {result.n_skipped - 5} more (all listed in the JSON up to 100)")
    print(f"wrote {json_path}, {png_path} and {stem}.scores.npz ({seconds:.1f} s)")
    return 0
