"""Albumentations pipelines and their bridge into fastai.

* :func:`train_pipeline` / :func:`eval_pipeline` are Albumentations pipelines;
* :class:`AlbumentationsTransform` bridges them into a fastai ``DataBlock`` as *one* item
  transform that picks the train or eval pipeline by split;
* :class:`EvalTransform` is what verification embeds with.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

# (fvloss/__init__.py has set NO_ALBUMENTATIONS_UPDATE: albumentations' import makes no network call)
import albumentations as A
import cv2
import numpy as np
import torch
from fastai.data.transforms import Transform
from fastai.torch_core import TensorImage

__all__ = [
    "train_pipeline",
    "eval_pipeline",
    "to_tensor",
    "EvalTransform",
    "AlbumentationsTransform",
]


def _normalize(mean: float, std: float) -> A.Normalize:
    return A.Normalize(mean=(mean,) * 3, std=(std,) * 3, max_pixel_value=255.0)


def train_pipeline(
    size: int = 160,
    hflip: float = 0.5,
    mean: float = 0.5,
    std: float = 0.5,
    extra: list[dict[str, Any]] | None = None,
) -> A.Compose:
    """The assignment's training pipeline: Resize, HorizontalFlip, Normalize(0.5, 0.5).

    ``extra`` adds Albumentations transforms by name before the normalisation, e.g.
    ``[{"transform": "RandomBrightnessContrast", "p": 0.3}]`` (how TOML recipes configure it).
    """
    tfms: list[A.BasicTransform] = [A.Resize(size, size)]
    if hflip:
        tfms.append(A.HorizontalFlip(p=hflip))
    for spec in extra or []:
        tfms.append(_transform_from_spec(spec))
    return A.Compose([*tfms, _normalize(mean, std)])


class ZeroPadCrop(A.ImageOnlyTransform):
    """AdaFace's crop augmentation (``dataset/augmenter.py``): a ``RandomResizedCrop``
    rectangle (area ``scale``, aspect ``ratio``) is kept where it is and at its size, the rest of
    the image set to zero, so the face's scale does not change but parts of it go missing."""

    def __init__(self, scale=(0.2, 1.0), ratio=(0.75, 4 / 3), p: float = 0.5):
        super().__init__(p=p)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        h, w = params["shape"][:2]
        for _ in range(10):  # torchvision's RandomResizedCrop.get_params
            area = h * w * self.py_random.uniform(*self.scale)
            aspect = math.exp(
                self.py_random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]))
            )
            cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                return {
                    "box": (
                        self.py_random.randint(0, h - ch),
                        self.py_random.randint(0, w - cw),
                        ch,
                        cw,
                    )
                }
        return {"box": (0, 0, h, w)}  # (its fallback is a centre crop; rare, kept whole here)

    def apply(self, img: np.ndarray, box=(0, 0, 0, 0), **params) -> np.ndarray:
        i, j, ch, cw = box
        out = np.zeros_like(img)
        out[i : i + ch, j : j + cw] = img[i : i + ch, j : j + cw]
        return out


class LowResolution(A.ImageOnlyTransform):
    """AdaFace's low-resolution augmentation: shrink to a random share ``side`` of the size and
    back, each way with an interpolation drawn from OpenCV's five (nearest, linear, area, cubic,
    Lanczos)."""

    INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC,
                      cv2.INTER_LANCZOS4)  # fmt: skip

    def __init__(self, side=(0.2, 1.0), p: float = 0.5):
        super().__init__(p=p)
        self.side = tuple(side)

    def get_params(self) -> dict:
        return {"ratio": self.py_random.uniform(*self.side),
                "down": self.py_random.choice(self.INTERPOLATIONS),
                "up": self.py_random.choice(self.INTERPOLATIONS)}  # fmt: skip

    def apply(self, img: np.ndarray, ratio=1.0, down=0, up=0, **params) -> np.ndarray:
        h, w = img.shape[:2]
        small = max(1, int(ratio * h))
        img_small = cv2.resize(img, (small, small), interpolation=down)
        return cv2.resize(img_small, (w, h), interpolation=up)


# fvloss's own transforms, named in experiment files like Albumentations' (and found first)
TRANSFORMS: dict[str, type[A.BasicTransform]] = {
    "ZeroPadCrop": ZeroPadCrop,
    "LowResolution": LowResolution,
}


def _transform_from_spec(spec: dict[str, Any]) -> A.BasicTransform:
    """Build one Albumentations transform from ``{"transform": name, **arguments}``.

    Albumentations only *warns* about an argument it does not know and then ignores it, so a
    typo in an experiment file (``scal = [0.9, 1.1]``) would silently train without that
    augmentation; here it is an error that names the transform and the argument.
    """
    spec = dict(spec)
    name = spec.pop("transform", None)
    if not isinstance(name, str) or not (name in TRANSFORMS or hasattr(A, name)):
        raise ValueError(
            f"unknown albumentations transform {name!r} in {spec} (fvloss's own: {sorted(TRANSFORMS)})"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tfm = (TRANSFORMS.get(name) or getattr(A, name))(**spec)
        except (TypeError, ValueError) as e:
            raise ValueError(f"albumentations {name}: {e}") from None
    for w in caught:
        if "not valid for transform" in str(w.message):
            raise ValueError(f"albumentations {name}: {w.message}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return tfm


def eval_pipeline(size: int = 160, mean: float = 0.5, std: float = 0.5) -> A.Compose:
    """Resize + Normalize, for validation and verification."""
    return A.Compose([A.Resize(size, size), _normalize(mean, std)])


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC float32 -> CHW tensor (no copy of the data beyond the transpose)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class EvalTransform:
    """``RGB uint8 HxWx3 -> normalised CHW float tensor``: what verification embeds with."""

    def __init__(self, size: int = 160, mean: float = 0.5, std: float = 0.5):
        self.pipeline = eval_pipeline(size, mean, std)

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        return to_tensor(self.pipeline(image=img)["image"])


class AlbumentationsTransform(Transform):
    """One fastai item transform holding both pipelines, choosing by split.

    One transform rather than two: a ``DataBlock`` keeps only the last of several item
    transforms of the same class, so a train and a valid instance would collapse into one. The
    output is already normalised float, so the block is a plain ``TransformBlock``, not
    ``ImageBlock`` (whose ``IntToFloatTensor`` would divide by 255 a second time).

    Albumentations draws from generators of its own, which ``torch.manual_seed`` / fastai's
    ``set_seed`` do not reach. So each image's augmentation gets a fresh seed: the one
    :class:`~fvloss.data.seeded.SeededDL` hands it through :meth:`reseed`, a function of (seed,
    epoch, image) that makes the batches independent of workers and of interruptions; in a
    loader that hands none, one draw from torch's generator (then ``set_seed`` fixes it, and each
    DataLoader worker draws from its own per-worker seed).
    """

    split_idx, order = None, 2

    def __init__(self, train: A.Compose, valid: A.Compose, mean: float = 0.5, std: float = 0.5):
        super().__init__()
        self.train, self.valid, self.mean, self.std = train, valid, mean, std
        self._split, self._next_seed = 0, None

    def reseed(self, seed: int) -> None:
        """Use ``seed`` for the next training image (called by :class:`~fvloss.data.seeded.SeededDL`)."""
        self._next_seed = seed

    def _reseed(self, pipe: A.Compose) -> None:
        seed, self._next_seed = self._next_seed, None
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        # one generator pair handed down the whole pipeline: cheaper than set_random_seed,
        # which builds a generator per transform (this costs ~14 us an image here, against
        # ~130 us for the celeba64 augmentation itself)
        pipe.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, b, split_idx: int | None = None, **kwargs):
        self._split = split_idx  # fastai passes 0 for the training set, 1 for validation
        return super().__call__(b, split_idx=split_idx, **kwargs)

    def encodes(self, img: np.ndarray) -> TensorImage:
        pipe = self.train if self._split == 0 else self.valid
        if pipe is self.train:
            self._reseed(pipe)
        return TensorImage(to_tensor(pipe(image=img)["image"]))

    def decodes(self, x: TensorImage) -> TensorImage:
        # back to [0, 1] for show_batch
        return TensorImage((x * self.std + self.mean).clamp(0, 1))
