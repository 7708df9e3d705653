"""Experiment configuration: one dataclass of defaults, overridden by TOML files and flags.

Precedence, lowest first: the defaults below (the assignment's settings) < the recipe module's
own overrides (its loss) < the synthetic data set's small-image settings (only when no data is
given) < ``--config FILE.toml`` (which may ``extends = "other.toml"``) < command-line flags.

A loss's own settings are a table named by the loss (``[arcface] s = "auto"``) or a flag
``--arcface-s auto``; their names and defaults come from the loss registry
(:data:`fvloss.heads.LOSSES`). Everything is checked before any data is read: an unknown
setting, loss, table, body, schedule or precision is an error naming it.
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

__all__ = [
    "Config",
    "SYNTHETIC_OVERRIDES",
    "build_parser",
    "check_config",
    "load_toml",
    "resolve_config",
]


@dataclass
class Config:
    """Every setting of a training run. Defaults: the course assignment's experiment."""

    # what to train
    loss: str = "softmax"  # a registered loss: fvloss train --help lists them
    name: str = ""  # run-folder prefix; default: the loss
    data: str | None = None  # identity folder root/<identity>/<image>; none: the synthetic set
    # model
    arch: str = "resnet34"
    pretrained: bool = False
    emb_dim: int = 128
    dropout: float = 0.0
    # cost-function settings: {loss: {setting: value}} over the registry's defaults (the
    # papers', or fvloss's where measured better: ArcFace's s="auto", README "ArcFace on small
    # data"); in TOML one table per loss, [arcface] s = "auto"
    loss_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Partial FC: 0 = the plain head; r in (0, 1] = the classes split across ranks and r of
    # them sampled per step (ArcFace, CosFace, combined; fvloss.heads.partial_fc)
    partial_fc: float = 0.0
    # margin heads (ArcFace, CosFace ...): train with m=0 for this fraction of training, then
    # ramp m linearly over the next (MarginSchedule); measured needed from scratch on few
    # identities (README, "ArcFace on small data")
    margin_hold: float = 0.0
    margin_warmup: float = 0.3
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
    # millions of images: the index as flat arrays in RUN/index (rank 0 scans once, every rank
    # maps it; fvloss.stream), images read one by one (no preload)
    stream: bool = False
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
    def settings(self) -> dict[str, Any]:
        """The trained loss's settings: the registry's defaults, then this config's table."""
        from ..heads import loss_spec

        return {**loss_spec(self.loss).settings, **self.loss_settings.get(self.loss, {})}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> Config:
        """A run's ``config.json``, including those written before per-loss tables."""
        d = dict(d)
        tables = {k: dict(v) for k, v in d.pop("loss_settings", {}).items()}
        for old, (loss, key) in LEGACY_KEYS.items():
            if old in d:
                tables.setdefault(loss, {})[key] = d.pop(old)
        return cls(**d, loss_settings=tables)


# Settings that were top-level before per-loss tables: where they live now.
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    "arcface_s": ("arcface", "s"),
    "arcface_m": ("arcface", "m"),
    "easy_margin": ("arcface", "easy_margin"),
    "cosface_s": ("cosface", "s"),
    "cosface_m": ("cosface", "m"),
    "center_lam": ("center", "lam"),
    "center_alpha": ("center", "alpha"),
}
SCHEDULES = ("one_cycle", "flat")


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
    d = _tables_to_loss_settings(d, path)
    if base is not None:
        d = _merge(load_toml(path.parent / base), d)
    return d


def _tables_to_loss_settings(d: dict[str, Any], path: Path) -> dict[str, Any]:
    """Top-level tables are per-loss settings (``[arcface] s = 30``): move them into
    ``loss_settings`` and check every key, naming the file."""
    from ..heads import LOSSES

    for old, (loss, key) in LEGACY_KEYS.items():
        if old in d:
            raise ValueError(f"{path}: `{old}` is now `{key}` in a [{loss}] table")
    tables = {k: d.pop(k) for k in [k for k, v in d.items() if isinstance(v, dict)]}
    unknown = sorted(set(d) - set(_FIELDS) - {"loss_settings"})
    if unknown:
        raise ValueError(
            f"{path}: unknown settings {unknown}; known: {sorted(_FIELDS)} and one table per "
            f"loss {sorted(LOSSES)}"
        )
    for name, table in tables.items():
        if name not in LOSSES:
            raise ValueError(
                f"{path}: [{name}] is not a loss; tables hold a loss's settings: {sorted(LOSSES)}"
            )
        LOSSES[name].check(table, where=f"{path}: [{name}] ")
    if tables:
        d["loss_settings"] = tables
    return d


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``; per-loss tables merge key by key (a child file's ``[arcface] m``
    keeps its parent's ``[arcface] s``)."""
    out = {**base, **over}
    if "loss_settings" in base or "loss_settings" in over:
        tables = {k: dict(v) for k, v in base.get("loss_settings", {}).items()}
        for k, v in over.get("loss_settings", {}).items():
            tables[k] = {**tables.get(k, {}), **v}
        out["loss_settings"] = tables
    return out


def _scale(v: str) -> float | str:
    return v if v == "auto" else float(v)


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _flag_type(default: Any, scale: bool) -> dict[str, Any]:
    """argparse options for a loss setting like ``default``."""
    if scale or default == "auto":
        return {"type": _scale, "metavar": "S|auto"}
    if isinstance(default, bool):
        return {"type": _bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    return {"type": type(default), "metavar": type(default).__name__.upper()}


def build_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    """A parser with ``--config``, one flag per :class:`Config` field and one per loss setting
    (``--arcface-s``), all defaulting to "not given" so that only what the user typed overrides
    the lower layers."""
    from ..bodies import BODIES
    from ..callbacks.precision import PRECISIONS
    from ..heads import LOSSES

    ap = argparse.ArgumentParser(
        prog=prog, description=description, argument_default=argparse.SUPPRESS
    )
    ap.add_argument("--config", help="TOML experiment file (see recipes/)")
    choices = {"loss": sorted(LOSSES), "schedule": SCHEDULES, "precision": PRECISIONS}
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        t = f.type if isinstance(f.type, str) else str(f.type)
        if f.name in ("extra_aug", "loss_settings"):
            continue  # tables: set them in TOML (loss settings also by the flags below)
        elif f.name in choices:
            ap.add_argument(flag, choices=choices[f.name])
        elif f.name == "arch":
            ap.add_argument(flag, metavar="BODY", help=f"{', '.join(BODIES)} or timm:NAME")
        elif t == "bool":
            ap.add_argument(flag, type=_bool, nargs="?", const=True, metavar="BOOL")
        elif f.name == "val_bins":
            ap.add_argument(flag, nargs="+", metavar="BIN")
        elif t.startswith("int"):
            ap.add_argument(flag, type=int)
        elif t.startswith("float"):
            ap.add_argument(flag, type=float)
        else:
            ap.add_argument(flag, type=str)
    for name, spec in LOSSES.items():
        group = ap.add_argument_group(f"{name} settings ({spec.summary})")
        for key, default in spec.settings.items():
            group.add_argument(
                f"--{name}-{key}".replace("_", "-"),
                dest=f"{name}.{key}",
                help=f"default {default!r}",
                **_flag_type(default, scale=key == "s"),
            )
    return ap


def check_config(cfg: Config) -> None:
    """Errors a run would otherwise meet late (after the data scan, or after lr_find): the
    loss, its settings, the body, the schedule, the precision."""
    from ..bodies import BODIES
    from ..callbacks.precision import PRECISIONS
    from ..heads import LOSSES, loss_spec

    loss_spec(cfg.loss)
    for name, table in cfg.loss_settings.items():
        if name not in LOSSES:
            raise ValueError(f"settings for {name!r}, which is not a loss; known: {sorted(LOSSES)}")
        LOSSES[name].check(table)
    if cfg.partial_fc:
        from ..heads.partial_fc import SHARDABLE

        if not 0 < cfg.partial_fc <= 1:
            raise ValueError(
                f"partial_fc is a sample rate in (0, 1] (0: off), got {cfg.partial_fc}"
            )
        if loss_spec(cfg.loss).head not in SHARDABLE:
            raise ValueError(f"partial_fc shards {[h.__name__ for h in SHARDABLE]}; not {cfg.loss}")
    if cfg.arch not in BODIES and not cfg.arch.startswith("timm:"):
        raise ValueError(f"unknown arch {cfg.arch!r}; known: {sorted(BODIES)} or timm:NAME")
    for key, allowed in (
        ("schedule", SCHEDULES),
        ("precision", PRECISIONS),
        ("check", ("quick", "full", "none")),
        ("preload", ("auto", "on", "off")),
    ):
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {getattr(cfg, key)!r}")


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
    flag_tables: dict[str, dict[str, Any]] = {}
    for k in [k for k in args if "." in k]:
        loss, key = k.split(".", 1)
        flag_tables.setdefault(loss, {})[key] = args.pop(k)
    if flag_tables:
        args["loss_settings"] = flag_tables
    layers: list[tuple[str, dict[str, Any]]] = [("recipe", recipe or {})]
    if args.get("data", toml.get("data")) is None:
        layers.append(("synthetic", SYNTHETIC_OVERRIDES))
    layers += [("config", toml), ("flags", args)]
    _no_loss_clash(recipe or {}, toml, args, prog)
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for src, d in layers:
        values = _merge(values, d)
        source.update(dict.fromkeys(d, src))
    cfg = Config(**values)
    check_config(cfg)
    return cfg, source
