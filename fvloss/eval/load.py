"""Whatever names a model, as an :class:`~fvloss.eval.embedder.Embedder`: a torch module, an
embedder, a run folder (:func:`fvloss.runs.load_run`) or an ``.onnx`` file
(:class:`~fvloss.eval.onnx.OnnxEmbedder`). Every command that scores a model takes it here."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..runs import load_run
from .embedder import Embedder, TorchEmbedder, Transform
from .onnx import OnnxEmbedder

__all__ = ["as_embedder"]


def as_embedder(
    model: nn.Module | Embedder | str | Path,
    transform: Transform | None = None,
    device: str | torch.device | None = None,
    **onnx_options,
) -> Embedder:
    """An :class:`Embedder` from a torch module, an embedder, a run folder or an ``.onnx`` file.

    ``transform`` overrides the embedder's own preprocessing when given; ``onnx_options``
    (``size``, ``mean``, ``std``, ``channels``) configure an ONNX model's preprocessing.
    """
    if isinstance(model, Embedder):
        if transform is not None:
            model.transform = transform
        return model
    if isinstance(model, nn.Module):
        return TorchEmbedder(model, transform, device)
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        emb = OnnxEmbedder(path, **onnx_options)
    elif path.is_dir():
        run = load_run(path, device=device)
        emb = TorchEmbedder(run.model, run.eval_transform, device, name=path.name)
    else:
        raise FileNotFoundError(f"{path}: neither a run folder nor an .onnx model")
    if transform is not None:
        emb.transform = transform
    return emb
