"""Experiment configuration: one dataclass of defaults, overridden by TOML files and flags.

Precedence, lowest first: the defaults below (the assignment's settings) < the recipe module's
own overrides (its loss) < the synthetic data set's small-image settings (only when no data is
given) < ``--config FILE.toml`` (which may ``extends = "other.toml"``) < command-line flags.

A loss's own settings are a table named by the loss (``[arcface] s = "auto"``) or a flag
``--arcface-s auto``; their names and defaults come from the loss registry
(:data:`fvloss.losses.LOSSES`). Everything is checked before any data is read
(:func:`fvloss.experiment.check_config`): an unknown setting, loss, table, body, schedule or
precision is an error naming it.

The bottom layer of the package: it imports nothing of fvloss, so every layer above (the data
loaders, the learner, the runner, the command line) reads its defaults from :data:`DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "DEFAULTS", "LEGACY_KEYS", "SYNTHETIC_OVERRIDES", "load_toml", "merge"]


def _opt(
    default: Any = dataclasses.MISSING,
    help: str = "",
    choices: tuple | None = None,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A :class:`Config` field with its documentation and allowed values: the one place that
    ``--help``, the checks and the errors read."""
    return field(default=default, default_factory=factory,
                 metadata={"help": help, "choices": choices})  # fmt: skip


@dataclass
class Config:
    """Every setting of a training run. Defaults: the course assignment's experiment."""

    # a published recipe's provenance (recipes/papers/): printed by --dry-run, kept in config.json
    source: str = _opt("", "where the recipe's settings come from (paper, code, config file)")
    published: str = _opt("", "the numbers the recipe's source reports")
    hardware: str = _opt("", "the hardware the source trained on")
    expect_images: int = _opt(0, "the data set's image count the recipe expects (0: any); "
                              "--dry-run's steps come from it, a different count is reported")  # fmt: skip
    expect_identities: int = _opt(0, "... and its identity count")
    # what to train
    loss: str = _opt("softmax", "the cost function: a registered loss (choices below)")
    name: str = _opt("", "run-folder prefix; default: the loss")
    data: str | None = _opt(None, "identity folder root/<identity>/<image> or a RecordIO set; "
                            "none: the embedded synthetic set")  # fmt: skip
    # model
    arch: str = _opt("resnet34", "the body (backbone): a registered body or timm:NAME")
    pretrained: bool = _opt(False, "start from the body's ImageNet weights (needs a download)")
    emb_dim: int = _opt(128, "embedding width")
    dropout: float = _opt(0.0, "dropout before the embedding layer")
    freeze_neck_scale: bool = _opt(False, "the embedding BatchNorm's scale fixed at 1 "
                                   "(arcface_torch's iresnet: features.weight frozen)")  # fmt: skip
    # cost-function settings: {loss: {setting: value}} over the registry's defaults (the
    # papers', or fvloss's where measured better: ArcFace's s="auto", README "ArcFace on small
    # data"); in TOML one table per loss, [arcface] s = "auto"; flags --<loss>-<setting>
    loss_settings: dict[str, dict[str, Any]] = _opt(factory=dict)
    partial_fc: float = _opt(0.0, "Partial FC: 0 = the plain head; r in (0, 1] = the classes "
                             "split across the ranks and r of them sampled per step (ArcFace, "
                             "CosFace, combined)")  # fmt: skip
    # margin heads: measured needed from scratch on few identities (README, "ArcFace on small data")
    margin_hold: float = _opt(0.0, "margin heads: train with no margin for this share of training")
    margin_warmup: float = _opt(0.3, "... then ramp the margins in linearly over this share")
    # data and augmentation
    img_size: int = _opt(160, "training and evaluation image size (pixels, square)")
    hflip: float = _opt(0.5, "probability of a horizontal flip")
    mean: float = _opt(0.5, "Normalize mean (every channel)")
    std: float = _opt(0.5, "Normalize std (every channel)")
    extra_aug: list[dict[str, Any]] = _opt(factory=list)  # albumentations by name (TOML)
    valid_pct: float = _opt(0.1, "share of the identities held out for verification")
    check: str = _opt("quick", "vetting of image files before training", ("quick", "full", "none"))
    skip_bad: bool = _opt(False, "skip (and report) unreadable files instead of stopping")
    workers: int = _opt(
        -1, "DataLoader workers; -1: 0 on <= 2 cores (measured faster), else the CPUs"
    )
    preload: str = _opt("auto", "decode the images once into RAM and augment on the device",
                        ("auto", "on", "off"))  # fmt: skip
    preload_share: float = _opt(
        0.25, "... (auto) when the uint8 images fit in this share of free RAM"
    )
    stream: bool = _opt(False, "millions of images: the index as flat arrays in RUN/index (rank 0 "
                        "scans once, every rank maps it), images read one by one")  # fmt: skip
    # optimisation (fvloss.optim, fvloss.callbacks.schedule and .optim say what each does)
    bs: int = _opt(64, "batch size per process")
    epochs: int = _opt(10, "training epochs")
    lr: float | None = _opt(None, "learning rate (the body's); none: lr_find's suggestion")
    lr_batch: int = _opt(0, "lr is given for this global batch (bs x processes x accum) and "
                         "scaled linearly to the run's; 0: as given")  # fmt: skip
    lr_find_iters: int = _opt(100, "lr_find's iterations")
    opt: str = _opt("adam", "optimiser: adam (fastai's, decoupled wd), adamw, sgd (torch's)",
                    ("adam", "adamw", "sgd"))  # fmt: skip
    momentum: float = _opt(0.9, "SGD momentum / Adam beta1 (one_cycle schedules it instead)")
    nesterov: bool = _opt(False, "SGD: Nesterov momentum")
    beta2: float | None = _opt(
        None, "Adam(W) beta2; none: the optimiser's (adam 0.99, adamw 0.999)"
    )
    eps: float | None = _opt(None, "Adam(W) eps; none: the optimiser's (adam 1e-5, adamw 1e-8)")
    wd: float = _opt(0.0, "weight decay (decoupled for adam/adamw, L2 for sgd)")
    wd_exclude: list[str] = _opt(help="no weight decay for: norm (BatchNorm, LayerNorm), bias, "
                                 "prelu; [] decays all (arcface_torch), [\"norm\"] AdaFace",
                                 choices=("norm", "bias", "prelu"),
                                 factory=lambda: ["norm", "bias"])  # fmt: skip
    head_lr: float = _opt(1.0, "the head's lr as a multiple of the body's")
    schedule: str = _opt("one_cycle", "lr schedule, stepped per batch",
                         ("one_cycle", "flat", "cosine", "poly", "step"))  # fmt: skip
    warmup_epochs: float = _opt(
        0.0, "linear warm-up from 0 (one_cycle: its rise, else a quarter of training)"
    )
    warmup_steps: int = _opt(0, "... or in steps (batches)")
    poly_power: float = _opt(2.0, "poly: lr x (1 - progress) ** power")
    milestones: list[float] = _opt(help="step: epochs at which the lr is multiplied by step_factor",
                                   factory=list)  # fmt: skip
    step_factor: float = _opt(0.1, "step: the factor at each milestone")
    clip: float = _opt(0.0, "clip the gradient 2-norm to this (0: off)")
    clip_part: str = _opt("body", "clip the embedder's gradients (arcface_torch) or all",
                          ("body", "all"))  # fmt: skip
    accum: int = _opt(1, "gradient accumulation: one optimiser step per this many batches")
    init: str | None = _opt(None, "start from these weights (fine-tuning): a run folder, or "
                            "insightface:PATH.pth for arcface_torch's released backbones")  # fmt: skip
    precision: str = _opt("auto", "auto: measured on this machine (bf16/fp16 only where faster)")
    channels_last: bool = _opt(True, "channels_last memory format")
    compile: bool = _opt(False, "torch.compile the body (slower on the 2-core CPU measured)")
    # 2 threads thrash when other jobs share 2 cores (bench/results, cpu_defaults)
    threads: int = _opt(-1, "torch intra-op threads; -1: torch's default (all cores)")
    guard: bool = _opt(
        True, "stop a diverging run (exit status 3), keeping the last good checkpoint"
    )
    guard_factor: float = _opt(10.0, "... when the loss stays above factor x its early median")
    guard_patience: int = _opt(20, "... for this many steps in a row")
    guard_warmup: int = _opt(50, "the early median is of the first this-many steps")
    guard_every: int = _opt(0, "read the loss every N steps; 0: every step on a CPU, 25 on a GPU")
    seed: int = _opt(42, "drives every random draw: init, shuffling, augmentation, split, pairs")
    deterministic: bool = _opt(False, "torch.use_deterministic_algorithms (GPU kernels)")
    # evaluation
    val_pairs: int = _opt(3000, "pairs drawn from the held-out identities, scored every epoch")
    pairs: str | None = _opt(
        None, "a pair protocol (pair file, CFP folder, .bin) scored every epoch"
    )
    pairs_root: str | None = _opt(None, "its images' root")
    pairs_format: str = _opt("auto", "its protocol",
                             ("auto", "lfw", "assignment", "csv", "cfp-fp", "cfp-ff", "bin"))  # fmt: skip
    pairs_every: int = _opt(1, "score the pair protocol every N epochs (and after the last)")
    flip_tta: bool = _opt(False, "score the pair protocol with image + mirror embeddings summed")
    val_bins: list[str] = _opt(help="insightface .bin sets scored during training", factory=list)
    val_bins_every: int = _opt(
        1, "every N epochs (and after the last), with flip-sum as insightface"
    )
    val_identify: str | None = _opt(
        None,
        "1:N identification scored during training: a CFP folder (frontal gallery, profile "
        "probes) or an identity folder (one image enrolled a person); columns id_rank1, id_rank5",
    )
    val_identify_root: str | None = _opt(None, "its images' root (CFP: an aligned copy)")
    val_identify_every: int = _opt(1, "identify every N epochs (and after the last)")
    # output
    out: str = _opt("runs", "folder for run folders")
    run_dir: str | None = _opt(None, "explicit run folder; default OUT/<name>-<timestamp>")
    resume: str | None = _opt(None, "a run folder to continue from its last checkpoint")
    checkpoint_steps: int = _opt(0, "also checkpoint every N training steps (0: off)")
    checkpoint_minutes: float = _opt(15.0, "... and every N minutes (0: off); always at epoch ends")
    progress: bool = _opt(True, "progress bars (false: one plain line per epoch)")
    log: list[str] = _opt(help="experiment tracking: csv (RUN/history.csv), tensorboard "
                          "(RUN/tensorboard), wandb (a server, only when asked); none: off",
                          choices=("csv", "tensorboard", "wandb", "none"), factory=lambda: ["csv"])  # fmt: skip

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
_FIELDS = {f.name: f for f in fields(Config)}

# The defaults, once: ``face_dls`` and ``face_learner`` (the notebook API) take theirs from here,
# so a notebook and ``fvloss train`` build the same run (tests/test_config.py compares them).
DEFAULTS = Config()


# The embedded synthetic set is 64x64 and small: these settings make a recipe finish in minutes
# on two CPU cores (see README), and are written out in recipes/synthetic.toml.
SYNTHETIC_OVERRIDES: dict[str, Any] = {
    "img_size": 64,
    "epochs": 4,
    "lr_find_iters": 40,
    "val_pairs": 2000,
}


def load_toml(path: str | Path, losses: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read an experiment file; ``extends = "base.toml"`` (relative to the file) is read first.

    Top-level tables are per-loss settings (``[arcface] s = 30``), moved into ``loss_settings``.
    ``losses`` (the loss registry, :data:`fvloss.losses.LOSSES`) checks each table's name and
    keys, naming the file; this module does not import it (the config is the bottom layer:
    :func:`fvloss.experiment.load_experiment` passes it)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from None
    base = d.pop("extends", None)
    d = _tables_to_loss_settings(d, path, losses)
    if base is not None:
        d = merge(load_toml(path.parent / base, losses), d)
    return d


def _tables_to_loss_settings(
    d: dict[str, Any], path: Path, losses: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Move the tables into ``loss_settings``; an unknown setting or table is an error naming
    the file."""
    for old, (loss, key) in LEGACY_KEYS.items():
        if old in d:
            raise ValueError(f"{path}: `{old}` is now `{key}` in a [{loss}] table")
    tables = {k: d.pop(k) for k in [k for k, v in d.items() if isinstance(v, dict)]}
    unknown = sorted(set(d) - set(_FIELDS) - {"loss_settings"})
    if unknown:
        known_losses = f" {sorted(losses)}" if losses is not None else ""
        raise ValueError(
            f"{path}: unknown settings {unknown}; known: {sorted(_FIELDS)} and one table per "
            f"loss{known_losses}"
        )
    for name, table in tables.items():
        if losses is None:
            continue
        if name not in losses:
            raise ValueError(
                f"{path}: [{name}] is not a loss; tables hold a loss's settings: {sorted(losses)}"
            )
        losses[name].check(table, where=f"{path}: [{name}] ")
    if tables:
        d["loss_settings"] = tables
    return d


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``; per-loss tables merge key by key (a child file's ``[arcface] m``
    keeps its parent's ``[arcface] s``)."""
    out = {**base, **over}
    if "loss_settings" in base or "loss_settings" in over:
        tables = {k: dict(v) for k, v in base.get("loss_settings", {}).items()}
        for k, v in over.get("loss_settings", {}).items():
            tables[k] = {**tables.get(k, {}), **v}
        out["loss_settings"] = tables
    return out
