"""The 5-point similarity warp onto the ArcFace template, and the centre-crop fallback."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "ARCFACE_TEMPLATE",
    "template",
    "similarity_transform",
    "transform_points",
    "warp_face",
    "center_crop",
]

# ArcFace / insightface 112x112 template, (x, y): right eye, left eye, nose tip, right mouth corner,
# left mouth corner ("right" is the person's right, i.e. image left), the order YuNet and yuface use.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template(size: int = 112) -> np.ndarray:
    """The 5 template points for a ``size`` x ``size`` crop: the 112 template scaled uniformly.

    Uniform scaling keeps the face's proportions and position within the crop the same at every
    size, so a model trained at 64 px sees the same framing as one trained at 112 px.
    """
    if size < 16:
        raise ValueError(f"crop size must be at least 16 px, got {size}")
    return ARCFACE_TEMPLATE * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` to ``dst``.

    Umeyama (1991) closed form; ``src`` and ``dst`` are ``Nx2`` point sets, N >= 2. Returns the
    ``2x3`` matrix M with ``dst ~ M @ [x, y, 1]``. No reflection is allowed: a mirrored face is
    still fitted as a rotation, as in insightface / scikit-image.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two Nx2 point sets of equal shape, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # would be a reflection: flip the weakest axis
        d[1] = -1
    rot = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / len(src)
    if var_src == 0:
        raise ValueError("source points are all identical")
    scale = (s * d).sum() / var_src
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - scale * rot @ src_mean
    return m


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a ``2x3`` affine matrix to ``Nx2`` points."""
    pts = np.asarray(pts, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def warp_face(img: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``img`` so that the 5 ``landmarks`` (``5x2``, x, y) land on the template of ``size``.

    Returns a ``size x size`` crop of the same dtype and channels; outside the image is black, as
    in insightface's alignment. When the face is much larger than the crop the image is first
    shrunk with area averaging, because bilinear warping alone aliases at strong reductions.
    """
    dst = template(size)
    pts = np.asarray(landmarks, np.float64).reshape(5, 2)
    m = similarity_transform(pts, dst)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        h, w = img.shape[:2]
        f = 2 * scale  # leave a 2x reduction to the warp itself
        small = (max(1, round(w * f)), max(1, round(h * f)))
        img = cv2.resize(img, small, interpolation=cv2.INTER_AREA)
        # cv2.resize maps pixel centres: x -> (x + 0.5) * f - 0.5
        pts = (pts + 0.5) * np.array([small[0] / w, small[1] / h]) - 0.5
        m = similarity_transform(pts, dst)
    return cv2.warpAffine(
        img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def center_crop(img: np.ndarray, size: int = 112) -> np.ndarray:
    """The largest centred square of ``img``, resized to ``size`` x ``size`` (the no-face fallback)."""
    h, w = img.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = img[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)
