"""Bodies: training images/s of each registered body at the recipes' sizes, against ResNet34.

    python bench/bodies.py [--quick] [--sizes 64 112] [--archs resnet34 iresnet18 ...]
                           [--rounds 3] [--steps 4] [--bs 64] [--save]

What a CPU-budget recipe has to choose from: one training step as the recipes run it (the body +
128-d neck, an ArcFace head over 284 classes, forward under the precision the start-up probe
picks, backward, fastai Adam, zero_grad, channels_last), on one batch in memory, for every body
and size. The variants run interleaved (A B C ... then reversed) in one process, and the table
gives each one's median images/s, its spread, its parameter count and its ratio to ResNet34 at
the same size (the baseline, the assignment's body). No data loading: ``bench/end_to_end.py``
measures that part.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    emit,
    finish,
    interleave,
    machine_header,
    md_table,
    median,
    quiet_warnings,
    spread,
)

quiet_warnings()

import torch  # noqa: E402
from fastai.optimizer import Adam  # noqa: E402

from fvloss.callbacks.precision import mixed_precision_cb  # noqa: E402
from fvloss.losses import make_head  # noqa: E402
from fvloss.model import EmbeddingNet, FaceNet  # noqa: E402

N_CLASSES = 284  # celeba64's training identities
BASELINE = "resnet34"
DEFAULT_ARCHS = ["resnet34", "resnet18", "resnet34_face", "iresnet18", "iresnet34", "mobilefacenet"]


class Step:
    """One body's training step on a fixed batch; ``__call__`` runs ``steps`` and returns their
    seconds."""

    def __init__(self, arch: str, size: int, bs: int, steps: int, bf16: bool):
        torch.manual_seed(0)
        self.model = FaceNet(
            EmbeddingNet(arch, 128, img_size=size), make_head("arcface", 128, N_CLASSES, s="auto")
        ).to(memory_format=torch.channels_last)
        self.model.train()
        self.n_params = sum(p.numel() for p in self.model.embedder.parameters())
        self.opt = Adam(list(self.model.parameters()), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(bs, 3, size, size, generator=g).to(memory_format=torch.channels_last)
        self.y = torch.randint(0, N_CLASSES, (bs,), generator=g)
        self.steps, self.bf16 = steps, bf16

    def __call__(self) -> float:
        t0 = time.perf_counter()
        for _ in range(self.steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.model.head(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run for the tests: 2 bodies, 32 px")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 112])
    ap.add_argument("--archs", nargs="+", default=DEFAULT_ARCHS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--save", action="store_true", help="write into bench/results/")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.archs, args.rounds, args.steps, args.bs = (
            [32],
            [BASELINE, "iresnet18"],
            1,
            1,
            4,
        )
    if BASELINE not in args.archs:
        args.archs = [BASELINE, *args.archs]
    t_start = time.time()
    probe = EmbeddingNet(BASELINE, 128).to(memory_format=torch.channels_last)
    cb, why = mixed_precision_cb("auto", torch.device("cpu"), probe, torch.randn(16, 3, 64, 64))
    bf16 = cb is not None
    out: list[str] = []
    emit(out, "## Bodies: training step images/s (bench/bodies.py)", "",
         machine_header(f"precision: {why}; batch {args.bs}; {args.steps} steps x {args.rounds} rounds"), "")  # fmt: skip
    for size in args.sizes:
        steps = {a: Step(a, size, args.bs, args.steps, bf16) for a in args.archs}
        times = interleave(steps, args.rounds)
        ips = {a: [args.bs * args.steps / t for t in ts] for a, ts in times.items()}
        base = median(ips[BASELINE])
        rows = [
            [a, f"{steps[a].n_params / 1e6:.2f}M", median(v), spread(v), median(v) / base]
            for a, v in ips.items()
        ]
        emit(out, f"### {size} px", "",
             md_table(["body", "parameters", "img/s", "spread", f"x {BASELINE}"], rows), "")  # fmt: skip
    finish(out, t_start, args.save, "bodies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
