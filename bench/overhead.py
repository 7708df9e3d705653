"""Framework overhead: fastai ``Learner`` (``face_learner``, each recipe's callbacks) against a
plain PyTorch loop with the same model, batch, dtype and optimizer, on preloaded tensors.

    python bench/overhead.py [--quick] [--sizes 64 112] [--rounds 4] [--steps 4] [--save]

Three measurements, each an interleaved A/B comparison in this one run (the machine's speed
drifts, so a baseline from another run means nothing):

1. **Fixed cost per step** with a tiny conv body (model compute ~ms, so the framework's own
   per-batch work - callbacks, Recorder, hyper-parameter scheduling, fastai's optimizer loop -
   is what is timed); many steps, exact to ~0.1 ms.
2. **Optimizer step on ResNet34's 21.4M parameters**: fastai's ``Adam`` (``face_learner``'s
   default) against ``torch.optim.Adam`` (the hand-written loop's), plus torch's ``foreach`` and
   ``fused`` kernels; also checks that ``torch.optim.Adam(betas=(0.9, 0.99), eps=1e-5)`` gives
   the same weights as fastai's ``Adam`` (its defaults).
3. **End to end**: ResNet34 + head, softmax / center / ArcFace, images/s of
   ``face_learner(...).fit_one_cycle`` (``val_pairs=None``, no progress bar, validation cancelled)
   against the plain loop, blocks of ``--steps`` batches alternating A B B A; every step of a block
   is timed (end of the previous step to end of this one, batch fetch included), the first round
   is warm-up. The per-``fit`` start-up cost is reported apart (it is paid once per epoch).

Target (issue 6): Learner / plain step time at most 1.03.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    emit,
    finish,
    fused_adam,
    interleave,
    keep_freed_memory,
    machine_header,
    md_table,
    median,
    minor_faults,
    quiet_warnings,
    spread,
    sync,
)

quiet_warnings()

import torch  # noqa: E402
from fastai.callback.core import Callback, CancelValidException  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.optimizer import Adam as FastaiAdam  # noqa: E402
from torch import nn  # noqa: E402

from fvloss.callbacks.center import center_loss_term, center_update  # noqa: E402
from fvloss.callbacks.precision import mixed_precision_cb  # noqa: E402
from fvloss.learner import face_learner  # noqa: E402
from fvloss.losses import make_head  # noqa: E402
from fvloss.model import EmbeddingNet, FaceNet, register_arch  # noqa: E402

N_CLASSES = 269  # CelebA-wild's training identities (299 minus 10% held out)
HEAD_KW = {"softmax": {}, "center": {}, "arcface": {"s": 64.0, "m": 0.5}}
CENTER_LAM, CENTER_ALPHA = 0.003, 0.5
CENTER_KW = {"softmax": {}, "arcface": {}, "center": {"lam": CENTER_LAM, "alpha": CENTER_ALPHA}}
LR = 1e-3


class TinyBody(nn.Module):
    """A torchvision-ResNet-shaped stand-in (it has ``fc``) that costs almost nothing."""

    def __init__(self, weights=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


register_arch("bench_tiny", TinyBody, 16)


class StepClock(Callback):
    """Times every training batch (end of the previous one to the end of this one, so the batch
    fetch counts) and cancels validation: training only. On CUDA, where a step's end on the host
    is not its end on the device, it times the whole training phase between two synchronisations
    and reports its mean per step."""

    order = 200  # after every other callback's after_batch

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def before_fit(self):
        self.t_fit, self.steps = time.perf_counter(), []

    def before_train(self):
        sync(self.device)
        self.t_train = self.t_last = time.perf_counter()

    def after_batch(self):
        t = time.perf_counter()
        if self.training:
            self.steps.append(t - self.t_last)
        self.t_last = t

    def after_train(self):
        if self.device.type == "cuda":
            sync(self.device)
            n = len(self.steps)
            self.steps = [(time.perf_counter() - self.t_train) / n] * n

    def before_validate(self):
        raise CancelValidException()

    def after_fit(self):
        self.fit_s = time.perf_counter() - self.t_fit


def make_batches(
    n: int, bs: int, size: int, seed: int = 0, device: torch.device | str = "cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(bs, 3, size, size, generator=g).to(device),
            torch.randint(0, N_CLASSES, (bs,), generator=g).to(device),
        )
        for _ in range(n)
    ]


# -- the two sides ------------------------------------------------------------------------------
class LearnerSide:
    """``face_learner`` on DataLoaders of preloaded batches; ``run()`` is one ``fit_one_cycle(1)``
    over them and returns the per-step seconds. ``amp``: None, "bf16" or "fp16", through
    fvloss's ``mixed_precision_cb`` (CPUAutocast on CPU, fastai's MixedPrecision on CUDA)."""

    def __init__(
        self, loss, arch, batches, amp, opt_func=FastaiAdam, channels_last=True, device="cpu"
    ):
        self.device = torch.device(device)
        torch.manual_seed(0)
        dls = DataLoaders(batches, [])
        dls._device = self.device  # fastai's TrainEvalCallback moves the model there
        self.clock = StepClock(self.device)
        self.learn = face_learner(
            dls, loss=loss, arch=arch, n_classes=N_CLASSES, settings={**HEAD_KW[loss], **CENTER_KW[loss]}, val_pairs=None, opt_func=opt_func,
            channels_last=channels_last, cbs=[self.clock],
        )  # fmt: skip
        self.learn.model.to(self.device)
        self.learn.remove_cb(self.learn.progress)
        self.learn.logger = lambda *a, **k: None
        if amp:
            cb, _ = mixed_precision_cb(amp, self.device)
            self.learn.add_cb(cb)
        self.fit_overhead: list[float] = []
        self.faults: list[float] = []

    def run(self) -> list[float]:
        f0 = minor_faults()
        self.learn.fit_one_cycle(1, LR)
        self.faults.append((minor_faults() - f0) / len(self.clock.steps))
        self.fit_overhead.append(self.clock.fit_s - sum(self.clock.steps))
        return list(self.clock.steps)


class PlainSide:
    """The hand-written loop: same FaceNet + head, ``head(emb, y)`` (+ the center term and update),
    ``torch.optim.Adam``, the same batches and autocast (+ GradScaler for fp16, as fastai's
    MixedPrecision)."""

    def __init__(self, loss, arch, batches, amp, opt_kwargs=None, channels_last=True, device="cpu",
                 set_to_none=True):  # fmt: skip
        self.device = torch.device(device)
        self.set_to_none, self.faults = set_to_none, []
        torch.manual_seed(0)
        head = make_head(loss, 128, N_CLASSES, **HEAD_KW[loss])
        self.model = FaceNet(EmbeddingNet(arch, 128), head)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.to(self.device).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, **(opt_kwargs or {}))
        self.center = loss == "center"
        self.centers = torch.zeros(N_CLASSES, 128, device=self.device)
        self.batches, self.amp = batches, amp
        self.dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None

    def run(self) -> list[float]:
        model, head, opt, scaler = self.model, self.model.head, self.opt, self.scaler
        sync(self.device)
        f0 = minor_faults()
        steps, t_last = [], time.perf_counter()
        t0 = t_last
        for xb, yb in self.batches:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp is not None):
                emb = model.embedder(xb)
                loss = head(emb, yb)
            if self.center:
                loss = loss + CENTER_LAM * center_loss_term(emb, self.centers, yb)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            opt.zero_grad(set_to_none=self.set_to_none)
            if self.center:
                center_update(self.centers, emb.detach(), yb, CENTER_ALPHA)
            t = time.perf_counter()
            steps.append(t - t_last)
            t_last = t
        if self.device.type == "cuda":
            sync(self.device)
            steps = [(time.perf_counter() - t0) / len(steps)] * len(steps)
        self.faults.append((minor_faults() - f0) / len(steps))
        return steps


def compare(
    loss, arch, size, bs, steps, rounds, amp, extra_sides=(), device="cpu"
) -> dict[str, list[float]]:
    batches = make_batches(steps, bs, size, device=device)
    kw = {"device": device}
    sides = {
        "plain": PlainSide(loss, arch, batches, amp, **kw),
        "learner": LearnerSide(loss, arch, batches, amp, **kw),
    }
    if "aa" in extra_sides:  # a second plain loop: the noise floor of comparing two instances
        sides["plain_b"] = PlainSide(loss, arch, batches, amp, **kw)
    if "keepgrad" in extra_sides:  # the plain loop zeroing its grads in place, as fastai does
        sides["plain_keepgrad"] = PlainSide(loss, arch, batches, amp, set_to_none=False, **kw)
    if "fused" in extra_sides:
        sides["plain_fused"] = PlainSide(loss, arch, batches, amp, {"fused": True}, **kw)
        sides["learner_fused"] = LearnerSide(loss, arch, batches, amp, opt_func=fused_adam, **kw)
    res = interleave({k: s.run for k, s in sides.items()}, rounds=rounds, warmup=1)
    res["_fit_overhead"] = sides["learner"].fit_overhead[1:]
    for k, side in sides.items():
        res[f"_faults_{k}"] = side.faults[1:]
    sides.clear()
    gc.collect()
    return res


# -- optimizer step on ResNet34 ---------------------------------------------------------------
def optimizer_bench(rounds: int) -> tuple[list[list[object]], float, int]:
    def params():
        torch.manual_seed(0)
        m = FaceNet(EmbeddingNet("resnet34", 128), make_head("softmax", 128, N_CLASSES))
        m = m.to(memory_format=torch.channels_last)
        ps = list(m.parameters())
        g = torch.Generator().manual_seed(1)
        for p in ps:  # in the parameter's own memory format, as autograd makes them
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g)) * 1e-3
        return ps

    opts = {
        "fastai Adam (face_learner default)": FastaiAdam(params(), lr=LR, wd=0.0),
        "torch Adam, default (for-loop on CPU)": torch.optim.Adam(params(), lr=LR),
        "torch Adam, foreach=True": torch.optim.Adam(params(), lr=LR, foreach=True),
        "torch Adam, fused=True": torch.optim.Adam(params(), lr=LR, fused=True),
        "fused_adam (OptimWrapper, fastai's betas/eps)": fused_adam(params(), lr=LR),
    }
    # same math? fastai Adam vs torch Adam with fastai's betas and eps, 3 steps from the same start
    a, b = FastaiAdam(params(), lr=LR, wd=0.0), fused_adam(params(), lr=LR)
    for _ in range(3):
        a.step()
        b.step()
    pa = [p for p, *_ in a.all_params()]
    pb = [p for p, *_ in b.all_params()]
    maxdiff = max(float((x - y).abs().max()) for x, y in zip(pa, pb))
    n = sum(p.numel() for p in pa)
    del a, b, pa, pb
    zero_t = []

    def fastai_zero():
        t = time.perf_counter()
        opts["fastai Adam (face_learner default)"].zero_grad()
        zero_t.append(time.perf_counter() - t)
        for p, *_ in opts["fastai Adam (face_learner default)"].all_params():
            p.grad.normal_(0, 1e-3)  # not timed

    times = interleave({k: o.step for k, o in opts.items()}, rounds=rounds, warmup=2)
    for _ in range(5):
        fastai_zero()
    base = median(times["torch Adam, default (for-loop on CPU)"])
    rows = [
        [k, f"{1000 * median(v):.1f}", spread([1000 * x for x in v]), f"{median(v) / base:.2f}"]
        for k, v in times.items()
    ]
    rows.append(
        [
            "fastai `zero_grad` (memset of all grads; torch sets them to None)",
            f"{1000 * median(zero_t):.1f}",
            spread([1000 * x for x in zero_t]),
            "",
        ]
    )
    opts.clear()
    gc.collect()
    return rows, maxdiff, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="softmax only, fewer steps (~1 min)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--heads", nargs="+", default=["softmax", "center", "arcface"])
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="batches per timed block")
    ap.add_argument("--rounds", type=int, default=3, help="timed A/B rounds after one warm-up")
    ap.add_argument("--tiny-steps", type=int, default=30)
    ap.add_argument("--opt-rounds", type=int, default=8)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: what the recipes pick (fvloss's bf16 probe)")  # fmt: skip
    ap.add_argument("--fused", action="store_true", help="also time both sides with fused Adam")
    ap.add_argument("--keepgrad", action="store_true",
                    help="also time the plain loop zeroing grads in place (fastai's way) instead of freeing them")  # fmt: skip
    ap.add_argument("--aa", action="store_true",
                    help="also time a second plain loop (A/A): how far two identical sides differ")  # fmt: skip
    ap.add_argument("--skip", nargs="*", default=[], choices=["tiny", "opt", "e2e"])
    ap.add_argument(
        "--keep-memory",
        action="store_true",
        help="glibc keeps freed memory (no page faults per step), as proposed for the recipes",
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    ap.add_argument(
        "--tag", default="", help="with --save: a separate section, e.g. for a --fused run"
    )
    ap.add_argument("--save", action="store_true", help="write the tables to bench/results/")
    args = ap.parse_args(argv)
    if args.quick:
        args.heads, args.steps, args.rounds, args.tiny_steps, args.opt_rounds = (
            ["softmax"],
            2,
            2,
            20,
            5,
        )
    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = (
        "glibc keeps freed memory (--keep-memory)"
        if args.keep_memory and keep_freed_memory()
        else "default malloc"
    )

    bf16 = args.precision == "bf16"
    why = args.precision
    if args.precision == "auto":
        torch.manual_seed(0)
        probe_model = FaceNet(EmbeddingNet("resnet34", 128), make_head("softmax", 128, N_CLASSES))
        probe_model = probe_model.to(memory_format=torch.channels_last)
        cb, why = mixed_precision_cb(
            "auto",
            torch.device("cpu"),
            probe_model,
            torch.randn(16, 3, args.sizes[0], args.sizes[0]),
        )
        bf16 = cb is not None
        del probe_model
    dtype = "bf16 autocast" if bf16 else "fp32"
    amp = "bf16" if bf16 else None
    out = [
        "## Framework overhead (`bench/overhead.py`)" + (f" - {args.tag}" if args.tag else ""),
        "",
        machine_header(f"precision: {dtype} ({why}); {malloc}"),
        "",
    ]
    print("\n".join(out), flush=True)

    if "tiny" not in args.skip:
        r = compare("softmax", "bench_tiny", 64, args.bs, args.tiny_steps, 5, amp)
        p, lrn = median(r["plain"]), median(r["learner"])
        rows = [["plain loop", f"{1000 * p:.2f}", spread([1000 * x for x in r["plain"]]), ""],
                ["face_learner", f"{1000 * lrn:.2f}", spread([1000 * x for x in r["learner"]]), f"+{1000 * (lrn - p):.2f} ms"],
                ["face_learner, per `fit` call (once per epoch)", f"{1000 * median(r['_fit_overhead']):.1f}", "", ""]]  # fmt: skip
        tab = md_table(
            [
                f"tiny body, softmax, 64 px, bs {args.bs}",
                "ms/step (median)",
                "IQR",
                "Learner - plain",
            ],
            rows,
        )
        emit(out, "### 1. Fixed framework cost per step (tiny model)", "", tab, "")

    if "opt" not in args.skip:
        rows, maxdiff, n = optimizer_bench(args.opt_rounds)
        tab = md_table(
            [
                f"optimizer step, ResNet34 + 128-d + softmax head ({n / 1e6:.1f}M params)",
                "ms (median)",
                "IQR",
                "vs torch default",
            ],
            rows,
        )
        note = (f"fastai `Adam` vs `torch.optim.Adam(betas=(0.9, 0.99), eps=1e-5, fused=True)` after 3 steps "
                f"from the same weights: max |difference| = {maxdiff:.2e}")  # fmt: skip
        emit(out, "### 2. Optimizer step on ResNet34's parameters", "", tab, "", note, "")

    if "e2e" not in args.skip:
        rows = []
        extra = (("fused",) if args.fused else ()) + (("aa",) if args.aa else ())
        extra += ("keepgrad",) if args.keepgrad else ()
        for size in args.sizes:
            for loss in args.heads:
                r = compare(loss, "resnet34", size, args.bs, args.steps, args.rounds, amp, extra)
                p, lrn = median(r["plain"]), median(r["learner"])
                row = [loss, size, f"{args.bs / p:.1f}", f"{args.bs / lrn:.1f}", f"{lrn / p:.3f}",
                       spread([x / p for x in r["learner"]]), len(r["plain"]), f"{median(r['_fit_overhead']):.2f}"]  # fmt: skip
                row.append(f"{median(r['_faults_plain']):.0f} / {median(r['_faults_learner']):.0f}")
                if args.aa:
                    row.append(f"{median(r['plain_b']) / p:.3f}")
                if args.keepgrad:
                    row.append(f"{median(r['learner']) / median(r['plain_keepgrad']):.3f}")
                if args.fused:
                    pf, lf = median(r["plain_fused"]), median(r["learner_fused"])
                    row += [f"{args.bs / pf:.1f}", f"{args.bs / lf:.1f}", f"{lf / pf:.3f}"]
                rows.append(row)
                print(
                    f"  {loss} {size}px: plain {args.bs / p:.1f} img/s, learner {args.bs / lrn:.1f} img/s, ratio {lrn / p:.3f}",
                    flush=True,
                )
        hdr = [
            "head",
            "px",
            "plain img/s",
            "Learner img/s",
            "ratio (step time L/P)",
            "L steps / plain median, IQR",
            "steps/side",
            "fit start-up s",
        ]
        hdr += ["page faults/step plain / Learner"]
        if args.aa:
            hdr += ["A/A: 2nd plain loop / plain"]
        if args.keepgrad:
            hdr += ["Learner / plain with zero_grad(set_to_none=False)"]
        if args.fused:
            hdr += ["plain fused img/s", "Learner fused img/s", "ratio fused"]
        tab = md_table(hdr, rows)
        emit(
            out,
            f"### 3. End to end, ResNet34 + 128-d head, bs {args.bs}, {dtype}, channels_last",
            "",
            tab,
            "",
        )
    finish(out, t_start, args.save, "overhead", args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
