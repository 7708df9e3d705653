"""Face detectors behind one small interface: ``detect(rgb) -> list[Face]``.

Two back-ends, both returning a box and 5 landmarks per face in the template's order (right eye,
left eye, nose tip, right mouth corner, left mouth corner; "right" = the person's right = image
left):

- ``yuface``: libfacedetection's CNN packaged on PyPI (BSD-3), weights inside the wheel;
- ``yunet``: OpenCV's ``cv2.FaceDetectorYN`` running a YuNet ONNX model given by path. fvloss
  never downloads it; :data:`YUNET_HELP` says where to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MIN_SCORE",
    "DETECTORS",
    "YUNET_HELP",
    "Detector",
    "DetectorUnavailable",
    "Face",
    "YuFaceDetector",
    "YuNetDetector",
    "detect_faces",
    "make_detector",
    "pick_face",
]

DETECTORS = ("yuface", "yunet")

# YuNet on the 6,300 CelebA-wild photos: a face with score >= 0.9 (OpenCV's default) in 5,922,
# >= 0.6 in 6,276, >= 0.3 in 6,288. 0.6 keeps nearly all real faces; the few extra detections it
# lets through are mostly background faces, which pick_face passes over.
DEFAULT_MIN_SCORE = 0.6

YUNET_HELP = (
    "the yunet detector needs a YuNet ONNX model file: pass --model PATH. fvloss does not download "
    "it. Get yunet_s_640_640.onnx from libfacedetection.train "
    "(https://github.com/ShiqiYu/libfacedetection.train, folder onnx/) or "
    "face_detection_yunet_2023mar.onnx from the OpenCV Zoo "
    "(https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet). "
    "Or use --detector yuface (pip install yuface), which needs no model file."
)


class DetectorUnavailable(RuntimeError):
    """A detector cannot be created (missing package or model file); the message says how to fix it."""


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates."""

    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: np.ndarray  # 5x2 float (x, y), template order
    score: float  # detector confidence in [0, 1]


class Detector(Protocol):
    """Anything with a ``name`` and ``detect(rgb) -> list[Face]`` (HxWx3 uint8 RGB input)."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


class YuNetDetector:
    """OpenCV ``FaceDetectorYN`` with a YuNet ONNX model (about 3-10 ms per 250-320 px image)."""

    name = "yunet"

    def __init__(self, model: str | Path, min_score: float = DEFAULT_MIN_SCORE):
        model = Path(model)
        if not model.is_file():
            raise DetectorUnavailable(f"YuNet model not found: {model}. {YUNET_HELP}")
        # OpenCV 5 warns on every creation that the new graph engine ignores targets: noise.
        old = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._net = cv2.FaceDetectorYN.create(str(model), "", (320, 320), min_score, 0.3, 5000)
        except cv2.error as e:
            raise DetectorUnavailable(f"cannot load YuNet model {model}: {e}") from e
        finally:
            cv2.utils.logging.setLogLevel(old)
        self.model = str(model)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        self._net.setInputSize((w, h))  # the network is reshaped to each image's size
        _, rows = self._net.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if rows is None:
            return []
        # row: x, y, w, h, 5 x (x, y) landmarks, score
        return [
            Face(tuple(map(float, r[:4])), r[4:14].reshape(5, 2).astype(np.float64), float(r[14]))
            for r in rows
        ]


class YuFaceDetector:
    """libfacedetection via the ``yuface`` wheel (weights built in; no model file needed)."""

    name = "yuface"

    def __init__(self, min_score: float = DEFAULT_MIN_SCORE):
        # libfacedetection runs OpenMP threads on every core, and they spin while waiting: beside
        # other worker processes or other work that costs 50-100x (measured on 2 busy cores:
        # 430 ms instead of 6.5 ms per 250 px image). Parallelism comes from worker processes,
        # so one thread each. The wheel's own libgomp reads OMP_NUM_THREADS once, when it is
        # loaded, so set it around the first import only and leave the caller's value alone.
        old = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            import yuface
        except ImportError as e:
            raise DetectorUnavailable(
                "the yuface detector needs the yuface package: pip install yuface "
                "(or pip install 'fvloss[align]'), or use --detector yunet --model PATH"
            ) from e
        finally:
            if old is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = old
        self._detect = yuface.c_detect  # the raw call: yuface.detect() only adds a filter
        self.min_score = min_score

    def detect(self, rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        # int16 rows: score in percent, x, y, w, h, 5 x (x, y) landmarks, one unused column.
        rows = self._detect(bgr)
        return [
            Face(
                tuple(map(float, r[1:5])),
                r[5:15].reshape(5, 2).astype(np.float64),
                float(r[0]) / 100,
            )
            for r in rows
            if r[0] >= self.min_score * 100
        ]


def make_detector(
    name: str | None = None, model: str | Path | None = None, min_score: float = DEFAULT_MIN_SCORE
) -> Detector:
    """Create a detector by name; with ``name=None``, YuNet when a ``model`` is given, else yuface."""
    if name is None:
        name = "yunet" if model else "yuface"
    if name == "yunet":
        if not model:
            raise DetectorUnavailable(YUNET_HELP)
        return YuNetDetector(model, min_score)
    if name == "yuface":
        if model:
            raise DetectorUnavailable(
                "--model is for the yunet detector; yuface has its weights built in"
            )
        return YuFaceDetector(min_score)
    raise DetectorUnavailable(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")


def detect_faces(detector: Detector, rgb: np.ndarray, max_side: int = 640) -> list[Face]:
    """Run ``detector`` on ``rgb``, shrunk first if its longest side exceeds ``max_side``.

    Detection cost grows with pixel count and faces worth aligning stay detectable at 640 px, so
    large photos are detected small; boxes and landmarks are mapped back to full-size pixels so
    the warp samples the original image.
    """
    h, w = rgb.shape[:2]
    f = max_side / max(h, w)
    if f >= 1:
        return detector.detect(rgb)
    small = cv2.resize(
        rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
    )
    fx, fy = w / small.shape[1], h / small.shape[0]
    out = []
    for face in detector.detect(small):
        x, y, bw, bh = face.box
        # pixel centres: x_full = (x_small + 0.5) * fx - 0.5
        lm = (face.landmarks + 0.5) * np.array([fx, fy]) - 0.5
        out.append(
            Face(((x + 0.5) * fx - 0.5, (y + 0.5) * fy - 0.5, bw * fx, bh * fy), lm, face.score)
        )
    return out


def pick_face(faces: list[Face], width: int, height: int) -> Face | None:
    """The face nearest the image centre, weighted by size; ``None`` if there are none.

    insightface's rule: maximise ``area - 2 * squared distance from the box centre to the image
    centre``. A large central face wins over a larger face near the border and over small
    background faces (about 18% of LFW images have some).
    """
    if not faces:
        return None
    cx, cy = (width - 1) / 2, (height - 1) / 2

    def value(f: Face) -> float:
        x, y, w, h = f.box
        return w * h - 2.0 * ((x + w / 2 - cx) ** 2 + (y + h / 2 - cy) ** 2)

    return max(faces, key=value)
