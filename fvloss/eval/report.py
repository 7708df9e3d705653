"""What evaluation writes and reads back: per-pair score files, verification reports, and the
run folder's ``metrics.json``, each layout defined here once.

* ``RUN/verify/<name>.json`` / ``.png`` / ``.scores.npz`` (:func:`write_outputs`): one
  protocol's full result, its ROC, and its per-pair scores with the digest of the pairs they
  score (:func:`pairs_digest`), which ``fvloss compare`` reuses (:func:`load_scores`);
* ``RUN/metrics.json`` (:class:`RunMetrics`): the training run's settings summary, its
  per-epoch history (one column name per number, :func:`~fvloss.eval.metrics.metric_key`), its
  final numbers, and the final evaluation on each protocol scored during training.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonio import atomic_write, read_json, write_json
from .metrics import VerificationResult
from .plots import plot_roc, score_histogram_figure, worst_pairs_figure
from .protocols import PairSet

__all__ = [
    "RunMetrics",
    "RunScores",
    "load_scores",
    "pairs_digest",
    "weights_file",
    "write_outputs",
]


@dataclass
class RunScores:
    """One run's per-pair scores on a pair set, and where they came from."""

    scores: np.ndarray
    same: np.ndarray
    folds: np.ndarray | None
    digest: str
    source: str


def weights_file(run_dir: Path) -> Path | None:
    """The weights :func:`fvloss.runs.load_run` would read, if any."""
    for p in (run_dir / "model.pth", run_dir / "checkpoints" / "last.pth"):
        if p.is_file():
            return p
    return None


def load_scores(
    path: str | Path,
    digest: str | None = None,
    flip: bool | None = None,
    not_before: float | None = None,
) -> tuple[RunScores | None, str]:
    """Read a ``.scores.npz`` written by :func:`write_outputs`.

    Returns ``(scores, "")``, or ``(None, why)`` when the file is absent or unreadable, was
    made on other pairs than ``digest``, with another ``flip`` setting, or before the time
    ``not_before`` (the weights' modification time: the run has changed since).
    """
    path = Path(path)
    if not path.is_file():
        return None, "no cached scores"
    try:
        with np.load(path, allow_pickle=False) as z:
            scores = np.asarray(z["scores"], dtype=np.float64)
            same = np.asarray(z["same"], dtype=bool)
            folds = np.asarray(z["folds"], dtype=np.int64)
            file_digest = str(z["pairs_sha1"])
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    except (OSError, KeyError, ValueError) as e:
        return None, f"cached scores unreadable ({e})"
    if len(scores) != len(same) or (len(folds) and len(folds) != len(same)):
        return None, "cached scores malformed (array lengths differ)"
    if digest is not None and file_digest != digest:
        return None, "cached scores were made on other pairs"
    if flip is not None and bool(meta.get("flip", False)) != flip:
        return None, f"cached scores were made {'without' if flip else 'with'} --flip"
    if not_before is not None and path.stat().st_mtime < not_before:
        return None, "cached scores are older than the run's weights"
    source = f"cached {path.parent.name}/{path.name}"
    return RunScores(scores, same, folds if len(folds) else None, file_digest, source), ""


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
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    write_json(json_path, {"meta": meta or {}, **result.to_dict()})
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
        # atomic: never a half-written file for compare to trust
        atomic_write(out_dir / f"{stem}.scores.npz", buf.getvalue())
        write_pair_figures(result, scores, pairs, out_dir, stem)
    return json_path, png_path


def write_pair_figures(result: VerificationResult, scores: np.ndarray, pairs: PairSet | None,
                       out_dir: Path, stem: str, title: str | None = None) -> None:  # fmt: skip
    """``stem.hist.png`` (same / different scores, the threshold; titled ``title``, default
    ``stem``) and, when the pairs' images can be read, ``stem.worst.png`` (the hardest false
    accepts and rejects)."""
    same = pairs.same if pairs is not None else None
    if same is None or len(same) != len(scores) or not len(scores):
        return
    score_histogram_figure(scores, same, result.threshold, title or stem).savefig(
        out_dir / f"{stem}.hist.png"
    )
    if pairs.same.all() or not pairs.same.any():
        return
    try:
        fig = worst_pairs_figure(pairs, scores, pairs.load, threshold=result.threshold)
        fig.savefig(out_dir / f"{stem}.worst.png")
    except (OSError, ValueError) as e:  # an image gone since scoring: the figure only is lost
        warnings.warn(f"{out_dir / stem}.worst.png not written: {e}", stacklevel=2)


# ----------------------------------------------------------------------------- metrics.json

# Column names written by fvloss < 0.2 and what they are called now.
_OLD_KEYS = {"tar@far=1e-3": "tar@1e-3", "tar@far=1e-4": "tar@1e-4"}


def _renamed(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        for old, new in _OLD_KEYS.items():
            if k.endswith(old):
                k = k[: -len(old)] + new
        out[k] = v
    return out


@dataclass
class RunMetrics:
    """``RUN/metrics.json``: what a finished training run measured.

    ``history``: one dict per epoch, ``{"epoch": e, "train_loss": ..., "auc": ...}`` with the
    progress table's column names (held-out identities: ``auc``, ``acc``, ``tar@1e-3``,
    ``eer``; a protocol scored during training: the same names behind its prefix, e.g.
    ``cfp-fp_auc``); ``final`` is the last epoch's row; ``evals`` holds each protocol's final
    scalars by its name (``{"pairsDevTrain": {"auc": ..., ...}}``). Times in seconds.
    """

    name: str = ""
    loss: str = ""
    data: str = ""
    run_dir: str = ""
    lr: float | None = None
    precision: str = ""
    device: str = ""
    epochs: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_time_s: float | None = None
    images_per_s: float | None = None
    wall_time_s: float | None = None
    # where the trained epochs' time went (fvloss.callbacks.timing.TimeBreakdown.summary)
    time_breakdown: dict[str, Any] = field(default_factory=dict)
    torch: str = ""
    data_report: dict[str, Any] = field(default_factory=dict)

    FILE = "metrics.json"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/metrics.json`` atomically, as strict JSON."""
        return write_json(Path(run_dir) / self.FILE, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunMetrics:
        """Read a ``metrics.json`` dict, old layouts included: renamed columns are mapped to
        today's names and a ``pairs`` entry (one protocol) becomes ``evals``; unknown keys are
        ignored (a newer fvloss may add some)."""
        known = {f.name for f in fields(cls)}
        d = dict(d)
        d["history"] = [_renamed(h) for h in d.get("history") or []]
        d["final"] = _renamed(d.get("final") or {})
        if "pairs" in d and "evals" not in d:
            p = dict(d["pairs"] or {})
            name = Path(str(p.pop("file", "pairs"))).stem
            d["evals"] = {name: _renamed(p)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def read(cls, run_dir: str | Path) -> RunMetrics | None:
        """``run_dir/metrics.json``, or ``None`` while the run has not finished."""
        d = read_json(Path(run_dir) / cls.FILE)
        return None if d is None else cls.from_dict(d)
