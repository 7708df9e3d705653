"""Memory: peak RSS of a training step, and the classifier / margin head's memory by class count.

    python bench/memory.py [--quick] [--heads-only] [--sizes 64 112] [--classes ...] [--save]

1. **Training step**: ResNet34 + 128-d embedding + softmax head (269 classes), bs 64, fastai
   ``Adam``, channels_last, fp32 and bf16 autocast. Each configuration runs in a fresh process
   (peak RSS, Linux ``VmHWM``, is per process): RSS after the imports, after building the model,
   the peak of the first step (which also allocates the optimizer state) and the peak of a later
   step (``VmHWM`` reset in between). The plain step is the baseline; the second row of each
   configuration is the same step through ``face_learner`` (fastai's ``Learner``).
2. **Head**: ``SoftmaxHead``, ``ArcFaceHead`` and ArcFace as Partial FC sampling 10% of the
   classes (one process; and, computed only, one of 8 ranks each holding 1/8 of the classes) for 5,296 / 100,000 / 1,000,000 classes at 128-d and 512-d, batch 64, fp32 (the margin heads always compute in fp32; under bf16 autocast only the
   softmax head's logits halve). Computed: weights, + gradient + Adam's two moments (4x the
   weights), per-step activations (logit-sized tensors). Measured: peak RSS above the process's
   baseline during two steps (forward, loss, backward, Adam), in a fresh process; skipped (computed
   only) when the prediction exceeds 40% of the memory available now. Step temporaries: the
   logit-sized activations (softmax 3, ArcFace 7 per batch row, plus ArcFace's normalised weight
   copy and its gradient) and fastai Adam's two weight-sized temporaries (they do not coexist:
   the peak counts the larger). Measured peaks include ~40-50 MiB of libraries and allocator
   pools loaded on first use (the 5,296-class rows). Also seconds per step of the
   head alone (its share of the step time grows with the class count).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, finish, machine_header, md_table, quiet_warnings  # noqa: E402

MiB = 1024**2
GiB = 1024**3


# -- children (run in fresh processes) ----------------------------------------------------------
def child_step(size: int, bf16: bool, bs: int, learner: bool) -> dict:
    from bench._common import peak_rss_mib, reset_peak_rss, rss_mib

    quiet_warnings()
    import torch
    from fastai.optimizer import Adam

    from fvloss.losses import make_head
    from fvloss.model import EmbeddingNet, FaceNet

    r = {"imports": rss_mib()}
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(bs, 3, size, size, generator=g), torch.randint(0, 269, (bs,), generator=g))
        for _ in range(3)
    ]
    r["batches_mib"] = sum(x.numel() * 4 for x, _ in batches) / MiB
    if learner:
        from fastai.callback.core import Callback, CancelValidException
        from fastai.data.core import DataLoaders

        from fvloss.callbacks.precision import CPUAutocast
        from fvloss.learner import face_learner

        class Probe(Callback):
            order = 200

            def before_validate(self):
                raise CancelValidException()

            def after_batch(self):
                if self.iter == 0:
                    r["first_step"] = peak_rss_mib()
                    reset_peak_rss()

        learn = face_learner(
            DataLoaders(batches, []), loss="softmax", n_classes=269, val_pairs=None, cbs=[Probe()]
        )
        learn.remove_cb(learn.progress)
        learn.logger = lambda *a, **k: None
        if bf16:
            learn.add_cb(CPUAutocast())
        r["model"] = rss_mib()
        reset_peak_rss()
        learn.fit(1, 1e-3)
        r["later_steps"] = peak_rss_mib()
    else:
        torch.manual_seed(0)
        model = FaceNet(EmbeddingNet("resnet34", 128), make_head("softmax", 128, 269))
        model = model.to(memory_format=torch.channels_last).train()
        opt = Adam(list(model.parameters()), lr=1e-3, wd=0.0)
        r["model"] = rss_mib()
        reset_peak_rss()
        for i, (xb, yb) in enumerate(batches):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.head(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if i == 0:
                r["first_step"] = peak_rss_mib()
                reset_peak_rss()
        r["later_steps"] = peak_rss_mib()
    r["end"] = rss_mib()
    return r


def child_head(kind: str, n_classes: int, dim: int, bs: int) -> dict:
    from bench._common import peak_rss_mib, reset_peak_rss, rss_mib

    quiet_warnings()
    import torch
    from fastai.optimizer import Adam

    from fvloss.losses import make_head

    torch.set_num_threads(max(1, torch.get_num_threads()))
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(bs, dim, generator=g)
    y = torch.randint(0, n_classes, (bs,), generator=g)
    base = rss_mib()
    if kind.startswith("partial_fc"):  # ArcFace sharded on one process, sampling r of the classes
        from fvloss.heads import ArcFaceHead
        from fvloss.heads.partial_fc import PartialFCHead

        rate = float(kind.split("@")[1])
        head = PartialFCHead(ArcFaceHead, dim, n_classes, sample_rate=rate, s=64.0, m=0.5)
    else:
        kw = {"s": 64.0, "m": 0.5} if kind == "arcface" else {}
        head = make_head(kind, dim, n_classes, **kw)
    r = {"weights": rss_mib() - base}
    opt = Adam(list(head.parameters()), lr=1e-3, wd=0.0)
    reset_peak_rss()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        e = emb.clone().requires_grad_()
        loss = head(e, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    r["peak_above_base"] = peak_rss_mib() - base
    r["step_s"] = times[-1]
    return r


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    p = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- the head's memory, computed ----------------------------------------------------------------
def head_prediction(kind: str, n_classes: int, dim: int, bs: int) -> dict[str, float]:
    """Per process; ``partial_fc@R/W``: one of W ranks, holding n_classes / W of the classes
    and scoring the global batch (W x bs, all-gathered)."""
    rate = float(kind.split("@")[1].split("/")[0]) if kind.startswith("partial_fc") else 1.0
    world = int(kind.split("/")[1]) if "/" in kind else 1
    n_classes, bs = -(-n_classes // world), bs * world
    w = n_classes * dim * 4 + (n_classes * 4 if kind == "softmax" else 0)
    train_state = 4 * w  # weights, gradient, Adam's exp_avg and exp_avg_sq
    opt_tmp = (
        2 * w
    )  # fastai Adam's step: (sqr_avg / debias2).sqrt() + eps, two weight-sized temporaries
    logits = bs * n_classes * 4
    if kind == "softmax":
        # logits, log-softmax (kept for backward), grad of logits (+ the weight-sized grad above)
        act = 3 * logits
    elif rate < 1:
        # the sampled rows gathered, normalised, and their grads; logit-sized tensors of the
        # sample; the full-size gradient scattered back
        act = 4 * rate * w + 7 * rate * logits
    else:
        # normalised weights + their grad (weight-sized), cos, clamp, scatter, s*, log-softmax, grads
        act = 2 * w + 7 * logits
    return {"weights": w, "train_state": train_state, "activations": act + opt_tmp,
            "peak": train_state + max(act, opt_tmp)}  # fmt: skip


def fmt_bytes(b: float) -> str:
    return f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / MiB:.1f} MiB"


def available_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 px only, no 1M-class measurements")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--classes", type=int, nargs="+", default=[5296, 100_000, 1_000_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--max-fraction", type=float, default=0.4,
                    help="measure a head only if its predicted peak is below this share of MemAvailable")  # fmt: skip
    ap.add_argument("--heads-only", action="store_true", help="the head table only (part 2)")
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "step":
            r = child_step(int(rest[0]), rest[1] == "bf16", int(rest[2]), rest[3] == "learner")
        else:
            r = child_head(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        print(json.dumps(r))
        return 0
    if args.quick:
        args.sizes, args.max_fraction = [64], min(args.max_fraction, 0.05)
    t_start = time.time()
    out = ["## Memory (`bench/memory.py`)", "", machine_header(), ""]
    print("\n".join(out), flush=True)

    rows = []
    for size in [] if args.heads_only else args.sizes:
        for prec in ("fp32", "bf16"):
            for side in ("plain", "learner"):
                r = run_child(["step", str(size), prec, str(args.bs), side])
                if "error" in r:
                    rows.append([size, prec, side, r["error"], "", "", "", ""])
                    continue
                rows.append([size, prec, "plain loop" if side == "plain" else "face_learner", f"{r['imports']:.0f}",
                             f"{r['model']:.0f}", f"{r['first_step']:.0f}", f"{r['later_steps']:.0f}",
                             f"{r['later_steps'] - r['model']:.0f}"])  # fmt: skip
                print(f"  step {size}px {prec} {side}: peak {r['later_steps']:.0f} MiB", flush=True)
    tab = md_table(["px", "dtype", "driver", "RSS after imports MiB", "after model MiB",
                    "peak, 1st step MiB", "peak, later steps MiB", "later peak - model MiB"], rows)  # fmt: skip
    hdr = f"### 1. Peak RSS of a training step (ResNet34 + softmax, bs {args.bs}, channels_last, fastai Adam)"
    if rows:
        emit(out, hdr, "", tab, "")

    rows = []
    avail = available_bytes()
    for n in args.classes:
        for d in args.dims:
            for kind in ("softmax", "arcface", "partial_fc@0.1", "partial_fc@0.1/8"):
                pr = head_prediction(kind, n, d, args.bs)
                measured, step = (
                    f"not measured: predicted peak > {100 * args.max_fraction:.0f}% of free memory",
                    "",
                )
                if "/" in kind:
                    measured = "computed only (one of 8 ranks)"
                elif pr["peak"] < args.max_fraction * avail:
                    r = run_child(["head", kind, str(n), str(d), str(args.bs)])
                    if "error" in r:
                        measured = r["error"]
                    else:
                        measured, step = fmt_bytes(r["peak_above_base"] * MiB), f"{r['step_s']:.3f}"
                rows.append([f"{n:,}", d, kind, fmt_bytes(pr["weights"]), fmt_bytes(pr["train_state"]),
                             fmt_bytes(pr["activations"]), fmt_bytes(pr["peak"]), measured, step])  # fmt: skip
                print(
                    f"  head {kind} {n}x{d}: {rows[-1][6]} predicted, {measured} measured",
                    flush=True,
                )
    tab = md_table(["classes", "dim", "head", "weights (fp32)", "+grad+Adam (4x)", "step temporaries",
                    "predicted peak", "measured peak", "head step s"], rows)  # fmt: skip
    emit(
        out,
        f"### 2. Classifier / margin head memory (batch {args.bs}, fp32, fastai Adam)",
        "",
        tab,
        "",
    )
    finish(out, t_start, args.save, "memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
