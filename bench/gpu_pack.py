"""Make the folder that travels to a GPU machine with no ``../shared`` and no package registry
(``bench/gpu_celeba64.sh`` runs there from it).

    python bench/gpu_pack.py [--out gpu_pack] [--size 64] [--quality 80] [--wheels]

It holds, in ~30 MB: the aligned faces (``data/*-aligned``, made by ``recipes/celeba64.sh``'s
alignment lines) as ``size``-px JPEG copies (the size the celeba64 recipe trains at; LFW View 1
only the images its two pair files name), the protocol files (LFW pairs, CFP ``Protocol/`` and
``Data/list_name.txt``), and with ``--wheels`` the Python 3.12 wheels of what the device image
lacks (fastai, albumentations, optuna and what they need, at the versions installed here).
Keep the folder out of git (``.git/info/exclude``); the faces are ``../shared``'s, not ours.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SETS = ("celeba-wild-aligned", "lfw-view1-aligned", "cfp-aligned")
# what the device image (KINDS.md's package list) lacks, among fvloss's needs
WHEELS = ("fastai", "fastcore", "fastdownload", "fastprogress", "fasttransform", "plum-dispatch",
          "beartype", "albumentations", "albucore", "pydantic", "pydantic_core", "annotated-types",
          "typing-inspection", "stringzilla", "simsimd", "optuna", "alembic", "SQLAlchemy",
          "colorlog", "Mako")  # fmt: skip
# fastprogress 1.1 imports python-fasthtml (a web stack the device lacks); 1.0.3 is what fastai
# 2.8 needs (seen on the H200 image, 2026-12-04)
PINNED = {"fastprogress": "1.0.3"}


def _lfw_pair_images(lfw: Path) -> set[tuple[str, int]]:
    need: set[tuple[str, int]] = set()
    for name in ("pairsDevTrain.txt", "pairsDevTest.txt"):
        for line in (lfw / name).read_text().splitlines()[1:]:
            t = line.split()
            if len(t) == 3:
                need |= {(t[0], int(t[1])), (t[0], int(t[2]))}
            elif len(t) == 4:
                need |= {(t[0], int(t[1])), (t[2], int(t[3]))}
    return need


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "gpu_pack")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--quality", type=int, default=80)
    ap.add_argument("--wheels", action="store_true", help="also download the Python 3.12 wheels")
    args = ap.parse_args(argv)
    lfw, cfp = args.shared / "data" / "lfw-view1", args.shared / "data" / "cfp"
    for p in (lfw / "pairsDevTest.txt", cfp / "Protocol", *(REPO / "data" / s for s in SETS)):
        if not p.exists():
            sys.exit(f"gpu_pack: {p} not found (align first: recipes/celeba64.sh's first lines)")
    keep = _lfw_pair_images(lfw)
    n, size = 0, 0
    for s in SETS:
        src = REPO / "data" / s
        for p in sorted(src.rglob("*")):
            q = args.out / "data" / s / p.relative_to(src)
            if p.is_dir():
                continue
            if s.startswith("lfw") and p.suffix == ".jpg":
                name, num = p.stem.rsplit("_", 1)
                if (name, int(num)) not in keep:
                    continue
            q.parent.mkdir(parents=True, exist_ok=True)
            if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                im = Image.open(p).convert("RGB").resize((args.size, args.size), Image.BICUBIC)
                im.save(q, quality=args.quality)
                n += 1
            else:
                shutil.copy(p, q)
            size += q.stat().st_size
    shared = args.out / "shared"
    (shared / "lfw-view1").mkdir(parents=True, exist_ok=True)
    for f in lfw.glob("pairs*.txt"):
        shutil.copy(f, shared / "lfw-view1" / f.name)
    shutil.copytree(cfp / "Protocol", shared / "cfp" / "Protocol", dirs_exist_ok=True)
    (shared / "cfp" / "Data").mkdir(parents=True, exist_ok=True)
    shutil.copy(cfp / "Data" / "list_name.txt", shared / "cfp" / "Data" / "list_name.txt")
    print(f"{n} faces at {args.size} px, {size / 1e6:.1f} MB, in {args.out}")
    if args.wheels:
        plat = ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux2014_x86_64"]  # fmt: skip
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                        "cp", *plat, "-d", str(args.out / "whl"),
                        *(f"{w}=={PINNED.get(w) or version(w)}" for w in WHEELS)], check=True)  # fmt: skip
        wheels = list((args.out / "whl").glob("*.whl"))
        print(f"{len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
