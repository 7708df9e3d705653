"""Reading a finished run folder back: its config, its embedder and its eval transform."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastcore.foundation import L
from torch import nn

from .bodies.insightface import load_insightface
from .data.transforms import EvalTransform
from .model import EmbeddingNet

__all__ = ["Run", "init_weights", "load_run"]


@dataclass
class Run:
    """A trained run: ``model`` (the embedder, eval mode), ``eval_transform``, ``config``,
    ``metrics`` (``metrics.json``, empty while the run is unfinished)."""

    path: Path
    config: dict[str, Any]
    model: nn.Module
    eval_transform: EvalTransform
    metrics: dict[str, Any]


def _load_weights(path: Path, map_location: torch.device | str = "cpu") -> dict:
    """``torch.load`` with ``weights_only=True``; a fastai checkpoint saved with its optimizer
    (``checkpoints/last.pth``) also holds fastcore ``L`` lists and numpy scalars, allowed here."""
    dtypes = {type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)}
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed core to _core
    allowed = [L, np.dtype, core.multiarray.scalar, *dtypes]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or a pickle carrying code: refused
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{path}: not a readable weights file ({type(e).__name__}: {first[:200]})"
        ) from None


def load_run(
    run_dir: str | Path, device: torch.device | str | None = None, weights: str = "model.pth"
) -> Run:
    """Load ``run_dir/model.pth`` (or ``checkpoints/last.pth`` when the run has not finished).

    Only the embedder's weights are used: heads and center-loss centers belong to the training
    identities and play no part in verification.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: not a run folder (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    path = run_dir / weights
    if not path.exists():
        path = run_dir / "checkpoints" / "last.pth"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no weights (model.pth or checkpoints/last.pth)")
    state = _load_weights(path)
    state = state.get("model", state)  # checkpoints saved with the optimizer nest the weights
    emb_state = {
        k.removeprefix("embedder."): v for k, v in state.items() if k.startswith("embedder.")
    }
    model = EmbeddingNet(
        cfg["arch"], cfg["emb_dim"], pretrained=False, dropout=cfg.get("dropout", 0.0),
        img_size=cfg["img_size"],
    )  # fmt: skip
    model.load_state_dict(emb_state)
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    model.to(device).eval()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return Run(
        run_dir, cfg, model, EvalTransform(cfg["img_size"], cfg["mean"], cfg["std"]), metrics
    )


def init_weights(source: str, arch: str) -> dict[str, torch.Tensor]:
    """The embedder weights ``init`` names, for fine-tuning: ``insightface:PATH.pth`` (an
    arcface_torch backbone, :func:`fvloss.bodies.insightface.load_insightface`) or a run folder
    (its ``model.pth``, or its last checkpoint). Keys are :class:`~fvloss.model.EmbeddingNet`'s."""
    if source.startswith("insightface:"):
        return load_insightface(source.removeprefix("insightface:"), arch)
    run_dir = Path(source)
    path = run_dir / "model.pth"
    if not path.exists():
        path = run_dir / "checkpoints" / "last.pth"
    if not path.exists():
        raise FileNotFoundError(
            f"{source}: init must be a run folder (with model.pth) or insightface:PATH.pth"
        )
    state = _load_weights(path)
    state = state.get("model", state)
    return {k.removeprefix("embedder."): v for k, v in state.items() if k.startswith("embedder.")}
