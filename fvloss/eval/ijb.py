"""IJB-B / IJB-C 1:1 template verification, in the layout insightface's evaluation reads.

A root folder (``IJBC/`` or ``IJBB/``) holds::

    meta/ijbc_face_tid_mid.txt         image_name template_id media_id
    meta/ijbc_template_pair_label.txt  template1 template2 label     (1 = same subject)
    meta/ijbc_name_5pts_score.txt      image_name x1 y1 ... x5 y5 detector_score
    loose_crop/<image_name>            the loose face crops the landmarks refer to

(IJB-B: ``ijbb_`` instead of ``ijbc_``). The protocol, as insightface's ``ijb_11.py`` runs it:

1. each image is warped with its 5 landmarks onto the ArcFace 112x112 template and embedded as
   itself plus its mirror, the two embeddings summed (flip test, "F2"); the embedding is *not*
   normalised (its norm is a quality signal, "N1") and is multiplied by the detector's score
   ("D1"), so doubtful detections weigh less in their template;
2. media pooling: the images of one (template, media) pair (frames of one video, or one still)
   are averaged, so that a long video does not outvote a single photo;
3. template pooling: the media features of a template are summed and L2-normalised;
4. a template pair's score is the cosine of the two template features.

TAR@FAR follows :mod:`fvloss.eval.metrics`: the best TAR whose FAR is <= the target, ``None``
with a reason when the different pairs are too few to resolve the FAR (``n`` of them resolve
``1/n``). insightface's table instead takes the ROC point whose FAR is *nearest* the target (possibly
above it), so its numbers can be a little higher at the same scores.

The model stays out of this module: :func:`embed_ijb` takes any ``embed_fn(list of HxWx3 uint8
RGB aligned faces) -> (B, D) array``.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..align.warp import warp_face
from ..imageio import read_rgb
from ..jsonio import finite as _finite
from .metrics import TarAtFar, far_key, roc_auc, roc_curve, tar_at_far

__all__ = [
    "IJB_FARS",
    "IJBFormatError",
    "IJBResult",
    "IJBSet",
    "aligned_face",
    "embed_ijb",
    "evaluate_ijb",
    "format_ijb",
    "meta_paths",
    "read_ijb",
    "result_from_scores",
    "template_features",
    "template_scores",
    "write_ijb_layout",
]

IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # the columns of the IJB tables in papers
NAMES = ("IJBB", "IJBC")
_FAR_TOL = 1 + 1e-9  # as fvloss.eval.metrics: FAR = 3/3000 counts as <= 1e-3 despite rounding

EmbedFn = Callable[[list[np.ndarray]], np.ndarray]


class IJBFormatError(ValueError):
    """A malformed or inconsistent IJB meta file; ``path`` and ``line`` (1-based) say where."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


# ----------------------------------------------------------------------------- the data set


@dataclass
class IJBSet:
    """One IJB-style 1:1 protocol: per-image rows (``N``) and template pairs (``P``)."""

    root: Path
    name: str  # "IJBB" or "IJBC"
    image_names: list[str]  # file names under root/loose_crop
    landmarks: np.ndarray  # (N, 5, 2) float64, x, y in the loose crop
    det_scores: np.ndarray  # (N,) float64 detector (faceness) scores
    templates: np.ndarray  # (N,) int64 template id of each image
    medias: np.ndarray  # (N,) int64 media id of each image (a video or a still)
    pairs: np.ndarray  # (P, 2) int64 template ids
    labels: np.ndarray  # (P,) bool, True = same subject
    missing: list[str] = field(default_factory=list, repr=False)  # skipped image names
    n_dropped_pairs: int = 0  # pairs dropped because a template lost all its images
    n_dropped_templates: int = 0  # such templates

    @property
    def n_images(self) -> int:
        return len(self.image_names)

    @property
    def n_pairs(self) -> int:
        return len(self.labels)

    def image_path(self, i: int) -> Path:
        return self.root / "loose_crop" / self.image_names[i]

    def counts(self) -> dict[str, int]:
        """Sizes for reports: images, templates, media, pairs and what was skipped."""
        n_media = len(np.unique(np.stack([self.templates, self.medias], 1), axis=0))
        n_same = int(self.labels.sum())
        return {
            "images": self.n_images,
            "templates": len(np.unique(self.templates)),
            "media": n_media,
            "pairs": self.n_pairs,
            "same": n_same,
            "different": self.n_pairs - n_same,
            "missing_images": len(self.missing),
            "dropped_templates": self.n_dropped_templates,
            "dropped_pairs": self.n_dropped_pairs,
        }


def meta_paths(root: str | Path, name: str) -> dict[str, Path]:
    """The three meta files of ``name`` ("IJBB"/"IJBC") under ``root``."""
    p = name.lower()
    meta = Path(root) / "meta"
    return {
        "tid_mid": meta / f"{p}_face_tid_mid.txt",
        "pairs": meta / f"{p}_template_pair_label.txt",
        "landmarks": meta / f"{p}_name_5pts_score.txt",
    }


def _check_name(name: str) -> str:
    up = name.upper().replace("-", "")
    if up not in NAMES:
        raise ValueError(f"unknown IJB set {name!r}; choose IJBB or IJBC")
    return up


def _locate(root: Path, name: str | None) -> tuple[Path, str]:
    """(root, name): ``name`` from the meta files present; ``root/IJBC`` also accepted."""
    if name is not None:
        name = _check_name(name)
        if not (root / "meta").is_dir() and (root / name / "meta").is_dir():
            root = root / name
        return root, name
    for r in (root, *(root / n for n in NAMES)):
        found = [n for n in NAMES if meta_paths(r, n)["tid_mid"].is_file()]
        if len(found) > 1:
            raise ValueError(f"{r / 'meta'} holds both IJBB and IJBC files; pass name=")
        if found:
            return r, found[0]
    expected = ", ".join(str(p) for p in meta_paths(root, "IJBC").values())
    raise FileNotFoundError(f"no IJB meta files under {root} (expected e.g. {expected})")


def _lines(path: Path, what: str) -> Iterable[tuple[int, list[str]]]:
    """(1-based line number, fields) of the non-blank lines of a meta file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing IJB meta file ({what})")
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            fields = line.split()
            if fields:
                yield no, fields


def _parse_number(path: Path, no: int, text: str, kind: type, column: str):
    try:
        v = kind(text)
    except ValueError:
        raise IJBFormatError(path, no, f"{column} is {text!r}, not a number") from None
    if kind is float and not math.isfinite(v):
        raise IJBFormatError(path, no, f"{column} is {text!r}, not a finite number")
    return v


def _read_tid_mid(path: Path) -> tuple[list[str], list[int], np.ndarray]:
    """Image names, their line numbers and (N, 2) template / media ids."""
    names, line_nos, ids = [], [], []
    for no, f in _lines(path, "image_name template_id media_id"):
        if len(f) != 3:
            raise IJBFormatError(
                path, no, f"expected 'image_name template_id media_id', got {len(f)} fields"
            )
        names.append(f[0])
        line_nos.append(no)
        ids.append(
            (
                _parse_number(path, no, f[1], int, "template_id"),
                _parse_number(path, no, f[2], int, "media_id"),
            )
        )
    if not names:
        raise IJBFormatError(path, None, "no images listed")
    return names, line_nos, np.array(ids, dtype=np.int64).reshape(-1, 2)


def _read_landmarks(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    """image name -> (line number, 11 floats: 5 (x, y) landmarks and the detector score)."""
    out: dict[str, tuple[int, np.ndarray]] = {}
    for no, f in _lines(path, "image_name x1 y1 ... x5 y5 detector_score"):
        if len(f) != 12:
            raise IJBFormatError(
                path,
                no,
                f"expected 'image_name x1 y1 ... x5 y5 detector_score' (12 fields), got {len(f)}",
            )
        cols = [f"x{k // 2 + 1}" if k % 2 == 0 else f"y{k // 2 + 1}" for k in range(10)] + [
            "detector_score"
        ]
        values = np.array([_parse_number(path, no, t, float, c) for t, c in zip(f[1:], cols)])
        if f[0] in out:
            raise IJBFormatError(
                path, no, f"image {f[0]!r} is listed again (first on line {out[f[0]][0]})"
            )
        out[f[0]] = (no, values)
    return out


def _first_bad_pair_line(path: Path) -> tuple[int, str] | None:
    """Slow path after the fast parse failed: the first malformed line and why."""
    for no, f in _lines(path, "template1 template2 label"):
        if len(f) != 3:
            return no, f"expected 'template1 template2 label', got {len(f)} fields"
        for text, column in zip(f, ("template1", "template2", "label")):
            try:
                int(text)
            except ValueError:
                return no, f"{column} is {text!r}, not an integer"
    return None


def _line_of_row(path: Path, row: int) -> int:
    """1-based line number of the ``row``-th non-blank line (for errors only)."""
    for k, (no, _) in enumerate(_lines(path, "template1 template2 label")):
        if k == row:
            return no
    return row + 1


def _read_pairs(path: Path) -> np.ndarray:
    """(P, 3) int64 ``template1 template2 label`` rows.

    IJB-C has 15.7M pairs: ``np.loadtxt`` (C parser, about a second) reads them, and only when it
    fails is the file walked line by line to name the bad line.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing IJB meta file (template1 template2 label)")
    try:
        with warnings.catch_warnings():  # an empty file warns; it is an error below instead
            warnings.simplefilter("ignore", UserWarning)
            rows = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
    except ValueError as e:
        bad = _first_bad_pair_line(path)
        if bad is None:
            raise IJBFormatError(path, None, str(e)) from e
        raise IJBFormatError(path, *bad) from None
    if rows.size == 0:
        raise IJBFormatError(path, None, "no template pairs listed")
    if rows.shape[1] != 3:
        raise IJBFormatError(
            path, 1, f"expected 'template1 template2 label', got {rows.shape[1]} fields"
        )
    bad = np.flatnonzero((rows[:, 2] != 0) & (rows[:, 2] != 1))
    if len(bad):
        row = int(bad[0])
        raise IJBFormatError(path, _line_of_row(path, row), f"label is {rows[row, 2]}, not 0 or 1")
    return rows


def _listed_images(loose: Path, names: Sequence[str]) -> np.ndarray:
    """Whether each image exists: one directory listing, not 470k stat calls."""
    try:
        present = set(os.listdir(loose))
    except OSError:
        present = set()
    return np.array([n in present if "/" not in n else (loose / n).is_file() for n in names], bool)


def read_ijb(
    root: str | Path, name: str | None = None, skip_missing: bool = False, pairs: bool = True
) -> IJBSet:
    """Read an IJB-B / IJB-C 1:1 protocol from ``root`` (or ``root/IJBC``, ``root/IJBB``).

    ``pairs=False`` reads the images only (no template pair file: 1:N, :mod:`.ijb_1n`).

    ``name`` ("IJBB"/"IJBC") picks the meta files; ``None`` detects it from the files present.
    Malformed lines, a missing meta file, an image listed in one meta file but not the other,
    and a pair naming an unknown template raise errors naming the file and line. A missing
    image is an error unless ``skip_missing``; then it is dropped and listed in ``missing``,
    and the pairs of templates left without images are dropped and counted.
    """
    root, name = _locate(Path(root), name)
    paths = meta_paths(root, name)
    names, tid_lines, ids = _read_tid_mid(paths["tid_mid"])
    lmk = _read_landmarks(paths["landmarks"])
    rows = _read_pairs(paths["pairs"]) if pairs else np.zeros((0, 3), np.int64)

    # Both files list the same images (in the release, in the same order); join them by name
    # so that a reordered file still pairs each image with its own landmarks.
    seen: dict[str, int] = {}
    for n, no in zip(names, tid_lines):
        if n in seen:
            raise IJBFormatError(
                paths["tid_mid"], no, f"image {n!r} is listed again (first on line {seen[n]})"
            )
        seen[n] = no
    only_tid = [(n, no) for n, no in zip(names, tid_lines) if n not in lmk]
    if only_tid:
        n, no = only_tid[0]
        raise IJBFormatError(
            paths["tid_mid"],
            no,
            f"image {n!r} has no landmarks in {paths['landmarks'].name} ({len(only_tid)} such images)",
        )
    only_lmk = [(n, no) for n, (no, _) in lmk.items() if n not in seen]
    if only_lmk:
        n, no = only_lmk[0]
        raise IJBFormatError(
            paths["landmarks"],
            no,
            f"image {n!r} is not in {paths['tid_mid'].name} ({len(only_lmk)} such images)",
        )
    values = np.stack([lmk[n][1] for n in names])
    templates, medias = ids[:, 0], ids[:, 1]

    known = np.unique(templates)
    unknown = ~np.isin(rows[:, :2], known).all(axis=1)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        pair = rows[row, :2]
        t = int(pair[~np.isin(pair, known)][0])
        raise IJBFormatError(
            paths["pairs"],
            _line_of_row(paths["pairs"], row),
            f"template {t} is not in {paths['tid_mid'].name} ({int(unknown.sum())} such pairs)",
        )

    exists = _listed_images(root / "loose_crop", names)
    missing = [n for n, ok in zip(names, exists) if not ok]
    if missing and not skip_missing:
        raise FileNotFoundError(
            f"{root / 'loose_crop' / missing[0]}: image listed in {paths['tid_mid'].name} not found "
            f"({len(missing)} of {len(names)} missing; read_ijb(..., skip_missing=True) drops them)"
        )
    keep_templates = np.unique(templates[exists])
    keep_pairs = np.isin(rows[:, :2], keep_templates).all(axis=1)
    return IJBSet(
        root=root,
        name=name,
        image_names=[n for n, ok in zip(names, exists) if ok],
        landmarks=values[exists, :10].reshape(-1, 5, 2),
        det_scores=values[exists, 10],
        templates=templates[exists],
        medias=medias[exists],
        pairs=rows[keep_pairs, :2],
        labels=rows[keep_pairs, 2].astype(bool),
        missing=missing,
        n_dropped_pairs=int((~keep_pairs).sum()),
        n_dropped_templates=len(known) - len(keep_templates),
    )


# ----------------------------------------------------------------------------- embedding


def aligned_face(ijb: IJBSet, i: int, img_size: int = 112) -> np.ndarray:
    """Image ``i`` decoded and warped with its 5 landmarks: ``img_size``^2 x 3 uint8 RGB."""
    return warp_face(read_rgb(ijb.image_path(i)), ijb.landmarks[i], img_size)


def _embed_batch(embed_fn: EmbedFn, faces: list[np.ndarray], first: int) -> np.ndarray:
    out = np.asarray(embed_fn(faces), dtype=np.float32)
    if out.ndim != 2 or len(out) != len(faces):
        raise ValueError(
            f"embed_fn returned shape {out.shape} for a batch of {len(faces)} faces; expected (B, D)"
        )
    if not np.isfinite(out).all():
        raise ValueError(
            f"embed_fn returned NaN or infinite values for the batch from image {first}"
        )
    return out


def embed_ijb(
    ijb: IJBSet,
    embed_fn: EmbedFn,
    batch_size: int = 256,
    flip: bool = True,
    img_size: int = 112,
    use_detector_score: bool = True,
    normalize_images: bool = False,
    num_workers: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """(N, D) float32 image features, ready for :func:`template_scores`.

    Each aligned face's embedding (plus its mirror's when ``flip``: the sum) is kept
    unnormalised unless ``normalize_images``, then multiplied by its detector score when
    ``use_detector_score``. The defaults are insightface's ``ijb_11.py`` (F2, N1, D1).
    ``num_workers`` threads decode and warp (OpenCV releases the GIL while it does).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = ijb.n_images
    feats: np.ndarray | None = None
    pool = ThreadPoolExecutor(num_workers) if num_workers > 1 else None
    load = lambda i: aligned_face(ijb, i, img_size)  # noqa: E731
    try:
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            faces = list(pool.map(load, idx)) if pool else [load(i) for i in idx]
            e = _embed_batch(embed_fn, faces, start)
            if flip:
                # Mirror = the face seen from the other side; summing removes the left/right bias.
                e = e + _embed_batch(
                    embed_fn, [np.ascontiguousarray(f[:, ::-1]) for f in faces], start
                )
            if feats is None:
                feats = np.empty((n, e.shape[1]), np.float32)
            elif e.shape[1] != feats.shape[1]:
                raise ValueError(
                    f"embed_fn returned {e.shape[1]}-d embeddings after {feats.shape[1]}-d ones"
                )
            feats[idx.start : idx.stop] = e
            if progress and (idx.stop == n or (start // batch_size) % 50 == 0):
                print(f"{ijb.name}: embedded {idx.stop}/{n} images", flush=True)
    finally:
        if pool:
            pool.shutdown()
    if feats is None:
        raise ValueError(f"{ijb.name} set under {ijb.root} has no images to embed")
    if normalize_images:
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if use_detector_score:
        feats *= ijb.det_scores[:, None].astype(np.float32)
    return feats


# ----------------------------------------------------------------------------- pooling and scores


def _group_sums(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Row sums of ``x`` per group id (``0..G-1``, each present at least once), in float64.

    Sort once and ``np.add.reduceat`` over the runs: one pass, unlike ``np.add.at``.
    """
    order = np.argsort(group, kind="stable")
    sorted_x = x if np.array_equal(order, np.arange(len(order))) else x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
    return np.add.reduceat(sorted_x, starts, axis=0, dtype=np.float64)


def template_features(ijb: IJBSet, image_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids (T,) ascending, L2-normalised template features (T, D) float64)``.

    Media pooling (mean of a (template, media) pair's images) then template pooling (sum of
    its media, then normalised). Media ids are taken per template, as insightface does: the
    same media id in two templates is two media.
    """
    e = np.asarray(image_embeddings)
    if e.ndim != 2 or len(e) != ijb.n_images:
        raise ValueError(f"expected ({ijb.n_images}, D) image embeddings, got shape {e.shape}")
    keys, media_of = np.unique(
        np.stack([ijb.templates, ijb.medias], 1), axis=0, return_inverse=True
    )
    media_of = media_of.reshape(-1)
    counts = np.bincount(media_of, minlength=len(keys))
    media = _group_sums(e, media_of) / counts[:, None]
    # keys are sorted by template first, so each template's media are one contiguous run.
    tids, first = np.unique(keys[:, 0], return_index=True)
    feats = np.add.reduceat(media, first, axis=0)
    # A template whose weights are all zero (detector scores of 0) keeps a zero feature: score 0.
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return tids, feats


def template_scores(
    ijb: IJBSet, image_embeddings: np.ndarray, chunk_size: int | None = None
) -> np.ndarray:
    """Cosine score (P,) float64 of every template pair of ``ijb``.

    Pairs are scored in chunks (default: about 64 MB of gathered features per side), since
    IJB-C's 15.7M pairs x 512-d would need 128 GB at once.
    """
    tids, feats = template_features(ijb, image_embeddings)
    rows = np.searchsorted(tids, ijb.pairs).clip(0, len(tids) - 1)
    lost = tids[rows] != ijb.pairs
    if lost.any():
        k = int(np.flatnonzero(lost.any(axis=1))[0])
        raise ValueError(
            f"pair {k} names template {int(ijb.pairs[k][lost[k]][0])}, which has no images"
        )
    chunk = chunk_size or max(1, (1 << 23) // max(1, feats.shape[1]))
    scores = np.empty(len(rows), np.float64)
    for s in range(0, len(rows), chunk):
        a, b = rows[s : s + chunk, 0], rows[s : s + chunk, 1]
        scores[s : s + chunk] = np.einsum("ij,ij->i", feats[a], feats[b])
    return scores


# ----------------------------------------------------------------------------- results


@dataclass
class IJBResult:
    """1:1 verification numbers of one IJB set (TAR@FAR over all pairs, no folds)."""

    name: str
    scores: np.ndarray = field(repr=False)  # (P,) cosine per template pair
    labels: np.ndarray = field(repr=False)  # (P,) bool
    tar_at_far: dict[float, TarAtFar]
    auc: float
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    thresholds: np.ndarray = field(repr=False)  # fpr[k], tpr[k] accept scores >= thresholds[k]
    counts: dict[str, int] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # flip, use_detector_score, img_size, ...
    missing: list[str] = field(default_factory=list, repr=False)

    def to_dict(self, max_roc_points: int = 1000) -> dict:
        """Strict-JSON-ready dict (no NaN / infinity); the ROC is thinned on a log FAR axis.

        Scores are left out (15.7M for IJB-C): ``np.save`` :attr:`scores` for those.
        """
        keep = _thin_log_roc(self.fpr, max_roc_points)
        return {
            "name": self.name,
            "counts": dict(self.counts),
            "settings": {k: _finite(v) for k, v in self.settings.items()},
            "missing": self.missing[:100],
            "auc": _finite(float(self.auc)),
            "tar_at_far": {
                far_key(f): {k: _finite(v) for k, v in vars(t).items()}
                for f, t in self.tar_at_far.items()
            },
            "roc": {
                "fpr": self.fpr[keep].tolist(),
                "tpr": self.tpr[keep].tolist(),
                "thresholds": [_finite(t) for t in self.thresholds[keep].tolist()],
            },
        }


def _thin_log_roc(fpr: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ~``max_points`` ROC points, even on a log FAR axis (how IJB ROCs are
    drawn): the last point at or below each log-spaced FAR, i.e. the curve's upper corners."""
    n = len(fpr)
    if n <= max_points:
        return np.arange(n)
    positive = fpr[fpr > 0]
    lo = math.log10(positive[0]) if len(positive) else 0.0
    targets = np.logspace(lo, 0, max(2, max_points - 2))
    idx = np.searchsorted(fpr, targets * _FAR_TOL, side="right") - 1
    return np.unique(np.clip(np.r_[0, idx, n - 1], 0, n - 1))


def result_from_scores(
    ijb: IJBSet, scores: np.ndarray, fars: Sequence[float] = IJB_FARS, settings: dict | None = None
) -> IJBResult:
    """An :class:`IJBResult` from already computed pair scores (e.g. loaded from a file)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != ijb.n_pairs:
        raise ValueError(f"{len(scores)} scores for {ijb.n_pairs} template pairs")
    fpr, tpr, thr = roc_curve(scores, ijb.labels)
    return IJBResult(
        name=ijb.name,
        scores=scores,
        labels=ijb.labels,
        tar_at_far=tar_at_far(scores, ijb.labels, fars),
        auc=roc_auc(scores, ijb.labels),
        fpr=fpr,
        tpr=tpr,
        thresholds=thr,
        counts=ijb.counts(),
        settings=dict(settings or {}),
        missing=list(ijb.missing),
    )


def evaluate_ijb(
    ijb: IJBSet, embed_fn: EmbedFn, fars: Sequence[float] = IJB_FARS, **embed_kw
) -> IJBResult:
    """Embed, pool and score ``ijb``: :func:`embed_ijb` (``embed_kw`` go there) ->
    :func:`template_scores` -> :func:`result_from_scores`."""
    feats = embed_ijb(ijb, embed_fn, **embed_kw)
    settings = {
        "flip": embed_kw.get("flip", True),
        "use_detector_score": embed_kw.get("use_detector_score", True),
        "normalize_images": embed_kw.get("normalize_images", False),
        "img_size": embed_kw.get("img_size", 112),
        "embedding_dim": int(feats.shape[1]),
    }
    return result_from_scores(ijb, template_scores(ijb, feats), fars, settings)


def format_ijb(result: IJBResult, label: str | None = None) -> str:
    """A paper-style one-row table: TAR (%) at each FAR, plus AUC and the set's sizes."""
    c = result.counts
    cols = [far_key(f) for f in result.tar_at_far]
    cells = [
        f"{t.tar * 100:.2f}" if t.tar is not None else "n/a" for t in result.tar_at_far.values()
    ]
    cols, cells = [*cols, "AUC"], [*cells, f"{result.auc * 100:.2f}"]
    widths = [max(len(a), len(b)) for a, b in zip(cols, cells)]
    head_label, row_label = "TAR@FAR=", label or result.name
    w0 = max(len(head_label), len(row_label))
    lines = [
        f"{result.name} 1:1 verification: {c.get('templates', '?')} templates, "
        f"{c.get('pairs', '?')} pairs ({c.get('same', '?')} same, {c.get('different', '?')} "
        "different); TAR and AUC in %",
        f"{head_label:<{w0}} " + " | ".join(f"{a:>{w}}" for a, w in zip(cols, widths)),
        f"{row_label:<{w0}} " + " | ".join(f"{b:>{w}}" for b, w in zip(cells, widths)),
    ]
    reasons = [t.reason for t in result.tar_at_far.values() if t.reason]
    if reasons:
        lines.append(f"n/a: {reasons[0]}")
    skipped = c.get("missing_images", 0)
    if skipped:
        lines.append(
            f"skipped: {skipped} missing images, {c.get('dropped_templates', 0)} templates and "
            f"{c.get('dropped_pairs', 0)} pairs left without images"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- writing a layout


def write_ijb_layout(
    out_root: str | Path,
    items: Sequence[tuple[str | Path, int, int, np.ndarray, float]],
    pairs: Iterable[tuple[int, int, int]],
    name: str = "IJBC",
) -> Path:
    """Write the official layout under ``out_root`` and return it (``read_ijb`` reads it back).

    ``items``: ``(image_path, template_id, media_id, landmarks (5, 2) in that image, detector
    score)``; each image is copied to ``loose_crop/<k><ext>`` (``k`` = 1, 2, ... as in the
    release), so one file may appear in several templates. ``pairs``: ``(template1, template2,
    label)`` with label 1 = same subject.
    """
    name = _check_name(name)
    out_root = Path(out_root)
    paths = meta_paths(out_root, name)
    loose = out_root / "loose_crop"
    loose.mkdir(parents=True, exist_ok=True)
    paths["tid_mid"].parent.mkdir(parents=True, exist_ok=True)
    tid_lines, lmk_lines, templates = [], [], set()
    for k, (src, tid, mid, lm, score) in enumerate(items, 1):
        lm = np.asarray(lm, dtype=np.float64)
        if lm.shape not in ((5, 2), (10,)):
            raise ValueError(f"item {k} ({src}): landmarks must be (5, 2), got shape {lm.shape}")
        dst = f"{k}{Path(src).suffix.lower() or '.jpg'}"
        shutil.copyfile(src, loose / dst)
        tid_lines.append(f"{dst} {int(tid)} {int(mid)}\n")
        # repr() round-trips a float exactly, so read_ijb gives back the same landmarks.
        lmk_lines.append(
            " ".join([dst, *(repr(float(v)) for v in lm.reshape(-1)), repr(float(score))]) + "\n"
        )
        templates.add(int(tid))
    pair_lines = []
    for t1, t2, label in pairs:
        if int(label) not in (0, 1):
            raise ValueError(f"pair ({t1}, {t2}): label must be 0 or 1, got {label}")
        for t in (t1, t2):
            if int(t) not in templates:
                raise ValueError(f"pair ({t1}, {t2}) names template {t}, which has no images")
        pair_lines.append(f"{int(t1)} {int(t2)} {int(label)}\n")
    paths["tid_mid"].write_text("".join(tid_lines))
    paths["landmarks"].write_text("".join(lmk_lines))
    paths["pairs"].write_text("".join(pair_lines))
    return out_root
