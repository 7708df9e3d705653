"""The GPU check behind ``bench/gpu_check.sh``: one run, under 10 minutes, one results table.

    python -m bench.gpu_bench [--dry-run] [--out FILE] [--budget-s 540] [--parts 1 2 3 4]

On a CUDA device it measures, each part against its baseline in the same run:

1. **Training step images/s**, ResNet34 + 128-d + softmax head, at 112 and 160 px, batch 64 (the
   recipes') and 256: fp32 / fp16 (autocast + GradScaler) / bf16 autocast, NCHW against
   channels_last, fastai ``Adam`` against torch's fused Adam, ``cudnn.benchmark`` on.
2. **Framework overhead**: ``face_learner`` (softmax / center / ArcFace, the recipes' precision
   through ``mixed_precision_cb("auto")`` = fp16) against the plain loop (``bench/overhead.py``).
3. **Loader**: images/s of ``face_dls`` (decode + augment, batches moved to the device) with
   0..N workers, and the training step fed by it against preloaded tensors
   (``bench/data_pipeline.py``), on ``../shared`` CelebA-wild JPEGs (or made-up ones).
4. **Many classes** (issue 14): ResNet34 + 512-d at 112 px, bf16, batch 128, with an ArcFace
   head over 100k and 1M classes, full against Partial FC sampling 10%: images/s and peak
   device memory.

Each part is written to the results file as soon as it is done, and the parts left when the time
budget runs out are skipped (and said so), so a run cut short still leaves a table.

``--dry-run`` (or ``FVLOSS_BENCH_DEVICE=cpu``) runs every code path on the CPU at toy sizes (32 px,
batch 8, a few steps) in about a minute and writes to a temporary file: a check of the script,
not a measurement.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    RESULTS,
    PlainStep,
    interleave,
    machine_header,
    made_up_jpegs,
    md_table,
    median,
    quiet_warnings,
    real_jpegs,
    spread,
)

quiet_warnings()
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from bench.data_pipeline import loader_alone, loader_bound  # noqa: E402
from bench.overhead import compare  # noqa: E402
from fvloss.callbacks.precision import cpu_bf16_supported, mixed_precision_cb  # noqa: E402
from fvloss.data import face_dls  # noqa: E402

N_CLASSES = 269


def block(step: PlainStep, xb, yb, n: int):
    """Time ``n`` steps of ``step`` as one block: seconds per step, GPU work included."""

    def run():
        step.sync()
        t = time.perf_counter()
        for _ in range(n):
            step.step(xb, yb)
        step.sync()
        return (time.perf_counter() - t) / n

    return run


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


NO_NATIVE_BF16 = (
    "this CPU has no native bf16 (no AVX512-BF16 / AMX), where autocast runs 12-30x slower"
)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dry-run", action="store_true", help="toy sizes on the CPU: checks the script"
    )
    ap.add_argument("--out", help="results file (default bench/results/gpu_<device>.md)")
    ap.add_argument("--budget-s", type=float, default=540, help="skip parts that would start later")
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4], help="which parts to run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 160])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="loader worker counts (default 0 2 4 8 and the CPU count)")  # fmt: skip
    ap.add_argument(
        "--data", help="identity folder for the loader part (default ../shared CelebA-wild)"
    )
    args = ap.parse_args(argv)
    t_start = time.time()
    dry = args.dry_run or os.environ.get("FVLOSS_BENCH_DEVICE") == "cpu"
    if dry:
        device = torch.device("cpu")
        args.sizes, args.batch_sizes, args.steps, args.rounds = [32], [8], 2, 1
        args.workers = args.workers or [0, 1]
    elif not torch.cuda.is_available():
        print(
            "no CUDA device: run with --dry-run (or FVLOSS_BENCH_DEVICE=cpu) to check the script on the CPU"
        )
        return 2
    else:
        device = torch.device("cuda")
    ncpu = os.cpu_count() or 1
    args.workers = args.workers or sorted({0, 2, 4, 8, ncpu} - {w for w in (2, 4, 8) if w > ncpu})
    name = device_name(device)
    if args.out:
        out_path = Path(args.out)
    elif dry:
        out_path = Path(tempfile.gettempdir()) / "fvloss-gpu-check-dryrun.md"
    else:
        out_path = RESULTS / f"gpu_{slug(name)}.md"
    out_path.parent.mkdir(parents=True, exist_ok=True)

    info = f"device: {name}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info += (f" ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, CUDA {torch.version.cuda}, "
                 f"cuDNN {torch.backends.cudnn.version()}); {ncpu} CPU cores")  # fmt: skip
    lines = [f"# GPU check: {name}" + (" (DRY RUN on CPU: not a measurement)" if dry else ""), "",
             machine_header(info), ""]  # fmt: skip

    def write(*more: str) -> None:
        lines.extend(more)
        out_path.write_text("\n".join(lines) + "\n")
        print("\n".join(more), flush=True)

    def over_budget(part: str) -> bool:
        if time.time() - t_start > args.budget_s:
            write(f"### {part}", "", f"skipped: the {args.budget_s:.0f} s budget was spent", "")
            return True
        return False

    write()

    # -- 1. training step -------------------------------------------------------------------------
    if 1 in args.parts and not over_budget("1. Training step"):
        rows = []
        torch.backends.cudnn.benchmark = True  # picks the fastest conv algorithms for fixed shapes
        variants = {
            "fp32, NCHW": (None, False, False),
            "fp32, channels_last": (None, True, False),
            "fp16, NCHW": ("fp16", False, False),
            "fp16, channels_last": ("fp16", True, False),
            "bf16, NCHW": ("bf16", False, False),
            "bf16, channels_last": ("bf16", True, False),
            "fp16, channels_last, fused Adam": ("fp16", True, True),
            "bf16, channels_last, fused Adam": ("bf16", True, True),
        }
        if dry:  # every code path once (fp16 autocast on a CPU is slow)
            variants = {
                k: variants[k]
                for k in ("fp32, NCHW", "fp16, channels_last", "bf16, channels_last, fused Adam")
            }
            if not cpu_bf16_supported():  # minutes for one step each, no code path of its own
                variants = {k: v for k, v in variants.items() if k.startswith("fp32")}
                write(f"(dry run, part 1: fp16 / bf16 variants skipped: {NO_NATIVE_BF16})", "")
        for size in args.sizes:
            for bs in args.batch_sizes:
                if time.time() - t_start > args.budget_s * 0.45:
                    rows.append([size, bs, "skipped (budget)", "", "", ""])
                    continue
                g = torch.Generator().manual_seed(0)
                xb = torch.randn(bs, 3, size, size, generator=g).to(device)
                yb = torch.randint(0, N_CLASSES, (bs,), generator=g).to(device)
                steps = {k: PlainStep(N_CLASSES, amp, device, channels_last=cl, fused=fused)
                         for k, (amp, cl, fused) in variants.items()}  # fmt: skip
                for s in steps.values():  # warm-up: cuDNN autotuning, allocator, optimizer state
                    for _ in range(1 if dry else 3):
                        s.step(xb, yb)
                res = interleave({k: block(s, xb, yb, args.steps) for k, s in steps.items()},
                                 rounds=args.rounds, warmup=0)  # fmt: skip
                base = median(res["fp32, NCHW"])
                for k, v in sorted(res.items(), key=lambda kv: median(kv[1])):
                    rows.append([size, bs, k, f"{bs / median(v):.0f}", spread([bs / x for x in v]),
                                 f"{base / median(v):.2f}"])  # fmt: skip
                steps.clear()
                del xb, yb
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(f"  step {size}px bs {bs} done ({time.time() - t_start:.0f} s)", flush=True)
        tab = md_table(["px", "bs", "variant", "img/s (median)", "IQR", "speed vs fp32 NCHW"], rows)
        write(f"### 1. Training step, ResNet34 + softmax head ({args.rounds} rounds x {args.steps} steps, cudnn.benchmark on)",
              "", tab, "")  # fmt: skip

    # -- 2. Learner vs plain loop -----------------------------------------------------------------
    if 2 in args.parts and not over_budget("2. Framework overhead"):
        cb, why = mixed_precision_cb("auto", device)
        amp = None if cb is None else ("fp16" if "fp16" in why else "bf16")
        rows = []
        size = args.sizes[0]
        bs = args.batch_sizes[0]
        for loss in ("softmax",) if dry else ("softmax", "center", "arcface"):
            if time.time() - t_start > args.budget_s * 0.7:
                rows.append([loss, size, bs, "skipped (budget)", "", "", ""])
                continue
            r = compare(loss, "resnet34", size, bs, args.steps, args.rounds, amp, device=device)
            p, lrn = median(r["plain"]), median(r["learner"])
            rows.append([loss, size, bs, f"{bs / p:.0f}", f"{bs / lrn:.0f}", f"{lrn / p:.3f}",
                         f"{median(r['_fit_overhead']):.3f}"])  # fmt: skip
            if device.type == "cuda":
                torch.cuda.empty_cache()
        tab = md_table(["head", "px", "bs", "plain img/s", "Learner img/s", "ratio (time L/P, target <= 1.03)",
                        "fit start-up s"], rows)  # fmt: skip
        write(f"### 2. face_learner against the plain loop ({why}; channels_last; fastai Adam vs torch Adam)",
              "", tab, "")  # fmt: skip

    # -- 3. loader ----------------------------------------------------------------------------------
    if 3 in args.parts and not over_budget("3. Loader"):
        tmp = None
        root = Path(args.data) if args.data else None
        if root is None:
            files = real_jpegs("celeba")
            root = files[0].parents[1] if files else None
        if root is None:
            tmp = tempfile.TemporaryDirectory()
            made_up_jpegs(Path(tmp.name) / "ids", 512, (320, 240))
            root = Path(tmp.name) / "ids"
        rows = []
        for size in args.sizes:
            for w in args.workers:
                dl = face_dls(root, img_size=size, bs=args.batch_sizes[0], num_workers=w, check="none",
                              device=device).train  # fmt: skip
                ips, first = loader_alone(dl, 8 if dry else 40)
                rows.append([size, w, f"{ips:.0f}", f"{first:.2f}"])
                del dl
        tab = md_table(
            ["px", "workers", "loader alone img/s (to the device)", "first batch s"], rows
        )
        write(
            f"### 3a. Loader alone: {root.parent.name}/{root.name}, bs {args.batch_sizes[0]}",
            "",
            tab,
            "",
        )
        if not over_budget("3b. Loader-bound?"):
            cb, why = mixed_precision_cb("auto", device)
            amp = None if cb is None else ("fp16" if "fp16" in why else "bf16")
            for size in args.sizes:  # the per-image loader and the preloaded + device path
                res, alone, n_imgs = loader_bound(root, size, args.batch_sizes[0], [(None, None)], args.steps,
                                                  args.rounds, 0.5, amp, device)  # fmt: skip
                # one thread setting here, so one "preloaded tensors, <threads>" baseline
                base = median(next(v for k, v in res.items() if k.startswith("preloaded tensors")))
                rows = [
                    [k, f"{args.batch_sizes[0] / median(v):.0f}", f"{median(v) / base:.3f}"]
                    for k, v in res.items()
                ]
                tab = md_table(
                    ["training step fed by", "img/s", "ratio vs preloaded (target <= 1.05)"], rows
                )
                write(f"### 3b. Training step fed by the loader ({size} px, bs {args.batch_sizes[0]}, {why})",
                      "", tab, "")  # fmt: skip
        if tmp is not None:
            tmp.cleanup()
    # -- 4. many classes: the full margin head against Partial FC -------------------------------
    if 4 in args.parts and not over_budget("4. Many classes"):
        size, bs = (32, 8) if dry else (112, 128)
        amp4 = not (dry and not cpu_bf16_supported())  # (a GPU: bf16; a CPU without: fp32)
        if not amp4:
            write(f"(dry run, part 4 in fp32: {NO_NATIVE_BF16})", "")
        rows = []
        for n in (1_000, 5_000) if dry else (100_000, 1_000_000):
            for kind in ("arcface", "partial_fc@0.1"):
                if time.time() - t_start > args.budget_s:
                    rows.append([f"{n:,}", kind, "skipped (budget)", "", ""])
                    continue
                ips, mem = head_step(kind, n, size, bs, 2 if dry else 10, device, amp=amp4)
                rows.append([f"{n:,}", kind, f"{ips:.0f}", f"{mem:.1f}" if mem else "", size])
                print(f"  {kind} {n}: {ips:.0f} img/s", flush=True)
        tab = md_table(["classes", "head", "img/s", "peak GiB", "px"], rows)
        write(f"### 4. ResNet34 + 512-d + ArcFace over many classes: full head vs Partial FC r = 0.1 "
              f"(one device, bf16 autocast, channels_last, fastai Adam, bs {bs})", "", tab, "")  # fmt: skip
    write(f"(finished in {time.time() - t_start:.0f} s; results in {out_path})")
    return 0


def head_step(
    kind: str, n_classes: int, size: int, bs: int, steps: int, device, amp: bool = True
) -> tuple[float, float]:
    """Training images/s of ResNet34 + 512-d embedding + an ArcFace head over ``n_classes``
    (``partial_fc@R``: sampled), bf16 autocast; and the peak device memory (GiB, CUDA)."""
    from fastai.optimizer import Adam

    from fvloss.heads import ArcFaceHead
    from fvloss.heads.partial_fc import PartialFCHead
    from fvloss.model import EmbeddingNet, FaceNet

    torch.manual_seed(0)
    if kind.startswith("partial_fc"):
        head = PartialFCHead(ArcFaceHead, 512, n_classes, float(kind.split("@")[1]), s=64.0, m=0.5)
    else:
        head = ArcFaceHead(512, n_classes, s=64.0, m=0.5)
    model = FaceNet(EmbeddingNet("resnet34", 512, img_size=size), head).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = Adam(list(model.parameters()), lr=1e-3)
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_classes, (bs,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.head(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ips = bs * steps / (time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    model = opt = head = None  # freed before the next head is built
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ips, mem


if __name__ == "__main__":
    raise SystemExit(main())
