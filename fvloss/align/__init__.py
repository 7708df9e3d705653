"""Face detection and 5-point alignment: photos in, ArcFace-template face crops out.

Light on purpose (numpy + OpenCV only; no torch or fastai), so ``fvloss align`` and worker
processes start fast.

Python use::

    from fvloss.align import align_folder
    report = align_folder("photos", "aligned", detector="yunet", model="yunet_s_640_640.onnx",
                          workers=2, fallback="center")
    report["counts"], report["no_face"]

Command line: ``fvloss align SRC DST [--size 112] [--detector yuface|yunet] [--model PATH]
[--workers N] [--fallback center] [--preview N]``.
"""

from .detectors import (
    DEFAULT_MIN_SCORE,
    YUNET_HELP,
    Detector,
    DetectorUnavailable,
    Face,
    YuFaceDetector,
    YuNetDetector,
    detect_faces,
    make_detector,
    pick_face,
)
from .folder import REPORT_NAME, align_folder, align_image, encode_image, list_images
from .preview import make_grid, write_preview
from .warp import (
    ARCFACE_TEMPLATE,
    center_crop,
    similarity_transform,
    template,
    transform_points,
    warp_face,
)

__all__ = [
    "ARCFACE_TEMPLATE",
    "DEFAULT_MIN_SCORE",
    "REPORT_NAME",
    "YUNET_HELP",
    "Detector",
    "DetectorUnavailable",
    "Face",
    "YuFaceDetector",
    "YuNetDetector",
    "align_folder",
    "align_image",
    "center_crop",
    "detect_faces",
    "encode_image",
    "list_images",
    "make_detector",
    "make_grid",
    "pick_face",
    "similarity_transform",
    "template",
    "transform_points",
    "warp_face",
    "write_preview",
]
