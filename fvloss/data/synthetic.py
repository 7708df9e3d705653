"""The embedded default data set: procedural faces, generated from a seed.

Each identity has its own geometry (face shape, eye spacing and size, nose, mouth, brows, ears)
and colours (skin, hair, eyes, lips), some have glasses or a beard; each image of it varies pose
(roll, yaw, scale, shift), lighting, expression (smile, eye opening), blur and noise. Identities
are drawn from overlapping ranges, so some look alike: the task is easy to learn a little and
hard to learn perfectly, which is what a loss comparison needs.

Written once to a cache folder (``fvloss synthetic DST`` writes it anywhere) in the
``root/<identity>/<image>.png`` layout every other fvloss tool reads. Always reported as
"synthetic".
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["SyntheticSpec", "render_face", "make_synthetic", "default_cache_dir"]

GENERATOR_VERSION = 1  # bump when the drawing changes, so caches are rebuilt


@dataclass(frozen=True)
class SyntheticSpec:
    """Size of the synthetic set; the defaults are the embedded default data."""

    n_identities: int = 160
    images_per_identity: int = 20
    size: int = 64
    seed: int = 0

    @property
    def name(self) -> str:
        return f"synthetic-v{GENERATOR_VERSION}-{self.n_identities}x{self.images_per_identity}-{self.size}px-seed{self.seed}"


def default_cache_dir() -> Path:
    """``$FVLOSS_CACHE`` or ``$XDG_CACHE_HOME/fvloss`` or ``~/.cache/fvloss``."""
    if os.environ.get("FVLOSS_CACHE"):
        return Path(os.environ["FVLOSS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fvloss"


def _identity(rng: np.random.Generator) -> dict:
    u = rng.uniform
    skin = np.array([u(90, 235), u(70, 200), u(50, 180)])
    skin[1] = min(skin[1], skin[0] - 5)  # keep skin tones warm (R >= G >= B), like real ones
    skin[2] = min(skin[2], skin[1] - 5)
    return {
        "skin": skin,
        "hair": rng.choice(
            [
                [30, 25, 20],
                [90, 60, 30],
                [160, 120, 60],
                [200, 190, 150],
                [60, 60, 60],
                [120, 40, 20],
            ]
        )
        + rng.normal(0, 12, 3),
        "iris": rng.choice([[60, 40, 20], [40, 90, 150], [60, 110, 60], [90, 90, 90]])
        + rng.normal(0, 10, 3),
        "lips": skin * np.array([0.85, 0.55, 0.6]) + rng.normal(0, 8, 3),
        "face_w": u(0.27, 0.36),
        "face_h": u(0.36, 0.45),
        "jaw": u(0.75, 1.0),  # lower half narrower than the upper
        "eye_dx": u(0.10, 0.15),
        "eye_y": u(-0.08, 0.0),
        "eye_r": u(0.025, 0.045),
        "brow_dy": u(0.045, 0.075),
        "brow_tilt": u(-0.3, 0.3),
        "brow_w": u(1, 3),
        "nose_len": u(0.07, 0.14),
        "nose_w": u(0.02, 0.05),
        "mouth_y": u(0.17, 0.25),
        "mouth_w": u(0.06, 0.12),
        "hair_h": u(0.05, 0.2),
        "fringe": rng.random() < 0.4,
        "ear": u(0.03, 0.06),
        "glasses": rng.random() < 0.2,
        "beard": rng.random() < 0.15,
    }


def render_face(ident: dict, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One RGB uint8 image of ``ident`` with random pose, light, expression, blur and noise."""
    S = size * 4  # draw at 4x and shrink: anti-aliased edges without a vector renderer
    u = rng.uniform
    bg = rng.uniform(30, 220, 3)
    img = np.empty((S, S, 3), np.float32)
    img[:] = bg
    yaw, smile, eye_open = u(-0.5, 0.5), u(-1, 1), u(0.35, 1.0)
    cx, cy = S * (0.5 + u(-0.04, 0.04)), S * (0.52 + u(-0.04, 0.04))

    def P(x: float, y: float) -> tuple[int, int]:
        # face-relative coords (units of S) -> pixels; yaw shifts inner features and
        # foreshortens the far side, a cheap stand-in for a head turn
        x = x * (1 - 0.35 * abs(yaw)) + yaw * 0.06 * (1 - 4 * x * x)
        return int(round(cx + x * S)), int(round(cy + y * S))

    def L(r: float) -> int:
        return max(1, int(round(r * S)))

    def col(c) -> tuple[float, ...]:
        return tuple(float(v) for v in np.clip(c, 0, 255))

    fw, fh = ident["face_w"] * (1 - 0.25 * abs(yaw)), ident["face_h"]
    # hair behind the head, ears, then the face
    cv2.ellipse(
        img,
        P(0, -0.05),
        (L(fw * 1.08), L(fh * 0.95 + ident["hair_h"])),
        0,
        180,
        360,
        col(ident["hair"]),
        -1,
    )
    for side in (-1, 1):
        cv2.ellipse(
            img,
            P(side * ident["face_w"] * 0.98, -0.02),
            (L(ident["ear"]), L(ident["ear"] * 1.6)),
            0,
            0,
            360,
            col(ident["skin"] * 0.92),
            -1,
        )
    cv2.ellipse(img, P(0, 0), (L(fw), L(fh * 0.5)), 0, 180, 360, col(ident["skin"]), -1)
    cv2.ellipse(img, P(0, 0), (L(fw * ident["jaw"]), L(fh)), 0, 0, 180, col(ident["skin"]), -1)
    if ident["beard"]:
        cv2.ellipse(
            img,
            P(0, 0.12),
            (L(fw * ident["jaw"] * 0.95), L(fh * 0.75)),
            0,
            20,
            160,
            col(ident["hair"]),
            L(0.05),
        )
    if ident["fringe"]:
        cv2.ellipse(
            img, P(0, -fh * 0.55), (L(fw * 0.95), L(0.09)), 0, 0, 180, col(ident["hair"]), -1
        )
    # eyes, brows, glasses
    for side in (-1, 1):
        ex, ey, r = side * ident["eye_dx"], ident["eye_y"], ident["eye_r"]
        cv2.ellipse(img, P(ex, ey), (L(r * 1.5), L(r * eye_open)), 0, 0, 360, (245, 245, 240), -1)
        cv2.circle(img, P(ex, ey), L(r * 0.75 * max(eye_open, 0.5)), col(ident["iris"]), -1)
        cv2.circle(img, P(ex, ey), L(r * 0.3), (15, 15, 15), -1)
        by = ey - ident["brow_dy"]
        t = ident["brow_tilt"] * side
        cv2.line(
            img,
            P(ex - r * 1.6, by + t * 0.02),
            P(ex + r * 1.6, by - t * 0.02),
            col(ident["hair"] * 0.7),
            L(ident["brow_w"] / 256 * 2),
        )
        if ident["glasses"]:
            cv2.circle(img, P(ex, ey), L(r * 2.2), (20, 20, 20), L(0.012))
    if ident["glasses"]:
        cv2.line(
            img,
            P(-ident["eye_dx"] + ident["eye_r"] * 2.2, ident["eye_y"]),
            P(ident["eye_dx"] - ident["eye_r"] * 2.2, ident["eye_y"]),
            (20, 20, 20),
            L(0.012),
        )
    # nose and mouth
    nl, nw = ident["nose_len"], ident["nose_w"]
    nose = np.array(
        [P(0, ident["eye_y"] + 0.02), P(-nw, ident["eye_y"] + nl), P(nw, ident["eye_y"] + nl)],
        np.int32,
    )
    cv2.fillConvexPoly(img, nose, col(ident["skin"] * 0.8))
    my, mw = ident["mouth_y"], ident["mouth_w"]
    pts = np.array(
        [P(x, my - smile * 0.03 * (1 - (x / mw) ** 2) * -1) for x in np.linspace(-mw, mw, 9)],
        np.int32,
    )
    cv2.polylines(img, [pts], False, col(ident["lips"]), L(0.018))

    # pose: roll and scale about the face centre, then shift
    M = cv2.getRotationMatrix2D((cx, cy), u(-15, 15), u(0.88, 1.12))
    M[:, 2] += rng.uniform(-0.05, 0.05, 2) * S
    img = cv2.warpAffine(img, M, (S, S), borderMode=cv2.BORDER_REPLICATE)
    # lighting: a linear gradient in a random direction, and an overall gain
    a = u(0, 2 * math.pi)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S - 0.5
    light = u(0.65, 1.25) * (1 + u(0, 0.6) * (np.cos(a) * xx + np.sin(a) * yy))
    img *= light[..., None]
    img *= rng.normal(1.0, 0.08, 3).astype(
        np.float32
    )  # white balance: colour alone is not identity
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    sigma = u(0, 1.2)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, u(0, 8), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic(
    spec: SyntheticSpec = SyntheticSpec(), root: str | Path | None = None, quiet: bool = False
) -> Path:
    """Write the synthetic set for ``spec`` (once; later calls return the cached folder).

    The folder is built in a temporary sibling and renamed into place, so an interrupted
    generation never leaves a half-written set that would be mistaken for a complete one.
    """
    root = Path(root) if root is not None else default_cache_dir() / spec.name
    if (root / "synthetic.json").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root.parent))
    try:
        for i in range(spec.n_identities):
            # one generator per identity (and per image below): identity i's pictures do not
            # depend on how many identities or images were asked for
            ident = _identity(np.random.default_rng([spec.seed, i]))
            d = tmp / f"id{i:04d}"
            d.mkdir()
            for j in range(spec.images_per_identity):
                img = render_face(ident, np.random.default_rng([spec.seed, i, j + 1]), spec.size)
                cv2.imwrite(str(d / f"id{i:04d}_{j:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        (tmp / "synthetic.json").write_text(
            json.dumps(
                {"name": "synthetic", **asdict(spec), "version": GENERATOR_VERSION}, indent=1
            )
        )
        if root.exists():
            shutil.rmtree(root)  # an incomplete set from an older layout
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(
            f"synthetic: wrote {spec.n_identities} identities x {spec.images_per_identity} images ({spec.size}px) to {root}"
        )
    return root
