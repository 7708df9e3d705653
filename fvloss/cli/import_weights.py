"""``fvloss import-weights insightface:PATH.pth --arch iresnet50 --out RUN``: a released model as a
run folder.

The weights file is read with ``weights_only=True`` and mapped onto fvloss's IR-ResNet by
:func:`fvloss.bodies.insightface.load_insightface` (arcface_torch's ``fc`` bias folded into the
embedding BatchNorm; a file that does not fit is refused naming the key and shapes). RUN then
holds what a finished training run holds, so ``fvloss verify``, ``compare``, ``embed`` and
``export`` take it as they take a trained run:

* ``config.json``: every setting (fvloss's defaults) with ``arch``, ``emb_dim = 512``,
  ``img_size = 112``, ``mean = std = 0.5`` (arcface_torch's RGB ``(x / 255 - 0.5) / 0.5``),
  ``epochs = 0``, ``name`` (default ``insightface-ARCH``) and ``data`` = the source
  (``insightface:/abs/path.pth``): where the weights came from, which also keeps two imports
  of one arch from reading as seeds of one configuration in ``fvloss compare``;
* ``model.pth``: the embedder's state dict under ``embedder.`` (no head: the training
  identities' classifier is not part of a released backbone);
* ``metrics.json``: no history (nothing was trained here), so the folder reads as finished;
* ``import.json``: the source file, its size and SHA-256, the tensor count, the folded bias.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import time
from pathlib import Path

import torch

from .. import __version__
from ..bodies.insightface import EMB_DIM, IMG_SIZE, SUPPORTED, load_insightface
from ..config import Config
from ..eval.report import RunMetrics
from ..jsonio import write_json
from ..model import EmbeddingNet
from .parser import Parser, fail

__all__ = ["SOURCES", "main"]

PROG = "fvloss import-weights"

# source prefix -> what it reads; one entry per layout fvloss can map
SOURCES = {"insightface": "arcface_torch (insightface) backbone .pth: iresnet18/34/50/100"}


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Import a released backbone as a run folder that fvloss verify / compare / "
        "embed / export take. Sources: "
        + "; ".join(f"{k}:PATH ({v})" for k, v in SOURCES.items())
        + ". Exit status 2 on bad input (one line on stderr), 1 when RUN cannot be written.",
        examples=[
            "fvloss import-weights insightface:ms1mv3_arcface_r50/backbone.pth --arch iresnet50 "
            "--out runs/insightface-r50",
            "fvloss verify --run runs/insightface-r50 --bin lfw.bin cfp_fp.bin agedb_30.bin",
        ],
    )
    p.add_argument("source", metavar="SOURCE:PATH", help="e.g. insightface:backbone.pth")
    p.add_argument(
        "--arch", required=True, help=f"the file's network: {', '.join(SUPPORTED)} (required)"
    )
    p.add_argument("--out", required=True, type=Path, metavar="RUN", help="run folder to write")
    p.add_argument("--name", help="the run's name in config.json (default insightface-ARCH)")
    p.add_argument(
        "--loss",
        default="arcface",
        help="the loss the weights were trained with, recorded in config.json for fvloss "
        "compare's tables (default arcface; arcface_torch's releases say arcface or cosface)",
    )
    return p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _embedder(state: dict[str, torch.Tensor], arch: str) -> EmbeddingNet:
    """fvloss's embedder holding ``state`` (strict: every key and shape), built on the meta
    device and handed the tensors themselves, so an iresnet100 is not initialised for nothing."""
    with torch.device("meta"):
        net = EmbeddingNet(arch, EMB_DIM, img_size=IMG_SIZE)
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    """``fvloss import-weights SOURCE:PATH --arch ARCH --out RUN``: 0 when RUN is written, 2 on
    bad input, 1 when RUN cannot be written."""
    args = _parser().parse_args(argv)
    prefix, sep, file = args.source.partition(":")
    if not sep or prefix not in SOURCES:
        known = ", ".join(f"{k}:PATH" for k in SOURCES)
        return fail(PROG, f"{args.source!r}: unknown source; known: {known}")
    if not file:
        return fail(PROG, f"{args.source!r}: no file after {prefix}:")
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return fail(PROG, f"{out}: exists and is not an empty folder (pick another --out)")
    path = Path(file).expanduser().resolve()
    try:
        state = load_insightface(path, args.arch)
        net = _embedder(state, args.arch)
        with torch.no_grad():  # a file of NaNs maps fine and embeds nothing: say so now
            finite = bool(torch.isfinite(net(torch.randn(2, 3, IMG_SIZE, IMG_SIZE))).all())
    except (ValueError, OSError) as e:
        return fail(PROG, str(e))
    if not finite:
        return fail(PROG, f"{path}: the imported {args.arch} gives non-finite embeddings")

    source = f"{prefix}:{path}"
    name = args.name or f"insightface-{args.arch}"
    config = Config(
        loss=args.loss, name=name, data=source, arch=args.arch, emb_dim=EMB_DIM,
        img_size=IMG_SIZE, mean=0.5, std=0.5, epochs=0, run_dir=str(out),
    ).to_dict()  # fmt: skip
    metrics = RunMetrics(
        name=name, loss=args.loss, data=source, run_dir=str(out), epochs=0, device="cpu",
        torch=torch.__version__,
    )  # fmt: skip
    record = {
        "source": source,
        "format": SOURCES[prefix],
        "file": str(path),
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "arch": args.arch,
        "tensors": len(state),
        "folded": "fc.bias into features.running_mean (neck.3): running_mean - bias",
        "preprocessing": {"channels": "rgb", "size": IMG_SIZE, "mean": 0.5, "std": 0.5},
        "fvloss": __version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    # written beside RUN, then renamed onto it: RUN is whole or absent, never half-written
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True)
        weights = {f"embedder.{k}": v for k, v in state.items()}  # as FaceNet's keys
        torch.save(weights, tmp / "model.pth", pickle_protocol=2)  # as training runs write it
        write_json(tmp / "config.json", config)
        metrics.write(tmp)
        write_json(tmp / "import.json", record)
        os.replace(tmp, out)  # onto an empty folder too (POSIX rename)
    except OSError as e:
        return fail(PROG, f"{out}: cannot write the run folder ({e})", 1)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"imported {args.arch} from {source}: {len(state)} tensors, arcface_torch's fc bias "
        f"folded into the embedding BatchNorm; wrote {out} (config.json, model.pth, "
        f"metrics.json, import.json). Input: RGB {IMG_SIZE}x{IMG_SIZE}, mean 0.5, std 0.5 "
        f"(set in config.json). Next: fvloss verify --run {out} --bin lfw.bin"
    )
    return 0
