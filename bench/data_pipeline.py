"""Data pipeline: decode + augment speed of one worker, and whether training is loader-bound.

    python bench/data_pipeline.py [--quick] [--sizes 64 160] [--combos 1:1 0:2] [--data DIR] [--save]

1. **One worker, images/s** (single process, 1 thread, as a DataLoader worker runs): fvloss's
   pipeline (``fvloss.imageio.read_rgb`` -> ``train_pipeline`` = Albumentations Resize +
   HorizontalFlip + Normalize -> CHW tensor) against the assignment's torchvision/PIL pipeline
   (``Image.open().convert("RGB")`` -> ``Resize((s, s))``, ``RandomHorizontalFlip``,
   ``ToTensor``, ``Normalize(0.5, 0.5)``), on the same JPEGs: CelebA-wild photos (longest side
   320) and LFW (250x250) from ``../shared`` (or ``$FVLOSS_SHARED``), else made-up JPEGs.
   Also fvloss's pipeline with OpenCV's own thread pool left at its default (what a DataLoader
   worker gets: torch sets 1 thread in workers, OpenCV does not), and a reduced-scale JPEG decode
   (``cv2.IMREAD_REDUCED_COLOR_2/4``, decoding at 1/2 or 1/4 size when that is still >= the
   target), a possible speed-up. Variants alternate image by image.
2. **Loader-bound?** The same training step (ResNet34 + softmax head, the recipes' precision,
   bs 64, fastai ``Adam``) fed by ``face_dls`` (the real loader: decode + augment in worker
   processes, default fastai's = the number of CPUs) against preloaded tensors, at the default
   worker count and torch thread count and at the ``--combos WORKERS:THREADS`` given (default
   1:1), each against preloaded tensors at the same thread count.
   Blocks of ``--steps`` steps alternate A B B A; the loader's iterator persists across blocks
   (steady state, no per-epoch worker start-up); after a loader block the run pauses ``--settle``
   s so that the workers' refill of their prefetch queue does not land in the preloaded block.
   Also the loader alone (no training): images/s with each worker count.

Target (issue 6): loader / preloaded step time at most 1.05 with the default worker count.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    PlainStep,
    background_load,
    emit,
    finish,
    interleave,
    keep_freed_memory,
    machine_header,
    made_up_jpegs,
    md_table,
    median,
    precision_rows,
    quiet_warnings,
    real_jpegs,
    spread,
)

quiet_warnings()
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from fvloss.callbacks.precision import cpu_bf16_supported  # noqa: E402
from fvloss.data import face_dls, train_pipeline  # noqa: E402
from fvloss.data.transforms import to_tensor  # noqa: E402
from fvloss.imageio import read_rgb  # noqa: E402


# -- 1. one worker ------------------------------------------------------------------------------
def fvloss_fn(size: int):
    pipe = train_pipeline(size)

    def f(p: Path) -> torch.Tensor:
        return to_tensor(pipe(image=read_rgb(p))["image"])

    return f


def reduced_fn(size: int):
    """fvloss's pipeline, but JPEGs decoded at the largest power-of-two reduction whose result
    is still at least ``size`` on its short side (libjpeg's DCT scaling, much less work)."""
    pipe = train_pipeline(size)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}  # fmt: skip

    def f(p: Path) -> torch.Tensor:
        data = np.frombuffer(p.read_bytes(), np.uint8)
        h, w = _jpeg_size(data)
        k = max([k for k in flags if min(h, w) // k >= size] or [1])
        img = cv2.cvtColor(cv2.imdecode(data, flags[k]), cv2.COLOR_BGR2RGB)
        return to_tensor(pipe(image=img)["image"])

    return f


def _jpeg_size(data: np.ndarray) -> tuple[int, int]:
    """(h, w) from a JPEG's SOF marker, without decoding."""
    b, i = data.tobytes(), 2
    while i < len(b) - 9:
        if b[i] != 0xFF:
            i += 1
            continue
        marker, seg = b[i + 1], int.from_bytes(b[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(b[i + 5 : i + 7], "big"), int.from_bytes(b[i + 7 : i + 9], "big")
        i += 2 + seg
    return 10**6, 10**6


def torchvision_fn(size: int):
    tf = T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.5] * 3, [0.5] * 3)])  # fmt: skip

    def f(p: Path) -> torch.Tensor:
        with Image.open(p) as im:
            return tf(im.convert("RGB"))

    return f


def one_worker(
    files: list[Path], size: int, rounds: int, cv2_threads_default: int
) -> dict[str, list[float]]:
    """Seconds per image for each variant; each round runs every variant over all ``files``."""
    fv, tv, rd = fvloss_fn(size), torchvision_fn(size), reduced_fn(size)

    def run(fn, cv_threads):
        def g():
            cv2.setNumThreads(cv_threads)
            t = time.perf_counter()
            for p in files:
                fn(p)
            dt = (time.perf_counter() - t) / len(files)
            cv2.setNumThreads(1)
            return dt

        return g

    fns = {
        "torchvision/PIL (assignment)": run(tv, 1),
        "fvloss (OpenCV + Albumentations), 1 thread": run(fv, 1),
        f"fvloss, OpenCV threads at default ({cv2_threads_default})": run(fv, cv2_threads_default),
        "fvloss + reduced-scale JPEG decode": run(rd, 1),
    }
    return interleave(fns, rounds=rounds, warmup=1)


# -- 2. loader-bound? ---------------------------------------------------------------------------
def loader_bound(
    root: Path, size: int, bs: int, combos: list[tuple[int | None, int | None]], steps: int,
    rounds: int, settle: float, amp: str | None, device: torch.device | str = "cpu",
    lean: tuple[int, int | None] | None = None, device_aug: bool = True,
) -> tuple[dict[str, list[float]], dict[str, tuple[float, float]], int]:  # fmt: skip
    """Per-step seconds of the training step fed by the loader for each (workers, torch threads)
    in ``combos`` (``None``: fastai's default worker count / torch's default thread count) and by
    preloaded tensors at each thread count; the loader alone's images/s and first-batch seconds;
    the number of training images. ``device_aug``: also the step fed by ``preload="on"``
    (images decoded once into memory, augmented on ``device`` in batches)."""
    device = torch.device(device)
    default_threads = torch.get_num_threads()
    combos = [(w, None if t == default_threads else t) for w, t in combos]
    if lean:
        lean = (lean[0], None if lean[1] == default_threads else lean[1])
    dls = {}
    for w in dict.fromkeys(w for w, _ in combos):
        dls[w] = face_dls(root, img_size=size, bs=bs, num_workers=w, check="none", device=device,
                          preload="off")  # fmt: skip
    pre_dls = (face_dls(root, img_size=size, bs=bs, check="none", device=device, preload="on")
               if device_aug else None)  # fmt: skip
    n_classes = next(iter(dls.values())).n_classes
    trainer = PlainStep(n_classes, amp, device)
    # preloaded: real batches from the loader, decoded once, kept in memory (on the device)
    it0 = iter(next(iter(dls.values())).train)
    pre = [tuple(t.as_subclass(torch.Tensor) for t in next(it0)) for _ in range(steps)]
    del it0

    def endless(dl):
        while True:
            yield from dl

    iters = {w: endless(d.train) for w, d in dls.items()}
    if pre_dls is not None:
        iters["pre"] = endless(pre_dls.train)

    def tname(t):
        n = t or default_threads
        return f"{n} thread{'s' if n > 1 else ''}" + (" (default)" if t is None else "")

    def wname(w):
        n = dls[w].train.fake_l.num_workers
        return f"{n} worker{'s' if n != 1 else ''}" + (" (default)" if w is None else "")

    def timed(batches, threads):
        torch.set_num_threads(threads or default_threads)
        trainer.sync()
        out, t_last = [], time.perf_counter()
        t0 = t_last
        for xb, yb in batches:
            trainer.step(xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor))
            t = time.perf_counter()
            out.append(t - t_last)
            t_last = t
        if device.type == "cuda":  # host times mean nothing per step: the block's mean
            trainer.sync()
            out = [(time.perf_counter() - t0) / len(out)] * len(out)
        torch.set_num_threads(default_threads)
        return out

    def loader_side(w, t):
        def g():
            out = timed((next(iters[w]) for _ in range(steps)), t)
            time.sleep(settle)  # let the workers refill their queue before the next block
            return out

        return g

    fns = {}
    for t in dict.fromkeys(t for _, t in combos + ([lean] if lean else [])):
        fns[f"preloaded tensors, {tname(t)}"] = lambda t=t: timed(pre, t)
    for w, t in combos:
        fns[f"loader, {wname(w)}, {tname(t)}"] = loader_side(w, t)
    if pre_dls is not None:
        t = combos[0][1]
        fns[f"preloaded images + device augmentation, {tname(t)}"] = loader_side("pre", t)
    lean_dl = None
    if lean:  # the same decode + augment in a plain torch DataLoader: what fastai's layer costs
        w, t = lean
        lean_dl = lean_loader(next(iter(dls.values())), size, bs, w)
        iters["lean"] = endless(lean_dl)
        fns[f"lean torch DataLoader (no fastai), {w} worker{'s' if w != 1 else ''}, {tname(t)}"] = (
            loader_side("lean", t)
        )
    res = interleave(fns, rounds=rounds, warmup=1)
    iters.clear()
    gc.collect()
    alone = {wname(w): loader_alone(d.train, max(2 * steps, 8)) for w, d in dls.items()}
    if pre_dls is not None:
        alone["preloaded images + device augmentation"] = loader_alone(
            pre_dls.train, max(2 * steps, 8)
        )
    if lean_dl is not None:
        alone["lean"] = loader_alone(lean_dl, max(2 * steps, 8))
    d = next(iter(dls.values()))
    alone["bare"] = bare_alone(list(d.train.items), size, bs, max(2 * steps, 8))
    return res, alone, len(dls[combos[0][0]].train_ds)


class _LeanDataset(torch.utils.data.Dataset):
    def __init__(self, items, labels, size):
        self.items, self.labels, self.size, self.fn = items, labels, size, None

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if self.fn is None:  # built in the worker: Albumentations pipelines pickle poorly
            self.fn = fvloss_fn(self.size)
        return self.fn(self.items[i]), self.labels[i]


def lean_loader(dls, size: int, bs: int, workers: int):
    """A plain ``torch.utils.data.DataLoader`` over the training split of ``dls`` with fvloss's
    decode + augment and nothing of fastai's per-item machinery (persistent workers)."""
    items = list(dls.train.items)
    vocab = {v: i for i, v in enumerate(dls.vocab)}
    labels = [vocab[p.parent.name] for p in items]
    return torch.utils.data.DataLoader(
        _LeanDataset(items, labels, size), batch_size=bs, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0,
    )  # fmt: skip


def bare_alone(files: list[Path], size: int, bs: int, n_batches: int) -> tuple[float, float]:
    """Images/s of fvloss's decode + augment + ``torch.stack`` into batches in this process,
    without fastai's Datasets/DataLoader machinery: what loading costs at the least."""
    f = fvloss_fn(size)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(files), size=min(len(files), n_batches * bs), replace=False)
    t = time.perf_counter()
    for k in range(0, len(idx), bs):
        torch.stack([f(files[i]) for i in idx[k : k + bs]])
    return len(idx) / (time.perf_counter() - t), 0.0


def loader_alone(dl, n_batches: int) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch) of a fresh iterator."""
    t0 = time.perf_counter()
    it = iter(dl)
    xb, _ = next(it)
    t1 = time.perf_counter()
    n = 0
    for xb, _ in it:
        n += len(xb)
        if n >= n_batches * len(xb):
            break
    if xb.device.type == "cuda":
        torch.cuda.synchronize(xb.device)
    return n / (time.perf_counter() - t1), t1 - t0


def parse_combo(c: str) -> tuple[int, int]:
    w, t = c.split(":")
    return int(w), int(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and steps (~1 min)")
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 160], help="output sizes for part 1"
    )
    ap.add_argument("--n-images", type=int, default=64, help="JPEGs per data set in part 1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", help="identity folder for part 2 (default: ../shared CelebA-wild)")
    ap.add_argument(
        "--img-size", type=int, default=64, help="training size in part 2 (recipes: 64)"
    )
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--combos", nargs="*", default=["1:1"],
                    help="WORKERS:THREADS pairs besides the defaults (fastai's worker count, torch's "
                         "thread count), e.g. 1:1 0:2 2:1")  # fmt: skip
    ap.add_argument("--steps", type=int, default=5, help="steps per block in part 2")
    ap.add_argument("--lean", default="", metavar="WORKERS:THREADS",
                    help="also feed the step from a plain torch DataLoader (same pipeline, no fastai)")  # fmt: skip
    ap.add_argument("--loader-rounds", type=int, default=2)
    ap.add_argument("--settle", type=float, default=1.5)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="part 2's dtype (auto: bf16 where the CPU has native bf16, as the recipes pick; else fp32)")  # fmt: skip
    ap.add_argument("--skip", nargs="*", default=[], choices=["worker", "loader"])
    ap.add_argument(
        "--keep-memory",
        action="store_true",
        help="glibc keeps freed memory (no page faults per step), as proposed for the recipes",
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    ap.add_argument("--background-load", type=int, default=0, metavar="N",
                    help="run N ResNet18 training loops (2 threads each) alongside, as other jobs")  # fmt: skip
    ap.add_argument(
        "--tag", default="", help="with --save: a separate section, e.g. for a loaded run"
    )
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_images, args.rounds, args.sizes, args.steps, args.loader_rounds = 32, 2, [64], 3, 1
    with background_load(args.background_load) as bg:
        return run(args, bg)


def run(args, bg) -> int:
    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = (
        "glibc keeps freed memory (--keep-memory)"
        if args.keep_memory and keep_freed_memory()
        else "default malloc"
    )
    cv2_default, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    torch.set_num_threads(1)  # part 1 is "one worker"
    out = [
        "## Data pipeline (`bench/data_pipeline.py`)" + (f" - {args.tag}" if args.tag else ""),
        "",
        machine_header(f"{malloc}; {bg.describe()}"),
        "",
    ]
    print("\n".join(out), flush=True)

    tmp = None
    sets = {k: real_jpegs(k) for k in ("celeba", "lfw")}
    sets = {"CelebA-wild": sets["celeba"], "LFW": sets["lfw"]}
    if args.data:
        sets[Path(args.data).name] = sorted(Path(args.data).glob("*/*.jpg"))
    if not any(sets.values()):
        tmp = tempfile.TemporaryDirectory()
        sets = {"made-up JPEGs (no ../shared data)": made_up_jpegs(Path(tmp.name) / "jpg", 64)}
        print("../shared data not found: using made-up JPEGs", flush=True)

    if "worker" not in args.skip:
        rows = []
        for label, files in sets.items():
            if not files:
                continue
            files = files[:: max(1, len(files) // args.n_images)][: args.n_images]
            shape = read_rgb(files[0]).shape
            for size in args.sizes:
                r = one_worker(files, size, args.rounds, cv2_default)
                base = median(r["torchvision/PIL (assignment)"])
                for k, v in r.items():
                    rows.append([f"{label} (e.g. {shape[1]}x{shape[0]})", size, k, f"{1 / median(v):.0f}",
                                 f"{1000 * median(v):.2f}", f"{base / median(v):.2f}"])  # fmt: skip
                print(f"  {label} -> {size}px done", flush=True)
        tab = md_table(
            ["JPEGs", "out px", "pipeline", "img/s (median)", "ms/img", "speed vs torchvision"],
            rows,
        )
        note = (f"{args.n_images} JPEGs per set, {args.rounds} interleaved rounds (median), 1 torch thread; "
                f"OpenCV's default thread count here is {cv2_default}.")  # fmt: skip
        out += ["### 1. One worker: decode + augment", "", note, "", tab, ""]
        print("\n".join(out[-6:]), flush=True)

    if "loader" not in args.skip:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_default)
        root = Path(args.data) if args.data else None
        if root is None:
            celeba = sets.get("CelebA-wild") or []
            root = celeba[0].parents[1] if celeba else None
        if root is None:
            tmp = tmp or tempfile.TemporaryDirectory()
            made_up_jpegs(Path(tmp.name) / "ids", 8 * args.bs, (320, 240))
            root = Path(tmp.name) / "ids"
        combos = [(None, None), *(parse_combo(c) for c in args.combos)]
        use_bf16, why_not = precision_rows(
            {"auto": "auto", "bf16": "on", "fp32": "off"}[args.precision], cpu_bf16_supported()
        )
        amp = "bf16" if use_bf16 else None
        if why_not and args.precision == "auto":
            emit(out, f"Part 2 trains in fp32: {why_not.replace('bf16 rows skipped: ', '')}", "")
        lean = parse_combo(args.lean) if args.lean else None
        res, alone, n_imgs = loader_bound(root, args.img_size, args.bs, combos, args.steps,
                                          args.loader_rounds, args.settle, amp, lean=lean)  # fmt: skip
        rows = []
        for k, v in res.items():
            thr = k.split(", ")[-1]
            base = median(res[f"preloaded tensors, {thr}"])
            wk = (
                k.split(", ")[1]
                if k.startswith("loader")
                else "lean"
                if k.startswith("lean")
                else None
            )
            a = alone.get(wk)
            rows.append([k, f"{args.bs / median(v):.1f}", f"{median(v):.3f}", spread(v), f"{median(v) / base:.3f}",
                         f"{a[0]:.0f}" if a else "", f"{a[1]:.2f}" if a else ""])  # fmt: skip
        rows.append(["(no training) bare decode + augment + stack, 1 process, no fastai", "", "", "", "",
                     f"{alone['bare'][0]:.0f}", ""])  # fmt: skip
        tab = md_table(["train step fed by", "img/s", "s/step (median)", "IQR", "ratio vs preloaded (same threads)",
                        "loader alone img/s", "first batch s"], rows)  # fmt: skip
        note = (f"{root.name} ({n_imgs} training images) -> {args.img_size} px, bs {args.bs}, ResNet34 + softmax, "
                f"{args.precision}, channels_last, fastai Adam; {args.steps} steps/block x {args.loader_rounds} "
                f"rounds after a warm-up round, {args.settle} s pause after each loader block.")  # fmt: skip
        emit(out, "### 2. Is the training step loader-bound?", "", note, "", tab, "")
    if tmp is not None:
        tmp.cleanup()
    finish(out, t_start, args.save, "data_pipeline", args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
