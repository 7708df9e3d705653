"""CPU defaults: intra-op threads, channels_last, bf16 autocast against fp32, the optimizer
kernel and ``torch.compile``, for one ResNet34 training step on this machine.

    python bench/cpu_defaults.py [--quick] [--sizes 64 112] [--rounds 3] [--no-compile] [--save]

The step is what the recipes run: ResNet34 + 128-d embedding + softmax head (269 classes),
batch 64, forward under the dtype, cross-entropy, backward, fastai ``Adam`` step, zero_grad.
All variants run in one process on the same batch, interleaved (A B C ... then reversed), and
the table gives each one's median images/s and its ratio to the recipes' current default
(channels_last, bf16 autocast if the start-up probe picks it, all threads, fastai Adam, eager).
``torch.compile`` is compiled once per size (its compile time is reported) and then timed in the
same rounds. The last table checks the recipes' bf16 probe (``mixed_precision_cb("auto")`` on 16
images) against the full-batch measurement.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    background_load,
    emit,
    finish,
    fused_adam,
    interleave,
    keep_freed_memory,
    machine_header,
    md_table,
    median,
    minor_faults,
    peak_rss_mib,
    precision_rows,
    quiet_warnings,
    spread,
)

quiet_warnings()

import torch  # noqa: E402
from fastai.optimizer import Adam as FastaiAdam  # noqa: E402

from fvloss.callbacks.precision import cpu_bf16_supported, mixed_precision_cb  # noqa: E402
from fvloss.losses import make_head  # noqa: E402
from fvloss.model import EmbeddingNet, FaceNet  # noqa: E402

N_CLASSES = 269


def new_model(channels_last: bool) -> FaceNet:
    torch.manual_seed(0)
    m = FaceNet(EmbeddingNet("resnet34", 128), make_head("softmax", 128, N_CLASSES)).train()
    return m.to(memory_format=torch.channels_last) if channels_last else m


class Variant:
    def __init__(self, model, opt, bf16: bool, threads: int, fwd=None):
        self.model, self.opt, self.bf16, self.threads = model, opt, bf16, threads
        self.fwd = fwd if fwd is not None else model

    def step(self, xb, yb) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.fwd(xb)
            loss = self.model.head(out, yb)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()

    def runner(self, xb, yb, steps: int):
        def run() -> list[float]:
            prev = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            out = []
            for _ in range(steps):
                t = time.perf_counter()
                self.step(xb, yb)
                out.append(time.perf_counter() - t)
            torch.set_num_threads(prev)
            return out

        return run


def child_alloc(size: int, bs: int, steps: int, threads: int, keep: bool) -> dict:
    """One process: the recipes' step (bf16 autocast, channels_last, fastai Adam) with glibc's
    default malloc or keeping freed memory; median seconds/step, page faults/step, peak RSS."""
    kept = keep_freed_memory() if keep else False
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    xb = torch.randn(bs, 3, size, size, generator=g)
    yb = torch.randint(0, N_CLASSES, (bs,), generator=g)
    m = new_model(True)
    v = Variant(m, FastaiAdam(list(m.parameters()), lr=1e-3, wd=0.0), cpu_bf16_supported(), threads)
    for _ in range(2):
        v.step(xb, yb)
    times, faults = [], []
    for _ in range(steps):
        f0, t = minor_faults(), time.perf_counter()
        v.step(xb, yb)
        times.append(time.perf_counter() - t)
        faults.append(minor_faults() - f0)
    peak = peak_rss_mib()  # VmHWM: ru_maxrss of an exec'd child starts at its parent's RSS
    return {"s": median(times), "faults": median(faults), "peak_mib": peak, "kept": kept}


def alloc_ab(size: int, bs: int, steps: int, threads: int, rounds: int) -> list[list[object]]:
    """Fresh processes alternating default malloc / kept memory (the setting is process-wide)."""
    import json
    import subprocess

    res: dict[str, list[dict]] = {"default": [], "keep": []}
    for r in range(rounds):
        for mode in ("default", "keep") if r % 2 == 0 else ("keep", "default"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-alloc", mode, str(size),
                   str(bs), str(steps), str(threads)]  # fmt: skip
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode == 0:
                res[mode].append(json.loads(p.stdout.strip().splitlines()[-1]))
    rows = []
    base = median([d["s"] for d in res["default"]])
    for mode, label in (("default", "glibc default (frees large blocks to the OS)"),
                        ("keep", "glibc keeps freed memory (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)")):  # fmt: skip
        d = res[mode]
        if not d:
            rows.append([label, "failed", "", "", "", ""])
            continue
        sec = median([x["s"] for x in d])
        rows.append([label, len(d), f"{bs / sec:.1f}", f"{base / sec:.2f}", f"{median([x['faults'] for x in d]):.0f}",
                     f"{median([x['peak_mib'] for x in d]):.0f}"])  # fmt: skip
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 px, fewer rounds, no compile")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument(
        "--full",
        action="store_true",
        help="the whole matrix at every thread count, compile fp32 too",
    )
    ap.add_argument("--probe-repeats", type=int, default=3, help="runs of the recipes' bf16 probe")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="time the bf16 rows (auto: only where the CPU has native bf16)")  # fmt: skip
    ap.add_argument("--alloc-rounds", type=int, default=2,
                    help="process pairs for the allocator A/B (0: skip)")  # fmt: skip
    ap.add_argument("--child-alloc", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--background-load", type=int, default=0, metavar="N",
                    help="run N ResNet18 training loops (2 threads each) alongside, as other jobs")  # fmt: skip
    ap.add_argument(
        "--tag", default="", help="with --save: a separate section, e.g. for a loaded run"
    )
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args(argv)
    if args.child_alloc:
        import json

        mode, size, bs, steps, threads = args.child_alloc
        print(json.dumps(child_alloc(int(size), int(bs), int(steps), int(threads), mode == "keep")))
        return 0
    if args.quick:
        args.rounds, args.steps, args.no_compile, args.probe_repeats = 2, 1, True, 1
        args.alloc_rounds = min(args.alloc_rounds, 1)
    with background_load(args.background_load) as bg:
        return run(args, bg)


def run(args, bg) -> int:
    t_start = time.time()
    nthreads = torch.get_num_threads()
    bf16_ok = cpu_bf16_supported()
    timed_bf16, why_not = precision_rows(args.bf16, bf16_ok)
    out = [
        "## CPU defaults (`bench/cpu_defaults.py`)" + (f" - {args.tag}" if args.tag else ""),
        "",
        machine_header(f"oneDNN native bf16: {bf16_ok}; {bg.describe()}"),
        "",
        *([why_not, ""] if why_not else []),
    ]
    print("\n".join(out), flush=True)

    for size in args.sizes:
        g = torch.Generator().manual_seed(0)
        xb = torch.randn(args.bs, 3, size, size, generator=g)
        yb = torch.randint(0, N_CLASSES, (args.bs,), generator=g)
        cl, nchw, cl2 = new_model(True), new_model(False), new_model(True)
        opt_cl = FastaiAdam(list(cl.parameters()), lr=1e-3, wd=0.0)
        opt_nchw = FastaiAdam(list(nchw.parameters()), lr=1e-3, wd=0.0)
        opt_fused = fused_adam(list(cl2.parameters()), lr=1e-3)
        variants = {}
        for n in sorted({1, nthreads}, reverse=True):
            t = f"{n} thread{'s' if n > 1 else ''}"
            full = args.full or n == 1  # the whole matrix at 1 thread; at n the two defaults
            if full:
                variants[f"fp32, NCHW, {t}"] = Variant(nchw, opt_nchw, False, n)
            variants[f"fp32, channels_last, {t}"] = Variant(cl, opt_cl, False, n)
            if not timed_bf16:
                continue
            if full:
                variants[f"bf16, NCHW, {t}"] = Variant(nchw, opt_nchw, True, n)
            variants[f"bf16, channels_last, {t}"] = Variant(cl, opt_cl, True, n)
            if full:
                variants[f"bf16, channels_last, {t}, fused Adam"] = Variant(cl2, opt_fused, True, n)
        compile_s = {}
        if not args.no_compile:
            precs = ("bf16", "fp32") if args.full else ("bf16" if timed_bf16 else "fp32",)
            for prec in precs if timed_bf16 else [p for p in precs if p != "bf16"]:
                for n in sorted({1, nthreads}) if args.full else (1,):
                    t = f"{n} thread{'s' if n > 1 else ''}"
                    torch.set_num_threads(
                        n
                    )  # inductor's C++ kernels take the count at compile time
                    m = new_model(True)
                    v = Variant(m, FastaiAdam(list(m.parameters()), lr=1e-3, wd=0.0), prec == "bf16",
                                n, fwd=torch.compile(m))  # fmt: skip
                    t0 = time.perf_counter()
                    v.step(xb, yb)
                    t1 = time.perf_counter()
                    v.step(xb, yb)
                    key = f"{prec}, channels_last, {t}, torch.compile"
                    compile_s[key] = (t1 - t0, time.perf_counter() - t1)
                    variants[key] = v
                    torch.set_num_threads(nthreads)
                    print(
                        f"  compiled {key}, {size}px: first step {compile_s[key][0]:.0f} s",
                        flush=True,
                    )
        res = interleave({k: v.runner(xb, yb, args.steps) for k, v in variants.items()},
                         rounds=args.rounds, warmup=1)  # fmt: skip
        tn = f"{nthreads} thread{'s' if nthreads > 1 else ''}"
        default = (
            f"bf16, channels_last, {tn}" if bf16_ok and timed_bf16 else f"fp32, channels_last, {tn}"
        )
        base = median(res[default])
        rows = []
        for k, v in sorted(res.items(), key=lambda kv: median(kv[1])):
            rows.append([k + (" (recipes' default)" if k == default else ""), f"{args.bs / median(v):.1f}",
                         f"{args.bs / min(v):.1f}", spread([args.bs / x for x in v]), f"{base / median(v):.2f}"])  # fmt: skip
        tab = md_table(
            ["variant", "img/s (median)", "img/s (best)", "IQR img/s", "speed vs default"], rows
        )
        hdr = f"### ResNet34 training step, {size} px, bs {args.bs} ({args.rounds} rounds x {args.steps} steps per variant, after a warm-up round)"
        emit(out, hdr, "", tab, "")
        if compile_s:
            emit(out, "torch.compile first step (compilation) / second step: "
                 + "; ".join(f"{k}: {a:.0f} s / {b:.1f} s" for k, (a, b) in compile_s.items()), "")  # fmt: skip
        del variants, cl, nchw, cl2, opt_cl, opt_nchw, opt_fused
        pairs = [("bf16 vs fp32 (channels_last)", "bf16, channels_last, {t}", "fp32, channels_last, {t}"),
                 ("channels_last vs NCHW (bf16)", "bf16, channels_last, {t}", "bf16, NCHW, {t}"),
                 ("channels_last vs NCHW (fp32)", "fp32, channels_last, {t}", "fp32, NCHW, {t}"),
                 ("fused Adam vs fastai Adam (bf16, channels_last)", "bf16, channels_last, {t}, fused Adam", "bf16, channels_last, {t}"),
                 ("torch.compile vs eager (bf16, channels_last)", "bf16, channels_last, {t}, torch.compile", "bf16, channels_last, {t}")]  # fmt: skip
        prow = []
        for n in sorted({1, nthreads}):
            t = f"{n} thread{'s' if n > 1 else ''}"
            for label, a, b in pairs:
                a, b = a.format(t=t), b.format(t=t)
                if a in res and b in res:
                    prow.append(
                        [
                            label,
                            t,
                            f"{median(res[b]) / median(res[a]):.2f}",
                            f"{min(res[b]) / min(res[a]):.2f}",
                        ]
                    )
        if nthreads > 1:
            for prec in ("bf16", "fp32"):
                a, b = f"{prec}, channels_last, 1 thread", f"{prec}, channels_last, {tn}"
                if a not in res or b not in res:
                    continue
                prow.append(
                    [
                        f"1 thread vs {tn} ({prec}, channels_last)",
                        "",
                        f"{median(res[b]) / median(res[a]):.2f}",
                        f"{min(res[b]) / min(res[a]):.2f}",
                    ]
                )
        tab = md_table(
            ["A vs B", "threads", "speed-up of A (medians)", "speed-up of A (best steps)"], prow
        )
        emit(out, "Ratios (>1: A is faster):", "", tab, "")

        # the recipes' start-up probe: does it pick what the full-batch measurement picks?
        prows = []
        m = new_model(True)
        for n in sorted({1, nthreads}):
            t = f"{n} thread{'s' if n > 1 else ''}"
            torch.set_num_threads(n)
            picks = []
            for _ in range(args.probe_repeats):
                cb, why = mixed_precision_cb("auto", torch.device("cpu"), m, xb[:16])
                picks.append("bf16" if cb is not None else "fp32")
                prows.append([t, picks[-1], why])
            torch.set_num_threads(nthreads)
            fp, bf = res.get(f"fp32, channels_last, {t}"), res.get(f"bf16, channels_last, {t}")
            full = f"{median(fp) / median(bf):.2f}x" if fp and bf else "n/a"
            prows.append([t, f"**{picks.count('bf16')} of {len(picks)} picked bf16**",
                          f"full batch: bf16 {full} the speed of fp32"])  # fmt: skip
        tab = md_table(["threads", "probe's choice", "its reason"], prows)
        hdr = (
            f"### The recipes' bf16 probe at {size} px (`mixed_precision_cb('auto')` on 16 images)"
        )
        emit(out, hdr, "", tab, "")
        del m

    if args.alloc_rounds > 0:
        size = args.sizes[0]
        rows = alloc_ab(size, args.bs, 6, 1, args.alloc_rounds)
        tab = md_table(["allocator", "processes", "img/s (median)", "speed vs default", "page faults/step",
                        "peak RSS MiB"], rows)  # fmt: skip
        emit(out, f"### Allocator: page faults per step ({size} px, bs {args.bs}, bf16, channels_last, 1 thread; "
                  f"fresh processes alternating, 6 steps each after 2 warm-up)", "", tab, "")  # fmt: skip

    finish(out, t_start, args.save, "cpu_defaults", args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
