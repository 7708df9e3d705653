"""One embedder interface for everything that scores faces: a trained run, any torch module,
or an exported / pretrained ONNX model (:class:`fvloss.eval.onnx.OnnxEmbedder`);
:func:`fvloss.eval.load.as_embedder` makes one from whatever names a model.

An :class:`Embedder` owns its preprocessing (``transform``: an ``HxWx3`` uint8 RGB image to a
``(3, H, W)`` float32 tensor) and maps a batch of such tensors to embeddings. The evaluation
code (:mod:`fvloss.eval.score`) only ever talks to this interface, so a pretrained insightface
model stands in the same table as the user's runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import nn

__all__ = ["Embedder", "Preprocess", "TorchEmbedder", "model_device"]

Transform = Callable[[np.ndarray], torch.Tensor]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-less model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


class Preprocess:
    """Resize to ``size`` (bilinear), optionally swap to BGR, then ``(x / 255 - mean) / std``.

    insightface's models take RGB 112x112 with mean = std = 0.5 (``(x - 127.5) / 127.5``): the
    defaults here. ``mean`` and ``std`` are one number or one per channel (in the model's
    channel order).
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 112,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
        channels: str = "rgb",
    ):
        if channels not in ("rgb", "bgr"):
            raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
        self.size = (size, size) if isinstance(size, int) else tuple(size)  # (h, w)
        self.mean = np.broadcast_to(np.asarray(mean, np.float32), (3,)).copy()
        self.std = np.broadcast_to(np.asarray(std, np.float32), (3,)).copy()
        self.channels = channels

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        h, w = self.size
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.channels == "bgr":
            img = img[..., ::-1]
        x = (img.astype(np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return (
            f"Preprocess(size={self.size}, mean={self.mean.tolist()}, std={self.std.tolist()}, "
            f"channels={self.channels!r})"
        )


class Embedder:
    """Maps preprocessed batches to embeddings; use it as a context manager around a pass.

    Subclasses implement :meth:`embed_batch`; ``transform`` is the preprocessing of one image
    and ``name`` labels the model in reports.
    """

    transform: Transform | None = None
    name: str = "model"

    def embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float32 (CPU) -> ``(B, D)`` float32 (CPU)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def running(self) -> Iterator[Embedder]:
        """Set up for a pass over many batches (a torch model: eval mode, no autograd)."""
        yield self

    def width(self) -> int:
        """The embedding width: one blank image through the preprocessing and the model."""
        if self.transform is None:
            raise ValueError(f"{self.name}: the embedder has no transform (preprocessing)")
        x = self.transform(np.full((112, 112, 3), 127, np.uint8))[None]
        with self.running():
            return int(self.embed_batch(x).shape[1])


class TorchEmbedder(Embedder):
    """A torch module that, in eval mode, maps ``(B, 3, H, W)`` images to ``(B, D)``.

    Batches go to ``device`` (default: the model's) in the model's dtype; the model's train /
    eval mode is restored after each pass.
    """

    def __init__(
        self,
        model: nn.Module,
        transform: Transform | None = None,
        device: str | torch.device | None = None,
        name: str = "model",
    ):
        self.model, self.transform, self.name = model, transform, name
        self.device = torch.device(device) if device is not None else None

    @contextlib.contextmanager
    def running(self) -> Iterator[TorchEmbedder]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield self
        finally:
            self.model.train(was_training)

    def embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        device = self.device or model_device(self.model)
        e = self.model(x.to(device, _model_dtype(self.model), non_blocking=True))
        if not (isinstance(e, torch.Tensor) and e.ndim == 2 and len(e) == len(x)):
            shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise TypeError(
                "the model in eval mode must map (B, 3, H, W) to embeddings (B, D); "
                f"got {shape} for B={len(x)}"
            )
        return e.float().cpu()
