"""Speed of ``fvloss align`` per detector and worker count, on a fixed subset of LFW View 1.

    python bench/align_speed.py [--n 200] [--n-yuface 50] [--repeats 3]

Reads ``../shared`` (or ``$FVLOSS_SHARED``): LFW View 1 images and the YuNet model. Every run
aligns into a fresh temporary folder (nothing is skipped) and the table shows the median of
``--repeats`` runs. "img/s" is end to end, including starting the worker processes; "start s" is the
wall time of a run over just ``workers`` images (process start-up, detector creation, one image
each) and "steady" = images / (wall - start), the rate once workers run. The stage columns are
CPU milliseconds per image summed over workers (decode, detect, warp, write = encode + file
write).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fvloss.align import align_folder  # noqa: E402
from fvloss.align.folder import STAGES  # noqa: E402


def _subset(lfw: Path, n: int, root: Path) -> Path:
    """Symlinks to ``n`` images spread evenly over the sorted list (many identities, fixed)."""
    files = sorted(lfw.glob("*/*.jpg"))
    step = len(files) / n
    for f in (files[int(i * step)] for i in range(n)):
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        (root / f.parent.name / f.name).symlink_to(f)
    return root


def _run(src: Path, detector: str, model: Path | None, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as dst:
        return align_folder(
            src, dst, detector=detector, model=model, workers=workers, progress=False
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("FVLOSS_SHARED") or REPO.parent / "shared"),
    )
    p.add_argument("--n", type=int, default=200, help="images for the yunet runs")
    p.add_argument("--n-yuface", type=int, default=50, help="images for the yuface runs")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    lfw = args.shared / "data" / "lfw-view1" / "images"
    model = args.shared / "models" / "yunet_s_640_640.onnx"
    if not lfw.is_dir() or not model.is_file():
        sys.exit(f"need {lfw} and {model} (set FVLOSS_SHARED or --shared)")

    print(f"CPUs: {os.cpu_count()}, median of {args.repeats} runs")
    head = f"{'detector':<8} {'workers':>7} {'images':>6} {'wall s':>7} {'img/s':>7} "
    head += f"{'start s':>7} {'steady':>7} " + " ".join(f"{s + ' ms':>9}" for s in STAGES)
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for detector, n in (("yunet", args.n), ("yuface", args.n_yuface)):
            src = _subset(lfw, n, Path(tmp) / detector)
            tiny = _subset(lfw, max(args.workers), Path(tmp) / f"{detector}-tiny")
            det_model = model if detector == "yunet" else None
            for workers in args.workers:
                runs, starts = [], []
                for _ in range(args.repeats):  # interleaved: the machine's load drifts
                    starts.append(_run(tiny, detector, det_model, workers)["seconds"])
                    runs.append(_run(src, detector, det_model, workers))
                run = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
                assert run["counts"]["aligned"] == n, run["counts"]
                wall, start = run["seconds"], statistics.median(starts)
                steady = n / max(wall - start, 1e-3)
                ms = [1000 * run["stage_seconds"][s] / n for s in STAGES]
                row = f"{detector:<8} {workers:>7} {n:>6} {wall:>7.2f} {n / wall:>7.1f} "
                row += f"{start:>7.2f} {steady:>7.0f} "
                print(row + " ".join(f"{m:>9.2f}" for m in ms))


if __name__ == "__main__":
    main()
