"""A PNG contact sheet of aligned crops, for a quick look at what alignment produced."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from fvloss.imageio import ImageReadError, read_rgb

__all__ = ["make_grid", "write_preview"]


def make_grid(images: list[np.ndarray], cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile equally sized RGB images row by row on a white background."""
    if not images:
        raise ValueError("no images to tile")
    h, w = images[0].shape[:2]
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def write_preview(root: str | Path, files: list[str], n: int, out: str | Path) -> int:
    """Write a grid of ``n`` of ``root/files`` to ``out`` (PNG); returns how many were tiled.

    The ``n`` files are spread evenly over the sorted list, so the sheet shows many identities
    rather than the first folder's, and is the same on every run.
    """
    if n <= 0 or not files:
        return 0
    files = sorted(files)
    step = len(files) / min(n, len(files))
    picked = [files[int(i * step)] for i in range(min(n, len(files)))]
    tiles = []
    for rel in picked:
        try:
            tiles.append(read_rgb(Path(root) / rel))
        except ImageReadError:
            continue  # a file removed or broken since it was written: show the others
    tiles = [t for t in tiles if t.shape == tiles[0].shape] if tiles else []
    if not tiles:
        return 0
    ok, buf = cv2.imencode(".png", cv2.cvtColor(make_grid(tiles), cv2.COLOR_RGB2BGR))
    if ok:
        Path(out).write_bytes(buf.tobytes())
    return len(tiles) if ok else 0
