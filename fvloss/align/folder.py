"""Align every image under a folder: detect, pick one face, warp, write; report what failed.

Output mirrors the input: ``SRC/rel/path.jpg`` -> ``DST/rel/path.jpg`` (same name and extension,
so pair files and identity folders resolve unchanged). Each input image ends in exactly one
outcome, recorded in ``DST/align_report.json``:

- ``aligned``: a face was found and its crop written;
- ``center_crop``: no face, ``fallback="center"`` wrote a centre crop instead;
- ``no_face``: no face and no fallback: nothing written;
- ``unreadable``: the file could not be decoded (truncated, empty, not an image);
- ``error``: anything else (e.g. the output could not be written), with the reason;
- ``skipped``: the output already existed (resume): not redone.

Encoding is fixed so that the same input gives byte-identical output: ``.jpg``/``.jpeg`` as JPEG
quality 95 (the source is already JPEG: lossless PNG would store its artefacts at ~4x the size,
and q95 adds far less error than the source's own compression), ``.png`` as PNG, ``.webp`` as
lossless WebP, anything else with OpenCV's defaults for that format. Outputs are written to a
temporary name and renamed, so an interrupted run never leaves a half-written file that a resumed
run would skip.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from fvloss.imageio import IMAGE_EXTENSIONS, ImageReadError, read_rgb
from fvloss.jsonio import atomic_write, write_json

from .detectors import DEFAULT_MIN_SCORE, Detector, detect_faces, make_detector, pick_face
from .preview import write_preview
from .progress import Progress
from .warp import center_crop, warp_face

__all__ = [
    "AlignConfig",
    "FALLBACKS",
    "PREVIEW_NAME",
    "REPORT_NAME",
    "STATUSES",
    "align_folder",
    "align_image",
    "encode_image",
    "list_images",
]

REPORT_NAME = "align_report.json"
PREVIEW_NAME = "align_preview.png"
STATUSES = ("aligned", "center_crop", "no_face", "unreadable", "error", "skipped")
FALLBACKS = ("none", "center")
STAGES = ("decode", "detect", "warp", "write")
JPEG_QUALITY = 95


@dataclass(frozen=True)
class AlignConfig:
    """Everything a worker needs to align one image (picklable, sent once per worker)."""

    size: int = 112
    detector: str | None = None  # None: yunet if model else yuface
    model: str | None = None
    min_score: float = DEFAULT_MIN_SCORE
    max_side: int = 640  # longest side used for detection
    fallback: str = "none"  # "none" or "center"


def list_images(src: str | Path, exclude: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Files under ``src`` as sorted POSIX paths relative to it: ``(images, other_files)``.

    Images are recognised by extension (:data:`fvloss.imageio.IMAGE_EXTENSIONS`, any case);
    ``exclude`` (e.g. an output folder inside ``src``) is not walked. Symlinked folders are
    followed (data sets are often assembled from links), but never back into a folder above.
    """
    src = Path(src)
    seen = {Path(exclude).resolve()} if exclude is not None else set()
    images, others = [], []
    for root, dirs, files in os.walk(src, followlinks=True):
        seen.add(Path(root).resolve())
        dirs[:] = [d for d in dirs if (Path(root) / d).resolve() not in seen]
        for name in files:
            rel = (Path(root) / name).relative_to(src).as_posix()
            (images if Path(name).suffix.lower() in IMAGE_EXTENSIONS else others).append(rel)
    return sorted(images), sorted(others)


def align_image(
    rgb: np.ndarray, detector: Detector, size: int = 112, max_side: int = 640
) -> np.ndarray | None:
    """The aligned ``size x size`` crop of the main face in ``rgb``, or ``None`` if there is none."""
    h, w = rgb.shape[:2]
    face = pick_face(detect_faces(detector, rgb, max_side), w, h)
    return None if face is None else warp_face(rgb, face.landmarks, size)


def encode_image(rgb: np.ndarray, suffix: str) -> bytes:
    """Encode an RGB image in the format named by ``suffix`` with fixed, deterministic settings."""
    suffix = suffix.lower()
    params: list[int] = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    elif suffix == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 6]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101]  # > 100 means lossless
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {suffix} images")
    return buf.tobytes()


# Per-process state: the detector is created once per worker, not once per image.
_WORKER: dict = {}


def _init_worker(
    cfg: AlignConfig, src: str, dst: str, in_pool: bool = True, detector: Detector | None = None
) -> None:
    if in_pool:
        # Ctrl-C goes to the whole process group; let the parent alone handle it (and write the
        # report) instead of every worker printing a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One OpenCV thread per worker: processes give the parallelism, and a single thread makes
    # the result independent of the worker count.
    cv2.setNumThreads(1)
    _WORKER.clear()
    _WORKER.update(cfg=cfg, src=Path(src), dst=Path(dst))
    try:
        _WORKER["detector"] = detector or make_detector(cfg.detector, cfg.model, cfg.min_score)
    except Exception as e:  # an initializer that raises makes Pool respawn workers forever
        _WORKER["init_error"] = f"detector could not be created: {e}"


def _process(rel: str) -> tuple[str, str, str, tuple[float, ...]]:
    """Align one file; returns ``(rel, status, reason, seconds per stage)``. Never raises."""
    cfg: AlignConfig = _WORKER["cfg"]
    times = [0.0] * len(STAGES)
    if "init_error" in _WORKER:
        return rel, "error", _WORKER["init_error"], tuple(times)
    t0 = time.perf_counter()
    try:
        rgb = read_rgb(_WORKER["src"] / rel)
    except ImageReadError as e:
        return rel, "unreadable", e.reason, tuple(times)
    try:
        t1 = time.perf_counter()
        h, w = rgb.shape[:2]
        face = pick_face(detect_faces(_WORKER["detector"], rgb, cfg.max_side), w, h)
        t2 = time.perf_counter()
        if face is not None:
            status, crop = "aligned", warp_face(rgb, face.landmarks, cfg.size)
        elif cfg.fallback == "center":
            status, crop = "center_crop", center_crop(rgb, cfg.size)
        else:
            status, crop = "no_face", None
        t3 = time.perf_counter()
        if crop is not None:
            out = _WORKER["dst"] / rel
            atomic_write(out, encode_image(crop, out.suffix))
        t4 = time.perf_counter()
    except Exception as e:  # one bad file must not stop a run over thousands
        return rel, "error", f"{type(e).__name__}: {e}", tuple(times)
    return rel, status, "", (t1 - t0, t2 - t1, t3 - t2, t4 - t3)


def _previous_center_crops(report_path: Path, size: int) -> set[str]:
    """Centre crops an earlier run recorded; refuses to resume into crops of another size."""
    try:
        old = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return set()
    old_size = old.get("settings", {}).get("size")
    if old_size is not None and old_size != size:
        raise ValueError(
            f"{report_path.parent} holds {old_size}px crops from an earlier run; resuming at "
            f"{size}px would mix sizes. Use another output folder or delete it."
        )
    return set(old.get("center_crop", []))


def align_folder(
    src: str | Path,
    dst: str | Path,
    *,
    size: int = 112,
    detector: str | None = None,
    model: str | Path | None = None,
    workers: int = 1,
    fallback: str = "none",
    preview: int = 0,
    min_score: float = DEFAULT_MIN_SCORE,
    max_side: int = 640,
    progress: bool = True,
) -> dict:
    """Align every image under ``src`` into ``dst`` (same relative paths); return the report.

    ``detector``: ``"yuface"`` or ``"yunet"`` (``None``: yunet when ``model`` is given, else
    yuface). ``fallback="center"`` writes a centre crop when no face is found. Existing outputs
    are skipped (resume). ``preview=N`` also writes ``dst/align_preview.png`` with N crops. The
    report (see the module docstring) is written to ``dst/align_report.json`` even when the run
    is interrupted, in which case ``KeyboardInterrupt`` is re-raised after writing it.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    if dst.resolve() == src.resolve():
        raise ValueError("DST must differ from SRC: aligning in place would overwrite the photos")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    cfg = AlignConfig(size, detector, str(model) if model else None, min_score, max_side, fallback)
    det = make_detector(cfg.detector, cfg.model, cfg.min_score)  # fail fast, before any worker
    cfg = replace(cfg, detector=det.name)

    dst.mkdir(parents=True, exist_ok=True)
    report_path = dst / REPORT_NAME
    earlier_crops = _previous_center_crops(report_path, size)
    images, others = list_images(src, exclude=dst)
    todo, skipped = [], []
    for rel in images:
        (skipped if (dst / rel).exists() else todo).append(rel)

    results: list[tuple[str, str, str, tuple[float, ...]]] = [
        (r, "skipped", "", ()) for r in skipped
    ]
    bar = Progress(len(todo), "align", enabled=progress)
    start = time.perf_counter()
    interrupted = False
    try:
        if workers <= 1 or len(todo) < 2:
            old_threads = cv2.getNumThreads()
            _init_worker(cfg, str(src), str(dst), in_pool=False, detector=det)
            try:
                for rel in todo:
                    results.append(_process(rel))
                    bar.update()
            finally:
                cv2.setNumThreads(old_threads)
                _WORKER.clear()
        else:
            # spawn, not fork: forking a process that already runs OpenCV or torch threads can
            # deadlock, and spawn behaves the same on Linux, macOS and Windows.
            ctx = mp.get_context("spawn")
            chunk = max(1, min(16, len(todo) // (workers * 8)))
            with ctx.Pool(workers, _init_worker, (cfg, str(src), str(dst))) as pool:
                for res in pool.imap_unordered(_process, todo, chunksize=chunk):
                    results.append(res)
                    bar.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        seconds = time.perf_counter() - start
        report = _make_report(
            src, dst, cfg, workers, images, others, results, earlier_crops, seconds
        )
        report["complete"] = not interrupted
        write_json(report_path, report)
    if interrupted:
        raise KeyboardInterrupt
    if preview > 0:
        written = [rel for rel in images if (dst / rel).exists()]
        write_preview(dst, written, preview, dst / PREVIEW_NAME)
    return report


def _make_report(
    src: Path,
    dst: Path,
    cfg: AlignConfig,
    workers: int,
    images: list[str],
    others: list[str],
    results: list[tuple[str, str, str, tuple[float, ...]]],
    earlier_crops: set[str],
    seconds: float,
) -> dict:
    results = sorted(results)  # workers finish out of order; the report must not
    counts = dict.fromkeys(STATUSES, 0)
    stage = [0.0] * len(STAGES)
    lists: dict[str, list] = {"no_face": [], "center_crop": [], "unreadable": [], "error": []}
    for rel, status, reason, times in results:
        counts[status] += 1
        for i, t in enumerate(times):
            stage[i] += t
        if status in ("unreadable", "error"):
            lists[status].append({"file": rel, "reason": reason})
        elif status in ("no_face", "center_crop"):
            lists[status].append(rel)
        elif status == "skipped" and rel in earlier_crops:
            lists["center_crop"].append(rel)  # still a centre crop, made by an earlier run
    lists["center_crop"].sort()
    processed = len(results) - counts["skipped"]
    return {
        "src": str(src),
        "dst": str(dst),
        "settings": {**asdict(cfg), "workers": workers},
        "complete": True,
        # counts: what this run did with each image (they sum to "images" unless interrupted).
        "counts": {"images": len(images), **counts, "not_processed": len(images) - len(results)},
        "seconds": round(seconds, 2),
        "images_per_second": round(processed / seconds, 1) if seconds > 0 else None,
        # CPU seconds per stage, summed over workers: where the time goes.
        "stage_seconds": {name: round(t, 2) for name, t in zip(STAGES, stage)},
        # lists: files by outcome; center_crop also lists crops kept from an earlier run.
        **lists,
        "other_files": others,  # not images (by extension): left alone
    }
