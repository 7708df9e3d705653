"""Mixed precision that follows the Learner's device.

fastai's ``MixedPrecision`` hard-codes ``autocast('cuda')`` and ``GradScaler('cuda')``: on a CPU
it runs without error and silently trains in float32. ``mixed_precision_cb`` picks per device:
fp16 + grad scaling on CUDA (fastai's callback), bf16 autocast on CPU only where a short probe
shows it is faster (on CPUs without native bf16 it is 12-30x *slower*), else nothing.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from torch import nn

from ..jsonio import write_json

__all__ = [
    "CPUAutocast",
    "cpu_bf16_supported",
    "probe_cpu_bf16",
    "mixed_precision_cb",
    "PRECISIONS",
]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class CPUAutocast(Callback):
    """bf16 autocast on the CPU for the forward pass and the loss (no grad scaler: bf16 has
    float32's range). Same ``order`` and event split as fastai's ``MixedPrecision``."""

    order = MixedPrecision.order

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        self.dtype, self._ctx = dtype, None

    def before_batch(self) -> None:
        self._exit()  # a batch cancelled between before_batch and after_loss left it entered
        self._ctx = torch.autocast("cpu", dtype=self.dtype)
        self._ctx.__enter__()

    def after_pred(self) -> None:
        # Losses and metrics see float32 predictions, as with fastai's callback.
        if isinstance(self.learn.pred, torch.Tensor) and self.learn.pred.is_floating_point():
            self.learn.pred = self.learn.pred.float()

    def after_loss(self) -> None:
        self._exit()

    def after_cancel_batch(self) -> None:
        self._exit()

    def after_fit(self) -> None:
        self._exit()  # a fit/epoch/train cancelled after before_batch must not leave it on

    def _exit(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None


def cpu_bf16_supported() -> bool:
    """True when oneDNN reports native bf16 kernels (AVX512-BF16 / AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def probe_cpu_bf16(model: nn.Module, x: torch.Tensor, steps: int = 3) -> dict[str, float]:
    """Seconds per forward+backward of ``model`` on ``x`` in fp32 and under bf16 autocast
    (one warm-up each, then ``steps`` interleaved A/B runs, best of each: this machine's speed
    drifts within minutes, so the two must be measured side by side). The model's weights and
    grads are left as they were."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    try:
        for k in range(steps + 1):
            for name in times:
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                    out = model(x)
                out.float().sum().backward()
                if k > 0:  # the first pass of each mode builds oneDNN kernels
                    times[name].append(time.perf_counter() - t)
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(state)  # BN running stats moved during the probe
        model.train(was_training)
    return {k: min(v) for k, v in times.items()}


def mixed_precision_cb(
    precision: str,
    device: torch.device,
    model: nn.Module | None = None,
    sample: torch.Tensor | None = None,
    cache: Path | None = None,
) -> tuple[Callback | None, str]:
    """The callback for ``precision`` on ``device`` and a sentence saying what was chosen and why.

    ``"auto"``: fp16 with grad scaling on CUDA; on CPU bf16 autocast only if the CPU has native bf16
    *and* a probe on ``model``/``sample`` shows it faster than fp32; otherwise float32.
    ``cache``: a JSON file remembering probe results per CPU, torch version, model and input
    shape, so that only the first run on a machine pays for the probe (delete it to re-measure).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return None, "fp32 (asked for)"
    if device.type == "cuda":
        if precision == "bf16":
            return MixedPrecision("bf16"), "bf16 autocast on CUDA (asked for)"
        return MixedPrecision("fp16"), "fp16 autocast + grad scaling on CUDA"
    if device.type != "cpu":
        return None, f"fp32: no mixed precision support for {device.type} in fvloss yet"
    if precision == "fp16":
        raise ValueError(
            "fp16 mixed precision needs a CUDA device; use --precision bf16 or fp32 on CPU"
        )
    if precision == "bf16":
        return CPUAutocast(), "bf16 autocast on CPU (asked for)"
    if not cpu_bf16_supported():
        return (
            None,
            "fp32: this CPU has no native bf16 (bf16 autocast measured 12-30x slower on such CPUs)",
        )
    if model is None or sample is None:
        return None, "fp32: no probe sample to compare bf16 against"
    key = _probe_key(model, sample)
    cached = _read_cache(cache).get(key) if cache else None
    if cached:
        t = cached
    else:
        t = probe_cpu_bf16(model, sample)
        if cache:
            _write_cache(cache, key, t)
    if t["bf16"] < 0.9 * t["fp32"]:
        return (
            CPUAutocast(),
            f"bf16 autocast on CPU ({'cached ' if cached else ''}probe: {t['bf16']:.3f}s vs fp32 {t['fp32']:.3f}s per step)",
        )
    return (
        None,
        f"fp32 ({'cached ' if cached else ''}probe: bf16 {t['bf16']:.3f}s vs fp32 {t['fp32']:.3f}s per step)",
    )


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in info.splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
        flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
        return f"{name}/{hashlib.sha1(flags.encode()).hexdigest()[:8]}"
    except OSError:
        return platform.processor() or platform.machine()


def _probe_key(model: nn.Module, sample: torch.Tensor) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    fmt = "cl" if sample.is_contiguous(memory_format=torch.channels_last) else "nchw"
    return f"{_cpu_id()}|torch {torch.__version__}|{type(model).__name__} {n_params}|{tuple(sample.shape)} {fmt}"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, times: dict[str, float]) -> None:
    path = Path(path)
    try:
        write_json(path, {**_read_cache(path), key: times})
    except OSError:
        pass  # a read-only cache folder only costs the next run another probe
