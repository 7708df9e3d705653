"""Helpers shared by the benchmarks in ``bench/``: where the data is, what the machine is, how
loaded it is, peak memory, interleaved A/B timing and Markdown tables / results files.

The scripts import it as ``bench._common`` (they put the repository root on ``sys.path``), so
both ``python bench/NAME.py`` and ``python -m bench.NAME`` work from a clean checkout.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the functions that need it: the header helpers stay light
    import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


# -- data ---------------------------------------------------------------------------------------
def shared_dir() -> Path:
    """``$FVLOSS_SHARED`` or the ``shared/`` folder beside the repository (``../shared``)."""
    env = os.environ.get("FVLOSS_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def real_jpegs(kind: str = "celeba", limit: int | None = None) -> list[Path]:
    """Sorted JPEGs of a shared data set (``celeba``: in-the-wild photos, longest side 320;
    ``lfw``: 250x250), or ``[]`` when ``../shared`` is absent."""
    sub = {"celeba": "data/celeba-wild/images", "lfw": "data/lfw-view1/images"}[kind]
    root = shared_dir() / sub
    if not root.is_dir():
        return []
    files = sorted(root.glob("*/*.jpg"))
    return files[:limit] if limit else files


def made_up_jpegs(folder: Path, n: int = 64, size: tuple[int, int] = (320, 240)) -> list[Path]:
    """``n`` synthetic JPEGs of ``size`` (w, h) in ``folder``: noise plus smooth shapes, so the
    encoded size is photo-like. The fallback when ``../shared`` is absent."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    out = []
    for i in range(n):
        yy, xx = np.mgrid[0:h, 0:w]
        base = (128 + 80 * np.sin(xx / (7 + i % 5)) * np.cos(yy / (11 + i % 3)))[..., None]
        img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        p = folder / f"id{i % 8:02d}" / f"img_{i:04d}.jpg"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(p)
    return out


# -- machine ------------------------------------------------------------------------------------
def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_short_name() -> str:
    """A file-name-safe name of this CPU, e.g. ``amd-epyc-avx512bf16-2c``."""
    name = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*", "", cpu_model().lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cpu"
    flags = cpu_flags()
    isa = (
        "amx"
        if "amx_bf16" in flags
        else "avx512bf16"
        if "avx512_bf16" in flags
        else "avx512"
        if "avx512f" in flags
        else "avx2"
        if "avx2" in flags
        else ""
    )
    return "-".join(x for x in (name, isa, f"{os.cpu_count()}c") if x)


def precision_rows(ask: str, native_bf16: bool) -> tuple[bool, str]:
    """Whether to time bf16 rows (``ask``: ``auto`` | ``on`` | ``off``) and, when not, the line
    saying why. On a CPU without native bf16 (no AVX512-BF16 / AMX: AVX2 only) bf16 autocast runs
    12-30x slower than fp32 (FIELD-NOTES, 2026-11-28): minutes for a number nobody would use."""
    if ask == "on" or (ask == "auto" and native_bf16):
        return True, ""
    if ask == "off":
        return False, "bf16 rows skipped (--bf16 off)."
    return False, (
        "bf16 rows skipped: this CPU has no native bf16 (no AVX512-BF16 / AMX), where bf16 "
        "autocast runs 12-30x slower than fp32; `--bf16 on` times them anyway."
    )


def load_avg() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_header(extra: str = "") -> str:
    """Markdown lines: date, command line, CPU, torch, threads, load."""
    import torch

    flags = cpu_flags()
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    lines = [
        f"- date: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- command: `{command_line()}`",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores; {isa or 'no AVX2/AVX-512 flags'})",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads",
        f"- load average at start (1/5/15 min): {load_avg()}",
    ]
    if extra:
        lines.append(f"- {extra}")
    return "\n".join(lines)


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        p = Path(argv[0]).resolve()
        argv[0] = str(p.relative_to(REPO)) if p.is_relative_to(REPO) else argv[0]
        return "python " + shlex.join(argv)
    return "python -m " + shlex.join(argv)


# -- memory -------------------------------------------------------------------------------------
def _status_kb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise KeyError(key)


def rss_mib() -> float:
    """Resident set size now, MiB (Linux ``VmRSS``)."""
    try:
        return _status_kb("VmRSS") / 1024
    except (OSError, KeyError):
        return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        return _status_kb("VmHWM") / 1024
    except (OSError, KeyError):
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 1024 / (1024 if sys.platform == "darwin" else 1)


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to ``/proc/self/clear_refs``);
    False where that is not allowed (then measure in a fresh process)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def keep_freed_memory() -> bool:
    """glibc: keep freed memory in the process (no ``mmap`` for large blocks, no trimming of the
    heap) instead of returning it to the OS and faulting it back in at the next training step.
    What ``--keep-memory`` applies; False where it is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel had to map in)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def busy_loop(threads: int = 2, size: int = 64, bs: int = 16) -> None:
    """Train a ResNet18 forever with ``threads`` intra-op threads: a stand-in for another
    engineer's training job on a shared machine (see :func:`background_load`)."""
    import torch
    from torchvision.models import resnet18

    torch.set_num_threads(threads)
    m = resnet18(num_classes=100)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, 100, (bs,))
    while True:
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        opt.zero_grad()


class background_load:
    """``with background_load(n, threads):`` runs ``n`` :func:`busy_loop` processes (other
    training jobs) for the block's duration; they are ended by their own ids afterwards."""

    def __init__(self, n: int, threads: int = 2):
        self.n, self.threads, self.procs = n, threads, []

    def __enter__(self):
        import subprocess

        code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from bench._common import busy_loop; busy_loop({self.threads})"
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", code]))
        time.sleep(5 if self.n else 0)  # let them start (imports) and reach their loop
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except Exception:
                p.kill()
        return False

    def describe(self) -> str:
        if not self.n:
            return "no background load added"
        return (
            f"background load: {self.n} ResNet18 training loop{'s' if self.n > 1 else ''} "
            f"at {self.threads} threads each, running throughout (stand-ins for other jobs)"
        )


# -- timing -------------------------------------------------------------------------------------
def interleave(
    fns: dict[str, Callable[[], float | None]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each of ``fns`` once per round, the order reversed every other round (A B, B A, ...),
    so that this machine's drifting speed hits every variant alike. A function returns its own
    measured seconds (or ``None``: then its wall time counts). The first ``warmup`` rounds are
    not kept."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            v = fns[n]()
            dt = time.perf_counter() - t0 if v is None else v
            if r >= warmup:
                if isinstance(v, list):
                    out[n].extend(v)
                else:
                    out[n].append(dt)
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float]) -> str:
    """The interquartile range as ``lo-hi`` (min-max under 4 samples)."""
    if not xs:
        return "n/a"
    s = sorted(xs)
    if len(s) < 4:
        return f"{s[0]:.3g}-{s[-1]:.3g}"
    q = statistics.quantiles(s, n=4)
    return f"{q[0]:.3g}-{q[2]:.3g}"


# -- output -------------------------------------------------------------------------------------
def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def end_line(t_start: float) -> str:
    return f"(load average at end: {load_avg()}; {time.time() - t_start:.0f} s in all)"


def emit(out: list[str], *lines: str) -> None:
    """Add ``lines`` to the report ``out`` and print them now (long runs show progress)."""
    out.extend(lines)
    print("\n".join(lines), flush=True)


def finish(out: list[str], t_start: float, save: bool, key: str, tag: str = "") -> None:
    """End the report with the load and duration; with ``save``, write it into the results file
    under ``key`` (``key-tag`` for a tagged variant, kept beside the untagged section)."""
    emit(out, end_line(t_start))
    if save:
        print("saved to", save_section("\n".join(out), key + (f"-{tag}" if tag else "")))


def save_section(text: str, key: str, path: Path | None = None) -> Path:
    """Put ``text`` into ``path`` (default ``bench/results/cpu_<cpu>.md``) between markers named
    ``key``, replacing what an earlier run of the same script wrote there."""
    path = path or RESULTS / f"cpu_{cpu_short_name()}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    old = path.read_text() if path.exists() else f"# Benchmarks on {cpu_model()}\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)
    return path


def quiet_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="fastai")


# -- the plain training step the benchmarks compare against -------------------------------------
def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a wall clock measures it (a no-op on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fused_adam(params, **kw):
    """fastai ``Adam``'s math (mom 0.9, sqr_mom 0.99, eps 1e-5) with torch's fused kernel."""
    import torch
    from fastai.optimizer import OptimWrapper

    return OptimWrapper(params, torch.optim.Adam, betas=(0.9, 0.99), eps=1e-5, fused=True, **kw)


class PlainStep:
    """One training step of ResNet34 + 128-d + softmax head as the recipes run it, written out
    by hand: fastai's Adam (or ``fused``), autocast for ``amp`` ("bf16" or "fp16", None: fp32),
    fp16 with a GradScaler as fastai's MixedPrecision."""

    def __init__(self, n_classes: int, amp: str | None, device="cpu", channels_last: bool = True,
                 fused: bool = False):  # fmt: skip
        import torch
        from fastai.optimizer import Adam

        from fvloss.losses import make_head
        from fvloss.model import EmbeddingNet, FaceNet

        self.device, self.amp = torch.device(device), amp
        torch.manual_seed(0)
        m = FaceNet(EmbeddingNet("resnet34", 128), make_head("softmax", 128, n_classes))
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        self.model = m.to(self.device).train()
        params = list(self.model.parameters())
        self.opt = fused_adam(params, lr=1e-3) if fused else Adam(params, lr=1e-3, wd=0.0)
        self.dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None

    def step(self, xb, yb) -> None:
        import torch

        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp is not None):
            loss = self.model.head(self.model(xb), yb)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.opt.zero_grad()

    def sync(self) -> None:
        sync(self.device)


# -- reference snapshots (fetched git mirrors of other projects, read, never copied) ------------
# arcface_torch's backbones.get_model names for fvloss's IR-ResNets
ARCFACE_TORCH_NAMES = {
    "iresnet18": "r18",
    "iresnet34": "r34",
    "iresnet50": "r50",
    "iresnet100": "r100",
}


def snapshot_git(snapshot: Path, *args: str) -> str:
    """``git -C snapshot ARGS``'s output; a missing folder or a failing git is one line
    (``SystemExit``), not a traceback."""
    if not Path(snapshot).is_dir():
        raise SystemExit(f"{snapshot}: no such directory (a git snapshot expected)")
    r = subprocess.run(["git", "-C", str(snapshot), *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(
            f"{snapshot}: not a git snapshot, or git failed ({r.stderr.strip()[:120]})"
        )
    return r.stdout


def snapshot_files(snapshot: Path, paths: Sequence[str], dest: Path) -> str:
    """Write ``paths`` (files, or folders: every file under them) of the snapshot's HEAD under
    ``dest``, one ``git show`` each (``git archive`` stops at the first blob a partial mirror
    lacks: large files elsewhere in insightface). Returns ``"commit (date)"`` of HEAD."""
    for path in paths:
        files = snapshot_git(snapshot, "ls-tree", "-r", "--name-only", "HEAD", path).split()
        if not files:
            raise SystemExit(f"{snapshot}: no {path} at HEAD")
        for f in files:
            out = Path(dest) / f
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(snapshot_git(snapshot, "show", f"HEAD:{f}"))
    commit = snapshot_git(snapshot, "rev-parse", "HEAD").strip()
    return f"{commit} ({snapshot_git(snapshot, 'show', '-s', '--format=%cs', 'HEAD').strip()})"
