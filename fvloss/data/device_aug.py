"""The training augmentation as batched torch ops on the training device.

Albumentations augments one image at a time in Python, in DataLoader workers that share the
CPU with the training step (on 2 cores they oversubscribe it), and a GPU waits for them. For the
transforms fvloss's recipes use, :class:`DeviceAugment` does the same on a whole uint8 batch
where the model runs: horizontal flip, ``Affine`` (scale, translation, rotation; bilinear,
zero fill), ``RandomBrightnessContrast`` (``x * alpha + beta * 255``, clipped) and ``ToGray``
(ITU-R 601 weights), in Albumentations' order, then the normalisation.

It is built from the *parsed* Albumentations transforms (:meth:`DeviceAugment.from_pipeline`),
so a recipe's ``extra_aug`` means the same on both paths; a transform or an argument it does
not implement makes ``from_pipeline`` return ``None`` with the reason, and the run keeps the
per-image Albumentations path. The two are equal in distribution, not bit for bit
(``tests/data/test_device_aug.py`` compares statistics of the augmented batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

__all__ = ["DeviceAugment"]

_GRAY = (0.299, 0.587, 0.114)


@dataclass
class DeviceAugment:
    """Per-sample random augmentation of a uint8 ``(B, 3, H, W)`` batch, returning normalised
    float32. Each field is the Albumentations transform's parameter of the same meaning; a
    probability of 0 leaves that transform out."""

    hflip: float = 0.5
    affine_p: float = 0.0
    scale_x: tuple[float, float] = (1.0, 1.0)
    scale_y: tuple[float, float] = (1.0, 1.0)
    translate_x: tuple[float, float] = (0.0, 0.0)  # fractions of the width
    translate_y: tuple[float, float] = (0.0, 0.0)
    rotate: tuple[float, float] = (0.0, 0.0)  # degrees
    bc_p: float = 0.0
    brightness: tuple[float, float] = (0.0, 0.0)  # beta, in units of 255
    contrast: tuple[float, float] = (0.0, 0.0)  # alpha - 1
    gray_p: float = 0.0
    mean: float = 0.5
    std: float = 0.5

    # -- from an Albumentations pipeline ---------------------------------------------------
    @classmethod
    def from_pipeline(
        cls, pipe, mean: float = 0.5, std: float = 0.5
    ) -> tuple[DeviceAugment | None, str]:
        """``(augment, "")`` for a ``train_pipeline`` whose transforms it implements, else
        ``(None, why not)``. The first transform must be the Resize (done once, when the
        images are loaded into memory) and the last the Normalize."""
        tfms = list(pipe.transforms)
        if not tfms or not isinstance(tfms[0], A.Resize) or not isinstance(tfms[-1], A.Normalize):
            return None, "the pipeline does not start with Resize and end with Normalize"
        kw: dict = {"hflip": 0.0, "mean": mean, "std": std}
        order = ["HorizontalFlip", "Affine", "RandomBrightnessContrast", "ToGray"]
        last = -1
        for t in tfms[1:-1]:
            name = type(t).__name__
            if name not in order:
                return None, f"{name} has no device version"
            if order.index(name) <= last:
                return None, f"{name} after {order[last]}: only the order {order} is implemented"
            last = order.index(name)
            why = getattr(cls, f"_parse_{name}")(t, kw)
            if why:
                return None, f"{name}: {why}"
        return cls(**kw), ""

    @staticmethod
    def _parse_HorizontalFlip(t, kw: dict) -> str:
        kw["hflip"] = float(t.p)
        return ""

    @staticmethod
    def _parse_Affine(t, kw: dict) -> str:
        if t.translate_px is not None and any(v != 0 for r in t.translate_px.values() for v in r):
            return "translate_px is not implemented (use translate_percent)"
        if any(v != 0 for r in t.shear.values() for v in r):
            return "shear is not implemented"
        if t.interpolation != cv2.INTER_LINEAR or t.border_mode != cv2.BORDER_CONSTANT:
            return "only bilinear interpolation with a constant border is implemented"
        fill = t.fill if isinstance(t.fill, (tuple, list)) else (t.fill,)
        if any(f != 0 for f in fill) or t.fit_output or t.keep_ratio or t.balanced_scale:
            return "only fill=0, fit_output, keep_ratio and balanced_scale off are implemented"
        tp = t.translate_percent or {"x": (0.0, 0.0), "y": (0.0, 0.0)}
        kw.update(
            affine_p=float(t.p), scale_x=tuple(t.scale["x"]), scale_y=tuple(t.scale["y"]),
            translate_x=tuple(tp["x"]), translate_y=tuple(tp["y"]), rotate=tuple(t.rotate),
        )  # fmt: skip
        return ""

    @staticmethod
    def _parse_RandomBrightnessContrast(t, kw: dict) -> str:
        if not t.brightness_by_max or t.ensure_safe_range:
            return "only brightness_by_max=True, ensure_safe_range=False are implemented"
        kw.update(
            bc_p=float(t.p), brightness=tuple(t.brightness_limit), contrast=tuple(t.contrast_limit)
        )
        return ""

    @staticmethod
    def _parse_ToGray(t, kw: dict) -> str:
        method = getattr(t, "method", "weighted_average")
        if method != "weighted_average" or getattr(t, "num_output_channels", 3) != 3:
            return "only the weighted average to 3 channels is implemented"
        kw["gray_p"] = float(t.p)
        return ""

    # -- the augmentation -------------------------------------------------------------------
    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> torch.Tensor:
        """Augment uint8 ``x`` ``(B, 3, H, W)`` on its device; ``generator`` (on that device)
        draws every random number, so one seed fixes the batch's augmentation. ``share =
        (rank, world_size)``: ``x`` is rows ``rank, rank + W, ...`` of a global batch of
        ``B * W``; the draws are the global batch's, so each row gets what it would get there."""
        b, dev = x.shape[0], x.device
        rank, world = share

        def draw() -> torch.Tensor:  # U(0, 1) per row of the global batch, ours kept
            return torch.rand(b * world, device=dev, generator=generator)[rank::world]

        def u(lo_hi: tuple[float, float]) -> torch.Tensor:  # U(lo, hi) per sample
            lo, hi = lo_hi
            return lo + (hi - lo) * draw()

        def coin(p: float) -> torch.Tensor:
            return draw() < p

        x = x.float()
        if self.hflip:
            x = torch.where(coin(self.hflip)[:, None, None, None], x.flip(3), x)
        if self.affine_p:
            x = self._affine(x, coin(self.affine_p), u)
        if self.bc_p:
            on = coin(self.bc_p)
            alpha = torch.where(on, 1.0 + u(self.contrast), 1.0)
            beta = torch.where(on, u(self.brightness) * 255.0, 0.0)
            x = (x * alpha[:, None, None, None] + beta[:, None, None, None]).clamp(0, 255)
        if self.gray_p:
            w = torch.tensor(_GRAY, device=dev)[None, :, None, None]
            gray = (x * w).sum(1, keepdim=True).expand_as(x)
            x = torch.where(coin(self.gray_p)[:, None, None, None], gray, x)
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8-valued ``x`` to the model's input: ``(x / 255 - mean) / std``, float32."""
        return (x.float() / 255.0 - self.mean) / self.std

    def _affine(self, x: torch.Tensor, on: torch.Tensor, u) -> torch.Tensor:
        # Albumentations' Affine maps input to output about the image centre: p_out = R S p_in
        # + t (t in pixels). grid_sample needs the inverse (output -> input) in normalised
        # coordinates, where a pixel offset t becomes 2 t / size.
        h, w = x.shape[-2:]
        # Albumentations' positive angle turns the other way in grid_sample's coordinates
        sx, sy, ang = u(self.scale_x), u(self.scale_y), -u(self.rotate) * (math.pi / 180)
        # its translation is whole pixels, int(fraction x size); in [-1, 1] units 2 px / size
        tx = 2 * torch.trunc(u(self.translate_x) * w) / w
        ty = 2 * torch.trunc(u(self.translate_y) * h) / h
        one, zero = torch.ones_like(sx), torch.zeros_like(sx)
        sx, sy, ang = torch.where(on, sx, one), torch.where(on, sy, one), torch.where(on, ang, zero)
        tx, ty = torch.where(on, tx, zero), torch.where(on, ty, zero)
        cos, sin = torch.cos(ang), torch.sin(ang)
        # forward A = R(ang) @ diag(sx, sy); inverse = diag(1/sx, 1/sy) @ R(-ang)
        inv = torch.stack(
            [torch.stack([cos / sx, sin / sx], 1), torch.stack([-sin / sy, cos / sy], 1)], 1
        )
        shift = -(inv @ torch.stack([tx, ty], 1)[:, :, None])
        theta = torch.cat([inv, shift], 2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return torch.where(on[:, None, None, None], out, x)
