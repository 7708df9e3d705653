"""Image decoding with OpenCV, with errors that name the file.

Every image fvloss reads (training data, verification pairs, alignment input) goes through
:func:`read_rgb`, so grayscale / RGBA / palette / 16-bit files and truncated files behave the
same everywhere.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "ImageReadError",
    "decode_rgb",
    "read_rgb",
    "check_image",
    "check_image_bytes",
    "IMAGE_EXTENSIONS",
    "image_files",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def image_files(folder: str | Path) -> list[Path]:
    """Every image under ``folder`` (any depth), sorted, hidden files left out."""
    return sorted(
        p
        for p in Path(folder).rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


class ImageReadError(OSError):
    """An image file could not be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


_MAGIC = (b"\xff\xd8", b"\x89PNG", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"GIF8")


def _truncation(data: bytes) -> str | None:
    """Return a reason if the encoded bytes (or their first and last 64 bytes) are cut short.

    OpenCV decodes a truncated JPEG without error (libjpeg fills the missing rows with grey and
    prints a warning), so a cut file would silently become a half-grey training image. A JPEG
    must end with the EOI marker (FF D9), a PNG with its IEND chunk.
    """
    if data[:2] == b"\xff\xd8":
        if b"\xff\xd9" not in data[-64:].rstrip(b"\x00\r\n "):
            return "truncated JPEG (no end-of-image marker)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-32:]:
            return "truncated PNG (no IEND chunk)"
    return None


def check_image(path: str | Path) -> str | None:
    """A cheap check that reads only the first and last 64 bytes: ``None`` when ``path`` looks
    like a complete image, else the reason it does not (used to vet large data sets up front;
    :func:`read_rgb` still catches files that are corrupt in the middle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(size - 64, 0))
            tail = f.read()
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"
    return check_image_bytes(head[:8] + tail)


def check_image_bytes(data: bytes) -> str | None:
    """:func:`check_image` for encoded bytes in memory (e.g. a RecordIO record): ``None`` when
    they start with an image signature and are not cut short, else the reason. Only the first 8
    and last 64 bytes are looked at, so ``head[:8] + tail[-64:]`` of a larger blob is enough."""
    if not data:
        return "empty file"
    if not data.startswith(_MAGIC):
        return "not an image (unknown file signature)"
    return _truncation(data[:8] + data[-64:])


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode ``path`` to an ``HxWx3`` uint8 RGB array.

    Grayscale, gray+alpha, RGBA, palette and 16-bit images are converted to 8-bit RGB (alpha is
    dropped). Raises :class:`ImageReadError` naming the file for missing, empty, undecodable or
    truncated files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from e
    return decode_rgb(data, path)


def decode_rgb(data: bytes | np.ndarray, name: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (a JPEG/PNG/... held in memory: a RecordIO record, an
    insightface ``.bin`` entry) to ``HxWx3`` uint8 RGB, exactly as :func:`read_rgb` decodes a
    file. ``name`` (e.g. ``"train.rec, key 17"``) is what an :class:`ImageReadError` names."""
    buf = (
        np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    )
    buf = np.ascontiguousarray(buf, dtype=np.uint8).reshape(-1)
    if not buf.size:
        raise ImageReadError(name, "empty file")
    reason = _truncation(buf[:8].tobytes() + buf[-64:].tobytes())
    if reason:
        raise ImageReadError(name, reason)
    # imdecode from bytes (not imread) so that non-ASCII paths work on every platform.
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageReadError(name, "not a decodable image")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(img[..., 0]), cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
