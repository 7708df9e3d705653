"""A study file, read and checked (:func:`load_study`), and each loss's search space.

A study file is TOML; an unknown key is an error, as in every experiment file::

    name = "celeba64"
    base = "../celeba64.toml"        # any experiment file: what every trial starts from
    losses = ["softmax", "arcface"]
    trials = 8                       # the budget, the same for every loss
    epochs = 6                       # ... per trial
    sampler = "tpe"                  # tpe | random | grid
    pruner = "median"                # median | none

    [settings]                       # fixed for every trial and final (any run setting)
    img_size = 64

    [space]                          # shared ranges: [low, high], [low, high, "log"], choices
    lr = [1e-4, 1e-2, "log"]
    [space.arcface]                  # one loss's own ranges (default: the registry's)
    m = [0.3, 0.6]

    [tune]                           # the tuning protocol (default: held-out identities)
    pairs = "../shared/data/lfw-view1/pairsDevTrain.txt"
    root = "data/lfw-view1-aligned"

    [[test]]                         # test protocols: tuning never sees them
    name = "lfw-devtest"
    pairs = "../shared/data/lfw-view1/pairsDevTest.txt"
    root = "data/lfw-view1-aligned"

    [finals]                         # each loss's best settings (and its defaults) over seeds
    seeds = [1, 2, 3]

    [identify]                       # a 1:N protocol for the finals (fvloss identify's options)
    cfp = "../shared/data/cfp"       # or data = "FOLDER" (+ gallery_per_id), or csv = "FILE"
    root = "data/cfp-aligned"
    unenrolled = 0.5                 # open set: TPIR at FPIR beside rank-1

With ``sampler = "grid"`` every ``[space]`` entry is the list of values to try (``seed = [42,
43]`` makes ``fvloss compare --grid``'s seeds), no range is added from the registry, and the
budget is the grid's size unless ``trials`` says fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, tomllib
from ..experiment import load_experiment
from ..losses import LOSSES, loss_spec

__all__ = ["Protocol", "StudySpec", "load_study", "space_for"]

# shared settings every loss searches unless the study file says otherwise (not for a grid)
SHARED_SPACE: dict[str, tuple] = {"lr": (1e-4, 1e-2, True)}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
_KEYS = {"name", "base", "losses", "trials", "epochs", "metric", "sampler", "pruner", "storage",
         "seed", "out", "heartbeat", "retries", "settings", "space", "tune", "test", "finals",
         "identify"}  # fmt: skip
_PROTOCOL_KEYS = {"name", "pairs", "root", "protocol"}
_FINALS_KEYS = {"seeds", "defaults", "epochs"}
# [identify]: ``fvloss identify``'s options, one source (cfp, data or csv) and how to use it
_IDENTIFY_SOURCES = ("cfp", "data", "csv")
_IDENTIFY_KEYS = {*_IDENTIFY_SOURCES, "root", "gallery_per_id", "unenrolled", "seed", "index"}
# a pair protocol belongs to [tune] or [[test]], where the study can keep them apart
_PROTOCOL_SETTINGS = ("pairs", "pairs_root", "pairs_format")


@dataclass(frozen=True)
class Protocol:
    """A pair protocol (an LFW-style pair file, a CFP folder, a ``.bin``), as ``fvloss verify``
    and ``fvloss compare`` take it (``--pairs``, ``--root``, ``--protocol``)."""

    name: str
    pairs: str
    root: str | None = None
    protocol: str = "auto"

    def key(self) -> tuple[str, str]:
        """What makes two protocols the same pairs: the resolved path and the protocol."""
        return str(Path(self.pairs).resolve()), self.protocol

    def argv(self) -> list[str]:
        return ["--pairs", self.pairs, *(["--root", self.root] if self.root else []),
                "--protocol", self.protocol]  # fmt: skip


@dataclass(frozen=True)
class StudySpec:
    """A study file, checked (:func:`load_study`)."""

    path: Path | None
    name: str
    losses: tuple[str, ...]
    trials: int | None  # None: a grid's size
    epochs: int | None  # None: the base experiment's own (a grid)
    base: Path | None = None
    metric: str = "auc"
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str = ""
    seed: int = 0
    out: str = "studies"
    heartbeat: int = 60  # seconds between a running trial's heartbeats; stale after two
    retries: int = 3  # times a trial whose worker died is retried
    settings: dict[str, Any] = field(default_factory=dict)  # every trial's fixed settings
    space: dict[str, dict[str, tuple]] = field(default_factory=dict)  # "" shared, or a loss
    tune: Protocol | None = None  # None: the held-out identities' pairs
    test: tuple[Protocol, ...] = ()
    final_seeds: tuple[int, ...] = ()
    identify: tuple[str, ...] = ()  # ``fvloss identify``'s arguments (less ``--run``); () none
    final_defaults: bool = True  # also each loss's defaults over the seeds (tuned vs default)
    final_epochs: int | None = None  # None: the trials' epochs

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"

    def budget(self, loss: str) -> int:
        """Trials for ``loss``: ``trials``, or the size of its grid."""
        if self.sampler != "grid":
            return int(self.trials or 0)
        size = math.prod(len(v) - 1 for v in space_for(self, loss).values())
        return min(size, self.trials or size)


def _range(where: str, v: Any, grid: bool) -> tuple:
    """``[low, high]``, ``[low, high, "log"]`` (numbers) or a list of choices (strings); for a
    grid, the values to try."""
    if grid:
        if not isinstance(v, list) or not v or len(set(map(repr, v))) != len(v):
            raise ValueError(f"{where}: a grid needs a list of distinct values, got {v!r}")
        return ("grid", *v)
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return ("choice", *v)
    ok = (
        isinstance(v, list) and len(v) in (2, 3) and all(isinstance(x, (int, float)) for x in v[:2])
    )
    if not ok or (len(v) == 3 and v[2] != "log") or not v[0] < v[1]:
        raise ValueError(f'{where}: expected [low, high], [low, high, "log"] or choices, got {v!r}')
    if len(v) == 3 and v[0] <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, got {v!r}")
    return (float(v[0]), float(v[1]), len(v) == 3)


def _protocol(where: str, d: Any, default_name: str) -> Protocol:
    if not isinstance(d, dict) or "pairs" not in d:
        raise ValueError(f"{where}: a table with `pairs` (and `root`, `protocol`, `name`)")
    bad = sorted(set(d) - _PROTOCOL_KEYS)
    if bad:
        raise ValueError(f"{where}: unknown keys {bad}; known: {sorted(_PROTOCOL_KEYS)}")
    proto = str(d.get("protocol", "auto"))
    name = d.get("name") or (proto if proto.startswith("cfp") else Path(d["pairs"]).stem)
    return Protocol(str(name), str(d["pairs"]), d.get("root"), proto)


def _identify(where: str, d: Any) -> tuple[str, ...]:
    """``[identify]`` as ``fvloss identify`` arguments: the finals' 1:N protocol."""
    if not isinstance(d, dict):
        raise ValueError(f'{where}: a table, e.g. cfp = "../shared/data/cfp", root = "..."')
    bad = sorted(set(d) - _IDENTIFY_KEYS)
    if bad:
        raise ValueError(f"{where}: unknown keys {bad}; known: {sorted(_IDENTIFY_KEYS)}")
    sources = [k for k in _IDENTIFY_SOURCES if k in d]
    if len(sources) != 1:
        raise ValueError(f"{where}: exactly one of {list(_IDENTIFY_SOURCES)}, got {sources}")
    return tuple(a for k, v in d.items() for a in (f"--{k.replace('_', '-')}", str(v)))


def _whole(path: Path, key: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{path}: {key} must be a whole number >= 1, got {v!r}")
    return v


def load_study(path: str | Path) -> StudySpec:
    """Read and check a study file; every error names the file and the key."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: study file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from None
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(_KEYS)}")
    sampler = d.get("sampler", "tpe")
    if sampler not in SAMPLERS or d.get("pruner", "median") not in PRUNERS:
        raise ValueError(f"{path}: sampler must be one of {SAMPLERS}, pruner one of {PRUNERS}")
    grid = sampler == "grid"
    for key in ("losses",) if grid else ("losses", "trials", "epochs"):
        if key not in d:
            raise ValueError(f"{path}: `{key}` is required")
    losses = d["losses"]
    if not isinstance(losses, list) or not losses or len(set(losses)) != len(losses):
        raise ValueError(f"{path}: losses must be a non-empty list without repeats")
    for loss in losses:
        if loss not in LOSSES:
            raise ValueError(f"{path}: unknown loss {loss!r}; known: {sorted(LOSSES)}")
    trials = _whole(path, "trials", d["trials"]) if "trials" in d else None
    epochs = _whole(path, "epochs", d["epochs"]) if "epochs" in d else None
    base = path.parent / d["base"] if "base" in d else None
    if base is not None and not base.is_file():
        raise FileNotFoundError(f"{path}: base = {d['base']!r}: no such experiment file")
    settings = dict(d.get("settings", {}))
    fields = set(Config.__dataclass_fields__)
    bad = sorted(set(settings) - fields)
    if bad:
        raise ValueError(f"{path}: [settings] {bad} are not settings of a run")
    clash = [k for k in _PROTOCOL_SETTINGS if k in settings]
    if clash:
        raise ValueError(
            f"{path}: [settings] {clash}: give the tuning protocol as [tune] (pairs, root, "
            "protocol) and test protocols as [[test]], so the study can keep them apart"
        )
    space: dict[str, dict[str, tuple]] = {"": {}}
    for key, v in d.get("space", {}).items():
        if isinstance(v, dict):  # [space.<loss>]: that loss's own settings
            if key not in losses:
                raise ValueError(f"{path}: [space.{key}] is not one of the study's losses {losses}")
            own = loss_spec(key).settings
            for k, r in v.items():
                if k not in own:
                    raise ValueError(
                        f"{path}: [space.{key}] {k!r} is not a setting of {key}; known: {sorted(own)}"
                    )
                space.setdefault(key, {})[k] = _range(f"{path}: space.{key}.{k}", r, grid)
        elif key in fields:
            space[""][key] = _range(f"{path}: space.{key}", v, grid)
        else:
            raise ValueError(
                f"{path}: space.{key} is not a setting of a run nor a [space.<loss>] table"
            )
    if grid and not any(space.values()):
        raise ValueError(f"{path}: a grid needs [space] values to try, e.g. seed = [42, 43]")
    tune = _protocol(f"{path}: [tune]", d["tune"], "tune") if "tune" in d else None
    tests = d.get("test", [])
    if not isinstance(tests, list):
        raise ValueError(f"{path}: test protocols are [[test]] tables")
    test = tuple(_protocol(f"{path}: [[test]] #{k + 1}", t, "test") for k, t in enumerate(tests))
    if len({t.name for t in test}) != len(test):
        raise ValueError(f"{path}: [[test]] names must differ: {[t.name for t in test]}")
    if tune is None and base is not None:  # the base experiment's own per-epoch protocol
        own = load_experiment(base)
        if own.get("pairs"):
            tune = Protocol("base", str(own["pairs"]), own.get("pairs_root"),
                            str(own.get("pairs_format", "auto")))  # fmt: skip
            d = {**d, "metric": d.get("metric", "pairs_auc")}
    if tune is not None and any(t.key() == tune.key() for t in test):
        raise ValueError(f"{path}: the tuning pairs {tune.pairs!r} are also a [[test]] protocol: "
                         "tuning must never see the test pairs")  # fmt: skip
    finals = d.get("finals", {})
    bad = sorted(set(finals) - _FINALS_KEYS)
    if bad:
        raise ValueError(f"{path}: [finals] unknown keys {bad}; known: {sorted(_FINALS_KEYS)}")
    seeds = finals.get("seeds", [])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{path}: [finals] seeds must be a list of whole numbers, got {seeds!r}")
    metric = d.get("metric", "pairs_auc" if tune else "auc")
    spec = StudySpec(
        path=path, name=d.get("name", path.stem), losses=tuple(losses), trials=trials,
        epochs=epochs, base=base, metric=metric, sampler=sampler,
        pruner=d.get("pruner", "median"), storage=d.get("storage", ""), seed=int(d.get("seed", 0)),
        out=d.get("out", "studies"), heartbeat=_whole(path, "heartbeat", d.get("heartbeat", 60)),
        retries=int(d.get("retries", 3)), settings=settings, space=space, tune=tune, test=test,
        final_seeds=tuple(seeds), final_defaults=bool(finals.get("defaults", True)),
        final_epochs=_whole(path, "finals.epochs", finals["epochs"]) if "epochs" in finals else None,
        identify=_identify(f"{path}: [identify]", d["identify"]) if "identify" in d else (),
    )  # fmt: skip
    if grid and trials is not None:
        for loss in losses:
            size = math.prod(len(v) - 1 for v in space_for(spec, loss).values())
            if trials > size:
                raise ValueError(f"{path}: trials = {trials} is more than {loss}'s grid ({size})")
    return spec


def space_for(spec: StudySpec, loss: str) -> dict[str, tuple]:
    """The ranges a loss's trials search: the shared ones (``lr`` unless the study file says
    otherwise; a grid only what the file lists), the loss's own from the registry, then the
    study file's overrides. Keys of the loss's own settings are prefixed ``<loss>.``."""
    grid = spec.sampler == "grid"
    shared = {**({} if grid else SHARED_SPACE), **spec.space.get("", {})}
    own = {**({} if grid else loss_spec(loss).search), **spec.space.get(loss, {})}
    return {**shared, **{f"{loss}.{k}": v for k, v in own.items()}}
