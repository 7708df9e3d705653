"""Export a trained run's embedder to ONNX, and check the file against PyTorch.

:func:`export_onnx` (``fvloss export RUN --onnx OUT.onnx``) writes only the embedder
(:class:`~fvloss.model.EmbeddingNet`, eval mode, float32): input ``input`` ``(B, 3, H, W)``,
output ``embedding`` ``(B, D)``, batch axis dynamic. The preprocessing it was trained with
(``img_size``, ``mean``, ``std``, ``channels`` = ``"rgb"``) and the run's ``arch`` /
``emb_dim`` / ``loss`` / fvloss version go into the model's ``metadata_props`` (JSON values),
where :class:`fvloss.eval.onnx.OnnxEmbedder` picks them up, so that

    fvloss verify OUT.onnx ...

embeds exactly as the run folder does. The file is checked (onnxruntime against PyTorch on
random batches of several sizes, 1 included) before it replaces anything at ``OUT``.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .eval.onnx import OnnxEmbedder
from .jsonio import atomic_write
from .model import FaceNet
from .runs import Run, load_run

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "TOLERANCE", "check_onnx", "export_onnx"]

TOLERANCE = 1e-4  # max |difference| of L2-normalised embeddings that `fvloss export` accepts
INPUT_NAME, OUTPUT_NAME = "input", "embedding"

# Which torch exporter, and why (torch 2.14, onnxscript 0.7): the torch.export-based exporter
# (`dynamo=True`, torch's default since 2.9) only implements opset >= 18; asked for 17 it logs
# a warning, fails its own down-conversion with a printed traceback and silently keeps opset 18.
# The TorchScript exporter (`dynamo=False`) writes opset 17 exactly and 4x faster, with only
# two DeprecationWarnings about itself (hidden below by message). Both give the same graph
# numerically for these ResNets (max |diff| to PyTorch ~1e-6). So: opset <= 17 (the default,
# which older runtimes and TensorRT 8.x read) -> TorchScript exporter; opset >= 18 ->
# torch.export exporter (clean, no warnings, needs onnxscript).
_DYNAMO_MIN_OPSET = 18
_LEGACY_WARNINGS = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
)


def _embedder_of(model_or_run: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The embedder module and the run's config (``{}`` for a bare module)."""
    if isinstance(model_or_run, nn.Module):
        # a FaceNet (embedder + classification head): only the embedder is exported
        return (model_or_run.embedder if isinstance(model_or_run, FaceNet) else model_or_run), {}
    if isinstance(model_or_run, (str, Path)):
        model_or_run = load_run(model_or_run, device="cpu")
    if isinstance(model_or_run, Run):
        return model_or_run.model, dict(model_or_run.config)
    raise TypeError(
        f"export needs a run folder, a Run or an nn.Module, got {type(model_or_run).__name__}"
    )


def _cpu_copy(model: nn.Module) -> nn.Module:
    """A float32, eval-mode CPU copy: the caller's model keeps its device, dtype and mode."""
    return copy.deepcopy(model).cpu().float().eval()


def _metadata(cfg: dict[str, Any], img_size: Any, mean: Any, std: Any) -> dict[str, str]:
    meta = {
        "fvloss_version": __version__,
        "img_size": img_size,
        "mean": mean,
        "std": std,
        "channels": "rgb",
        "arch": cfg.get("arch"),
        "emb_dim": cfg.get("emb_dim"),
        "loss": cfg.get("loss"),
    }
    return {k: json.dumps(v) for k, v in meta.items() if v is not None}


def _export_proto(model: nn.Module, x: torch.Tensor, opset: int, dynamic_batch: bool):
    """The ``onnx.ModelProto`` of ``model`` traced on ``x`` (see the note on the exporters)."""
    import onnx

    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    if opset >= _DYNAMO_MIN_OPSET:
        dyn = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
        program = torch.onnx.export(
            model, (x,), None, dynamo=True, opset_version=opset, dynamic_shapes=dyn,
            external_data=False, verbose=False, **names,
        )  # fmt: skip
        return program.model_proto
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        for message in _LEGACY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(
            model, (x,), buf, dynamo=False, opset_version=opset, dynamic_axes=axes,
            do_constant_folding=True, **names,
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def export_onnx(
    model_or_run: Any,
    path: str | Path,
    img_size: int | tuple[int, int] | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    mean: float | list[float] | None = None,
    std: float | list[float] | None = None,
) -> Path:
    """Write the embedder of ``model_or_run`` (a run folder, a :class:`~fvloss.runs.Run`, an
    ``EmbeddingNet`` or a ``FaceNet``) to ``path`` as ONNX, atomically; returns ``path``.

    ``img_size``, ``mean`` and ``std`` default to the run's config (a bare module needs
    ``img_size``; its ``mean`` / ``std`` are then left out of the metadata unless given).
    ``dynamic_batch=False`` fixes the batch size at 1.
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs the onnx package ({e}): pip install onnx") from None
    model, cfg = _embedder_of(model_or_run)
    img_size = img_size if img_size is not None else cfg.get("img_size")
    if img_size is None:
        raise ValueError("img_size is needed to export a module that is not a run")
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    mean = mean if mean is not None else cfg.get("mean")
    std = std if std is not None else cfg.get("std")
    newest = onnx.defs.onnx_opset_version()
    if not 9 <= opset <= newest:
        raise ValueError(f"opset {opset} is out of range: 9 to {newest} (17 is the default)")
    if opset >= _DYNAMO_MIN_OPSET:
        try:
            import onnxscript  # noqa: F401  (torch's opset >= 18 exporter is built on it)
        except ImportError as e:
            raise ImportError(
                f"exporting opset {opset} needs onnxscript ({e}): pip install onnxscript, "
                "or use opset 17"
            ) from None
    model = _cpu_copy(model)
    # batch 2 for a dynamic axis: torch.export specialises a dimension traced at size 1
    x = torch.zeros(2 if dynamic_batch else 1, 3, h, w)
    with torch.no_grad():
        proto = _export_proto(model, x, opset, dynamic_batch)
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:  # torch's exporters fall back to another opset rather than fail
        raise ValueError(f"torch exported opset {got}, not the opset {opset} asked for")
    del proto.metadata_props[:]
    for k, v in _metadata(
        cfg, img_size if isinstance(img_size, int) else [h, w], mean, std
    ).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = (
        f"fvloss {__version__} embedder ({cfg.get('arch', type(model).__name__)}): "
        f"{INPUT_NAME} (B, 3, {h}, {w}) -> {OUTPUT_NAME} (B, D)"
    )
    onnx.checker.check_model(proto)
    return atomic_write(path, proto.SerializeToString())


def _l2n(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def check_onnx(
    run: Any,
    onnx_path: str | Path,
    n: int = 8,
    seed: int = 0,
    batch_sizes: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """onnxruntime (CPU) against PyTorch (float32, CPU) on the same ``n`` random images.

    The images are uniform in [0, 1] normalised with the model's own mean / std (the range
    real inputs have), embedded in batches of 1, 3 and ``n`` (or ``batch_sizes``; a model with
    a fixed batch is run in chunks of it). Returns ``max_abs_diff`` (raw embeddings),
    ``max_abs_diff_l2`` (L2-normalised), ``max_abs`` (the raw embeddings' scale), ``ok``
    (``max_abs_diff_l2 <= TOLERANCE``) and the settings used.
    """
    model, _ = _embedder_of(run)
    model = _cpu_copy(model)
    emb = OnnxEmbedder(onnx_path, providers="cpu")
    h, w = emb.size
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, h, w, 3, generator=g)
    mean, std = torch.from_numpy(emb.transform.mean), torch.from_numpy(emb.transform.std)
    x = ((imgs - mean) / std).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        ref = model(x).numpy()
    sizes = batch_sizes or tuple(sorted({1, min(3, n), n}))
    diff = diff_l2 = 0.0
    for bs in sizes:
        out = np.concatenate([emb.embed_batch(x[i : i + bs]).numpy() for i in range(0, n, bs)])
        if out.shape != ref.shape:
            raise RuntimeError(f"{onnx_path}: ONNX gives {out.shape}, PyTorch {ref.shape}")
        diff = max(diff, float(np.abs(out - ref).max()))
        diff_l2 = max(diff_l2, float(np.abs(_l2n(out) - _l2n(ref)).max()))
    return {
        "n": n,
        "batch_sizes": list(sizes),
        "fixed_batch": emb.fixed_batch,
        "max_abs_diff": diff,
        "max_abs_diff_l2": diff_l2,
        "max_abs": float(np.abs(ref).max()),
        "tolerance": TOLERANCE,
        "ok": diff_l2 <= TOLERANCE,
    }
