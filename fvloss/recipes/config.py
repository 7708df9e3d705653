"""Experiment configuration: one dataclass of defaults, overridden by TOML files and flags.

Precedence, lowest first: the defaults below (the assignment's settings) < the recipe module's
own overrides (its loss) < the synthetic data set's small-image settings (only when no data is
given) < ``--config FILE.toml`` (which may ``extends = "other.toml"``) < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "SYNTHETIC_OVERRIDES", "load_toml", "build_parser", "resolve_config"]


@dataclass
class Config:
    """Every setting of a training run. Defaults: the course assignment's experiment."""

    # what to train
    loss: str = "softmax"  # softmax | center | arcface | cosface
    name: str = ""  # run-folder prefix; default: the loss
    data: str | None = None  # identity folder root/<identity>/<image>; none: the synthetic set
    # model
    arch: str = "resnet34"
    pretrained: bool = False
    emb_dim: int = 128
    dropout: float = 0.0
    # cost-function settings (papers' defaults; see fvloss.heads and fvloss.callbacks.center)
    # ArcFace: "auto" = AdaCos's fixed scale sqrt(2)*ln(C-1) and the margin ramped in over the
    # first 30% of training, measured better than the paper's s=64 from scratch on a few hundred
    # identities (README, "ArcFace on small data"); the head's own defaults stay the paper's.
    arcface_s: float | str = "auto"
    arcface_m: float = 0.5
    easy_margin: bool = False
    margin_hold: float = 0.0  # ArcFace/CosFace: train with m=0 for this fraction of training,
    margin_warmup: float = 0.3  # then ramp m linearly over this fraction (see MarginSchedule)
    cosface_s: float | str = 64.0
    cosface_m: float = 0.35
    center_lam: float = 0.003
    center_alpha: float = 0.5
    # data and augmentation
    img_size: int = 160
    hflip: float = 0.5
    mean: float = 0.5
    std: float = 0.5
    extra_aug: list[dict[str, Any]] = field(default_factory=list)  # albumentations by name
    valid_pct: float = 0.1  # of the identities, held out for verification
    check: str = "quick"  # quick | full | none: vetting of image files before training
    skip_bad: bool = False  # skip (and report) unreadable files instead of stopping
    workers: int = -1  # DataLoader workers; -1: 0 on <= 2 cores (measured faster), else the CPUs
    preload: str = "auto"  # auto | on | off: decode once into RAM, augment on the device
    preload_share: float = 0.25  # ... (auto) when the uint8 images fit in this share of free RAM
    # optimisation
    bs: int = 64
    epochs: int = 10
    lr: float | None = None  # none: use lr_find's suggestion
    lr_find_iters: int = 100
    wd: float = 0.0
    schedule: str = "one_cycle"  # one_cycle | flat
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    channels_last: bool = True
    compile: bool = False  # torch.compile the body (slower on the 2-core CPU measured)
    threads: int = -1  # torch intra-op threads; -1: torch's default (all cores). Set 1 when
    # other jobs share the cores: 2 threads there thrash (bench/results, cpu_defaults)
    guard: bool = True  # stop a diverging run (fvloss.callbacks.guard), exit status 3
    guard_factor: float = 10.0  # ... when the loss stays above factor x its early median
    guard_patience: int = 20  # ... for this many steps in a row
    guard_warmup: int = 50  # the early median is of the first this-many steps
    guard_every: int = 0  # read the loss every N steps; 0: every step on a CPU, 25 on a GPU
    seed: int = 42  # drives every random draw: init, shuffling, augmentation, split, pairs
    deterministic: bool = False  # torch.use_deterministic_algorithms + cudnn.deterministic
    # evaluation
    val_pairs: int = 3000  # pairs drawn from the validation identities, every epoch
    pairs: str | None = None  # a pair protocol (file, CFP folder, .bin) scored every epoch
    pairs_root: str | None = None  # its images' root
    pairs_format: str = (
        "auto"  # its protocol: auto | lfw | assignment | csv | cfp-fp | cfp-ff | bin
    )
    pairs_every: int = 1  # evaluate the pair file every N epochs (and always after the last)
    flip_tta: bool = False
    val_bins: list[str] = field(default_factory=list)  # insightface .bin sets, scored in training
    val_bins_every: int = 1  # every N epochs (and after the last), with flip-sum as insightface
    # output
    out: str = "runs"
    run_dir: str | None = None  # explicit run folder; default out/<name>-<timestamp>
    resume: str | None = None  # a run folder to continue from its last checkpoint
    checkpoint_steps: int = 0  # also checkpoint every N training steps (0: off)
    checkpoint_minutes: float = 15.0  # ... and every N minutes (0: off); always at epoch ends
    progress: bool = True

    @property
    def head_kwargs(self) -> dict[str, Any]:
        if self.loss == "arcface":
            return {"s": self.arcface_s, "m": self.arcface_m, "easy_margin": self.easy_margin}
        if self.loss == "cosface":
            return {"s": self.cosface_s, "m": self.cosface_m}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The embedded synthetic set is 64x64 and small: these settings make a recipe finish in minutes
# on two CPU cores (see README), and are written out in recipes/synthetic.toml.
SYNTHETIC_OVERRIDES: dict[str, Any] = {
    "img_size": 64,
    "epochs": 4,
    "lr_find_iters": 40,
    "val_pairs": 2000,
}

_FIELDS = {f.name: f for f in fields(Config)}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an experiment file; ``extends = "base.toml"`` (relative to the file) is read first."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from None
    base = d.pop("extends", None)
    if base is not None:
        d = {**load_toml(path.parent / base), **d}
    unknown = sorted(set(d) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(_FIELDS)}")
    return d


def _scale(v: str) -> float | str:
    return v if v == "auto" else float(v)


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def build_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    """A parser with ``--config`` and one flag per :class:`Config` field, all defaulting to
    "not given" so that only what the user typed overrides the lower layers."""
    ap = argparse.ArgumentParser(
        prog=prog, description=description, argument_default=argparse.SUPPRESS
    )
    ap.add_argument("--config", help="TOML experiment file (see recipes/)")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        t = f.type if isinstance(f.type, str) else str(f.type)
        if f.name in ("arcface_s", "cosface_s"):
            ap.add_argument(flag, type=_scale, metavar="S|auto")
        elif t == "bool":
            ap.add_argument(flag, type=_bool, nargs="?", const=True, metavar="BOOL")
        elif f.name == "extra_aug":
            continue  # a list of tables: set it in TOML
        elif f.name == "val_bins":
            ap.add_argument(flag, nargs="+", metavar="BIN")
        elif t.startswith("int"):
            ap.add_argument(flag, type=int)
        elif t.startswith("float"):
            ap.add_argument(flag, type=float)
        else:
            ap.add_argument(flag, type=str)
    return ap


def _no_loss_clash(recipe: dict, toml: dict, flags: dict, prog: str) -> None:
    """A recipe module names its cost function; an experiment file or flag naming another is an
    error, not a silent switch (``python -m fvloss.recipes.arcface --config
    recipes/celeba64_softmax.toml`` used to train softmax)."""
    mine = recipe.get("loss")
    for where, d in (("the experiment file", toml), ("--loss", flags)):
        other = d.get("loss")
        if mine is not None and other is not None and other != mine:
            raise ValueError(
                f"{prog} trains {mine}, but {where} says loss = {other!r}: run "
                f"`python -m fvloss.recipes.{other}` or `fvloss train --loss {other}` instead, "
                "or leave loss out of it"
            )


def resolve_config(
    argv: list[str] | None, recipe: dict[str, Any] | None = None, prog: str = "fvloss train"
) -> tuple[Config, dict[str, Any]]:
    """Layer defaults, recipe, synthetic settings, TOML and flags; returns the config and a
    dict saying where each non-default setting came from."""
    args = vars(build_parser(prog).parse_args(argv))
    toml = load_toml(args.pop("config")) if "config" in args else {}
    layers: list[tuple[str, dict[str, Any]]] = [("recipe", recipe or {})]
    if args.get("data", toml.get("data")) is None:
        layers.append(("synthetic", SYNTHETIC_OVERRIDES))
    layers += [("config", toml), ("flags", args)]
    _no_loss_clash(recipe or {}, toml, args, prog)
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for src, d in layers:
        for k, v in d.items():
            values[k], source[k] = v, src
    return Config(**values), source
