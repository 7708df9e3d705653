"""MegaFace-style distractor scaling: rank-1 of LFW View 1 probes as distractors join the gallery.

    python bench/distractors.py --run RUN [--lfw data/lfw-view1-aligned]
        [--cfp-root data/cfp-aligned] [--max 1000000] [--save]

* gallery and probes: LFW View 1's aligned faces (``fvloss align``), one image of each person
  enrolled (seed 0), every other image a probe (``fvloss.eval.idsets.from_folder``);
* real distractors: CFP's aligned faces (frontal and profile) of the CFP people who are *not*
  LFW View 1 people: ``Data/list_name.txt`` names CFP's 500 people; a name that is also an LFW
  View 1 folder (spaces as underscores) is left out, as MegaFace cleaned its distractors of probe
  identities. CelebA-wild is not used: its identities are anonymous numbers, so nothing can show
  that none of them is an LFW person;
* beyond the real faces, synthetic stand-ins up to ``--max``: embeddings drawn from a Gaussian
  with the real distractors' mean and covariance, L2-normalised. They are as spread out as real
  faces to second order, which is what decides how often one lands above a probe's own match;
  they are not faces, so the curve past the real count is an estimate (the table says which
  rows are which).

Search is FAISS's exact index, grown in place as distractors are added; time per query is the
search of all probes at that size divided by their number.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, finish, machine_header, md_table, shared_dir  # noqa: E402
from fvloss.eval.identify import distractor_scaling  # noqa: E402
from fvloss.eval.idsets import from_folder  # noqa: E402
from fvloss.eval.load import as_embedder  # noqa: E402
from fvloss.eval.score import _embed, _PathLoader  # noqa: E402
from fvloss.imageio import image_files  # noqa: E402


def embed(embedder, paths: list[Path]) -> np.ndarray:
    e, _ = _embed(embedder, _PathLoader(paths), [str(p) for p in paths], 256)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def fill_synthetic(real: np.ndarray, out: np.ndarray, seed: int = 0) -> None:
    """Fill ``out`` with rows from a Gaussian fitted to ``real`` (mean, covariance), normalised."""
    rng = np.random.default_rng(seed)
    mean, cov = real.mean(axis=0), np.cov(real, rowvar=False)
    for i in range(0, len(out), 100_000):
        x = rng.multivariate_normal(mean, cov, size=min(100_000, len(out) - i)).astype(np.float32)
        out[i : i + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="run folder or .onnx model")
    p.add_argument("--lfw", type=Path, default=Path("data/lfw-view1-aligned"))
    p.add_argument("--cfp-root", type=Path, default=Path("data/cfp-aligned"))
    p.add_argument("--max", type=int, default=1_000_000)
    p.add_argument("--save", action="store_true")
    args = p.parse_args(argv)
    names = shared_dir() / "data" / "cfp" / "Data" / "list_name.txt"
    for need in (args.lfw, args.cfp_root, names):
        if not need.exists():
            sys.exit(f"bench/distractors.py: {need} not found (align LFW View 1 and CFP first: "
                     "recipes/celeba64.sh's first lines)")  # fmt: skip
    t_start = time.time()
    out: list[str] = []
    emit(out, f"## Distractor scaling: LFW View 1 probes, {args.run.name} (bench/distractors.py)",
         "", machine_header(), "")  # fmt: skip
    s = from_folder(args.lfw, gallery_per_id=1, seed=0)
    lfw_people = {d.name for d in args.lfw.iterdir() if d.is_dir()}
    cfp_names = [line.strip().replace(" ", "_") for line in names.read_text().splitlines()]
    keep = [f"{i + 1:03d}" for i, n in enumerate(cfp_names) if n not in lfw_people]
    real_paths = [q for ident in keep for q in image_files(args.cfp_root / ident)]
    embedder = as_embedder(args.run, device="cpu")
    t0 = time.perf_counter()
    emb = embed(embedder, s.gallery + s.probes)
    real = embed(embedder, real_paths)
    emit(out, f"- {s.summary().splitlines()[0]}",
         f"- real distractors: {len(real)} CFP faces of {len(keep)} people "
         f"({len(cfp_names) - len(keep)} CFP people share an LFW View 1 name and are left out)",
         f"- embedded in {time.perf_counter() - t0:.0f} s; {emb.shape[1]}-d", "")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        n = max(args.max, len(real))
        both = np.lib.format.open_memmap(Path(tmp) / "d.npy", "w+", np.float32, (n, real.shape[1]))
        both[: len(real)] = real  # the real faces first: the smaller sizes are all real
        fill_synthetic(real, both[len(real) :])
        both.flush()
        sizes = sorted({0, len(real), *(10**k for k in range(1, 7) if 10**k <= len(both))})
        g = len(s.gallery)
        points = distractor_scaling(emb[:g], s.gallery_labels, emb[g:], s.probe_labels, both, sizes)
    rows = [[f"{pt.distractors:,}", "real" if pt.distractors <= len(real) else "real + synthetic",
             f"{100 * pt.rank(1):.2f}", f"{100 * pt.rank(10):.2f}", f"{pt.ms_per_query:.3f}"]
            for pt in points]  # fmt: skip
    emit(out, md_table(["distractors", "kind", "rank-1 %", "rank-10 %", "ms/query"], rows), "")
    finish(out, t_start, args.save, f"distractors-{args.run.name}")


if __name__ == "__main__":
    main()
