"""An ONNX face-embedding model behind the :class:`~fvloss.eval.embedder.Embedder` interface.

Works for a run exported by ``fvloss export`` (its preprocessing is read from the file's
metadata) and for third-party models such as insightface's ``w600k_r50.onnx`` /
``glintr100.onnx`` (no metadata: insightface's convention, RGB 112x112 with
``(x - 127.5) / 127.5``). Explicit arguments override both.

onnxruntime is an optional dependency, imported only when an :class:`OnnxEmbedder` is built.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .embedder import Embedder, Preprocess

__all__ = ["METADATA_KEYS", "OnnxEmbedder", "read_fvloss_metadata"]

# The metadata_props that fvloss.export writes; values are JSON text. "fvloss_version" marks a
# file as fvloss's.
METADATA_KEYS = ("fvloss_version", "img_size", "mean", "std", "channels", "arch", "emb_dim", "loss")

# insightface's recognition models: RGB, 112x112, (x - 127.5) / 127.5.
INSIGHTFACE_DEFAULTS = {"size": 112, "mean": 0.5, "std": 0.5, "channels": "rgb"}

_ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            f"OnnxEmbedder needs onnxruntime ({e}): pip install onnxruntime "
            "(onnxruntime-gpu for the CUDA provider)"
        ) from None
    return onnxruntime


def read_fvloss_metadata(custom: dict[str, str]) -> dict[str, Any]:
    """fvloss's preprocessing metadata from an ONNX model's ``metadata_props`` map (JSON values
    decoded; plain strings kept); ``{}`` when the model was not written by fvloss."""
    if "fvloss_version" not in custom:
        return {}
    out: dict[str, Any] = {}
    for k in METADATA_KEYS:
        if k in custom:
            try:
                out[k] = json.loads(custom[k])
            except ValueError:
                out[k] = custom[k]
    return out


def _providers(providers: str | Sequence[str] | None, available: list[str]) -> list[str]:
    """``None`` / ``"cpu"``: CPU only; ``"cuda"``: CUDA then CPU (CPU with a warning when this
    onnxruntime has no CUDA provider); ``"auto"``: CUDA when available; a list: as given."""
    if providers is None or providers == "cpu":
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        if providers not in ("cuda", "auto"):
            raise ValueError(
                f"providers must be 'cpu', 'cuda', 'auto' or a list, got {providers!r}"
            )
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if providers == "cuda":
            warnings.warn(
                "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu); "
                "running on the CPU",
                stacklevel=3,
            )
        return ["CPUExecutionProvider"]
    return list(providers)


def _static(d: Any) -> int | None:
    """A graph dimension as an int when fixed, ``None`` when symbolic or unknown."""
    return d if isinstance(d, int) and d > 0 else None


class OnnxEmbedder(Embedder):
    """An ONNX model mapping ``(B, 3, H, W)`` float images to ``(B, D)`` embeddings.

    Preprocessing (``transform``, a :class:`Preprocess`) is, in order of precedence: the
    arguments given here; the fvloss metadata in the file; insightface's convention (RGB,
    112x112, mean = std = 0.5). A graph with a fixed input size fixes ``size`` (a different
    explicit ``size`` is an error); a graph with a fixed batch size is run in chunks of that
    size (insightface models exported with batch 1 are run one image at a time).

    ``providers``: ``None`` / ``"cpu"`` (default), ``"cuda"`` (CUDA when this onnxruntime has
    it), ``"auto"``, or an onnxruntime provider list. ``threads`` sets onnxruntime's intra-op
    threads (default: onnxruntime's choice).
    """

    def __init__(
        self,
        path: str | Path,
        size: int | tuple[int, int] | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        channels: str | None = None,
        providers: str | Sequence[str] | None = None,
        name: str | None = None,
        threads: int | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model file")
        ort = _import_ort()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3  # errors only: no graph-optimisation chatter on stderr
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                sess_options=opts,
                providers=_providers(providers, ort.get_available_providers()),
            )
        except Exception as e:  # onnxruntime raises its own pybind exception types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{self.path}: not a loadable ONNX model ({msg})") from None
        self.name = name or self.path.stem

        inputs = self.session.get_inputs()
        images = [i for i in inputs if len(i.shape) == 4]
        if len(images) != 1 or len(inputs) != 1:
            desc = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise ValueError(
                f"{self.path}: expected one image input (B, 3, H, W), the model has: {desc}"
            )
        inp = images[0]
        if inp.type not in _ORT_FLOAT_TYPES:
            raise ValueError(f"{self.path}: input {inp.name!r} is {inp.type}, not a float tensor")
        self.input_name, self.input_dtype = inp.name, _ORT_FLOAT_TYPES[inp.type]
        n, c, h, w = (_static(d) for d in inp.shape)
        if c is not None and c != 3:
            raise ValueError(f"{self.path}: input {inp.name!r} {inp.shape} has {c} channels, not 3")
        self.fixed_batch = n  # None: any batch size
        outputs = self.session.get_outputs()
        out = next((o for o in outputs if o.name == "embedding"), outputs[0])
        self.output_name = out.name

        self.metadata = read_fvloss_metadata(self.session.get_modelmeta().custom_metadata_map)
        meta = {
            "size": self.metadata.get("img_size"),
            "mean": self.metadata.get("mean"),
            "std": self.metadata.get("std"),
            "channels": self.metadata.get("channels"),
        }
        given = {"size": size, "mean": mean, "std": std, "channels": channels}
        cfg = {
            k: given[k] if given[k] is not None else meta[k] if meta[k] is not None else d
            for k, d in INSIGHTFACE_DEFAULTS.items()
        }
        graph_hw = (h, w) if h is not None and w is not None else None
        if graph_hw is not None:
            want = (size, size) if isinstance(size, int) else tuple(size) if size else graph_hw
            if tuple(want) != graph_hw:
                raise ValueError(
                    f"{self.path}: the model's input is fixed at {graph_hw[0]}x{graph_hw[1]}, "
                    f"size={size!r} was asked for"
                )
            cfg["size"] = graph_hw
        self.transform = Preprocess(cfg["size"], cfg["mean"], cfg["std"], cfg["channels"])
        self.input_shape = tuple(inp.shape)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` the images are resized to."""
        return self.transform.size

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float32 -> ``(B, D)`` float32 (CPU)."""
        if not (isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] == 3):
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"{self.name}: expected a (B, 3, H, W) batch, got {shape}")
        h, w = self.input_shape[2:]
        if any(_static(d) not in (None, g) for d, g in zip((h, w), x.shape[2:])):
            raise ValueError(
                f"{self.name}: the model takes {h}x{w} images, got a batch of "
                f"{x.shape[2]}x{x.shape[3]} (resize with the embedder's transform)"
            )
        a = np.ascontiguousarray(x.detach().cpu().numpy().astype(self.input_dtype, copy=False))
        b = len(a)
        if self.fixed_batch is None or b == self.fixed_batch:
            out = self._run(a)
        else:  # a graph with a fixed batch size: run in chunks of it, the last one zero-padded
            k, parts = self.fixed_batch, []
            for i in range(0, b, k):
                chunk = a[i : i + k]
                if len(chunk) < k:
                    pad = np.zeros((k - len(chunk), *chunk.shape[1:]), chunk.dtype)
                    parts.append(self._run(np.concatenate([chunk, pad]))[: len(chunk)])
                else:
                    parts.append(self._run(chunk))
            out = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        if not (isinstance(out, np.ndarray) and out.ndim == 2 and len(out) == b):
            shape = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise RuntimeError(
                f"{self.name}: output {self.output_name!r} must be embeddings (B, D); "
                f"got {shape} for B={b}"
            )
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def __repr__(self) -> str:
        batch = "dynamic" if self.fixed_batch is None else self.fixed_batch
        return f"OnnxEmbedder({str(self.path)!r}, batch={batch}, transform={self.transform!r})"
