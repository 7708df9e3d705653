"""Write an IJB-C-shaped 1:1 set from CFP, to run ``fvloss verify --ijb`` on real faces.

    python bench/ijb_from_cfp.py OUT [--cfp ../shared/data/cfp] [--model YUNET.onnx]
    fvloss verify --run RUN --ijb OUT

IJB-B/C themselves are not redistributable; this builds the same layout (``meta/`` +
``loose_crop/``, landmarks from the YuNet detector as IJB's ``name_5pts_score`` file holds them)
from CFP's loose head crops. Per identity, three templates: frontal photos 1-5 (two media:
1-2 and 3-5), frontal 6-10 (one media per photo) and the 4 profiles (one media); pairs: the
three same-identity template pairs, and each template against one template of each of 3 other
identities (drawn with a fixed seed). Photos without a detected face are left out and counted,
as IJB's own lists have no entry for them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fvloss  # noqa: E402,F401  (sets NO_ALBUMENTATIONS_UPDATE before anything imports it)


def main(argv: list[str] | None = None) -> int:
    from fvloss.align.detectors import detect_faces, make_detector, pick_face
    from fvloss.eval.ijb import write_ijb_layout
    from fvloss.imageio import read_rgb

    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (gets meta/ and loose_crop/)")
    p.add_argument("--cfp", type=Path, default=here.parent / "shared" / "data" / "cfp")
    p.add_argument(
        "--model", type=Path, default=here.parent / "shared" / "models" / "yunet_s_640_640.onnx"
    )
    p.add_argument("--ids", type=int, default=500, help="use the first N identities")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    images = args.cfp / "Data" / "Images"
    if not images.is_dir() or not args.model.is_file():
        print(f"CFP images ({images}) or YuNet model ({args.model}) not found", file=sys.stderr)
        return 2
    det = make_detector("yunet", model=args.model)
    items, templates_of, missed = [], [], 0
    next_template = 1
    for ident in sorted(d for d in images.iterdir() if d.is_dir())[: args.ids]:
        groups = [  # (photos, media per photo?) for the identity's three templates
            ([ident / "frontal" / f"{j:02d}.jpg" for j in range(1, 6)], lambda j: 1 + (j >= 2)),
            ([ident / "frontal" / f"{j:02d}.jpg" for j in range(6, 11)], lambda j: 1 + j),
            (sorted((ident / "profile").glob("*.jpg")), lambda j: 1),
        ]
        mine = []
        for photos, media_of in groups:
            kept = 0
            for j, photo in enumerate(photos):
                rgb = read_rgb(photo)
                face = pick_face(detect_faces(det, rgb), rgb.shape[1], rgb.shape[0])
                if face is None:
                    missed += 1
                    continue
                media = next_template * 100 + media_of(j)  # media ids unique per template
                items.append((photo, next_template, media, face.landmarks, float(face.score)))
                kept += 1
            if kept:
                mine.append(next_template)
            next_template += 1
        templates_of.append(mine)
    rng = np.random.default_rng(args.seed)
    pairs = []
    for k, mine in enumerate(templates_of):
        pairs += [(a, b, 1) for i, a in enumerate(mine) for b in mine[i + 1 :]]
        for t in mine:
            for other in rng.choice(
                [i for i in range(len(templates_of)) if i != k and templates_of[i]], 3, False
            ):
                pairs.append((t, int(rng.choice(templates_of[other])), 0))
    root = write_ijb_layout(args.out, items, pairs, name="IJBC")
    n_same = sum(lab for *_, lab in pairs)
    print(
        f"wrote {root}: {len(items)} images, {next_template - 1} templates, {len(pairs)} pairs "
        f"({n_same} same, {len(pairs) - n_same} different); {missed} photos without a detected "
        "face left out"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
