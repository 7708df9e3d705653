"""Studies: every loss tuned with the same budget, on Optuna (``fvloss study``).

A study file (TOML; an unknown key is an error, as in every experiment file) names the base
experiment, the losses, the budget (trials per loss, epochs per trial), the metric to maximise
and the search space. Each loss's own ranges come from the loss registry (each head declares
``search``: ArcFace's s and m, AdaFace's m and h ...); the study file may override them and adds
shared ones (``lr``, ``wd``, any setting of the run).

The study lives in a database: a SQLite file in the study folder by default, or any Optuna
storage URL (PostgreSQL, MySQL, ``journal:PATH`` for Optuna's journal file on a shared file
system). One Optuna study per loss (``<name>-<loss>``), so each loss gets the same number of
trials. Each trial is an ordinary fvloss run folder (``STUDY/trials/<loss>-<number>``), recorded
in the trial (``run_dir``); the tuning metric is reported after every epoch so a pruner can stop
a hopeless trial (its run folder then holds ``pruned.json``). Several workers (``--jobs N``, or
the same command on another machine that reaches the storage) share a study: a lock file in the
study folder makes "is the budget spent? then take a trial" one step, so the budget is trained
exactly once. A failing trial (diverged, bad data) is recorded with its reason and not counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback

from .config import Config, tomllib
from .experiment import load_experiment, resolve
from .jsonio import write_json
from .losses import LOSSES, loss_spec
from .train import run

__all__ = ["StudySpec", "load_study", "prepare", "run_worker", "space_for", "status"]

# shared settings every loss searches unless the study file says otherwise
SHARED_SPACE: dict[str, tuple] = {"lr": (1e-4, 1e-2, True)}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
_KEYS = {"name", "base", "losses", "trials", "epochs", "metric", "sampler", "pruner",
         "storage", "seed", "out", "settings", "space"}  # fmt: skip


@dataclass(frozen=True)
class StudySpec:
    """A study file, checked (:func:`load_study`)."""

    path: Path
    name: str
    losses: tuple[str, ...]
    trials: int
    epochs: int
    base: Path | None = None
    metric: str = "auc"
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str = ""
    seed: int = 0
    out: str = "studies"
    settings: dict[str, Any] = field(default_factory=dict)  # every trial's fixed settings
    space: dict[str, dict[str, tuple]] = field(default_factory=dict)  # "" shared, or a loss

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"


def _range(where: str, v: Any) -> tuple:
    """``[low, high]``, ``[low, high, "log"]`` (numbers) or a list of choices (strings)."""
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return ("choice", *v)
    ok = (
        isinstance(v, list) and len(v) in (2, 3) and all(isinstance(x, (int, float)) for x in v[:2])
    )
    if not ok or (len(v) == 3 and v[2] != "log") or not v[0] < v[1]:
        raise ValueError(f'{where}: expected [low, high], [low, high, "log"] or choices, got {v!r}')
    return (float(v[0]), float(v[1]), len(v) == 3)


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
    for key in ("losses", "trials", "epochs"):
        if key not in d:
            raise ValueError(f"{path}: `{key}` is required")
    losses = d["losses"]
    if not isinstance(losses, list) or not losses:
        raise ValueError(f"{path}: losses must be a non-empty list")
    for loss in losses:
        if loss not in LOSSES:
            raise ValueError(f"{path}: unknown loss {loss!r}; known: {sorted(LOSSES)}")
    for key in ("trials", "epochs"):
        if not isinstance(d[key], int) or d[key] < 1:
            raise ValueError(f"{path}: {key} must be a whole number >= 1, got {d[key]!r}")
    if d.get("sampler", "tpe") not in SAMPLERS or d.get("pruner", "median") not in PRUNERS:
        raise ValueError(f"{path}: sampler must be one of {SAMPLERS}, pruner one of {PRUNERS}")
    base = path.parent / d["base"] if "base" in d else None
    if base is not None and not base.is_file():
        raise FileNotFoundError(f"{path}: base = {d['base']!r}: no such experiment file")
    settings = dict(d.get("settings", {}))
    fields = set(Config.__dataclass_fields__)
    bad = sorted(set(settings) - fields)
    if bad:
        raise ValueError(f"{path}: [settings] {bad} are not settings of a run")
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
                space.setdefault(key, {})[k] = _range(f"{path}: space.{key}.{k}", r)
        elif key in fields:
            space[""][key] = _range(f"{path}: space.{key}", v)
        else:
            raise ValueError(
                f"{path}: space.{key} is not a setting of a run nor a [space.<loss>] table"
            )
    return StudySpec(
        path=path, name=d.get("name", path.stem), losses=tuple(losses), trials=d["trials"],
        epochs=d["epochs"], base=base, metric=d.get("metric", "auc"),
        sampler=d.get("sampler", "tpe"), pruner=d.get("pruner", "median"),
        storage=d.get("storage", ""), seed=int(d.get("seed", 0)), out=d.get("out", "studies"),
        settings=settings, space=space,
    )  # fmt: skip


def space_for(spec: StudySpec, loss: str) -> dict[str, tuple]:
    """The ranges a loss's trials search: the shared ones (``lr`` unless the study file says
    otherwise), the loss's own from the registry, then the study file's overrides. Keys of the
    loss's own settings are prefixed ``<loss>.``."""
    shared = {**SHARED_SPACE, **spec.space.get("", {})}
    own = {**loss_spec(loss).search, **spec.space.get(loss, {})}
    return {**shared, **{f"{loss}.{k}": v for k, v in own.items()}}


def _suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    out = {}
    for name, r in space.items():
        if r[0] == "choice":
            out[name] = trial.suggest_categorical(name, list(r[1:]))
        else:
            out[name] = trial.suggest_float(name, r[0], r[1], log=r[2])
    return out


class ReportToTrial(Callback):
    """After each epoch, report the tuning metric to the Optuna trial; when the pruner says
    so, write ``pruned.json`` into the run folder and stop the run (``optuna.TrialPruned``)."""

    order = 70  # after the Recorder (50) and the checkpoint (61): the epoch is saved

    def __init__(self, trial, metric: str, run_dir: Path):
        self.trial, self.metric, self.run_dir = trial, metric, run_dir

    def after_epoch(self) -> None:
        import optuna

        names = list(self.recorder.metric_names)
        if self.metric not in names:
            raise ValueError(
                f"the study's metric {self.metric!r} is not scored; columns: {names[1:-1]}"
            )
        value = float(self.recorder.log[names.index(self.metric)])
        if math.isnan(value):
            return  # not scored this epoch (pairs_every)
        self.trial.report(value, self.epoch)
        if self.trial.should_prune():
            write_json(self.run_dir / "pruned.json",
                       {"trial": self.trial.number, "epoch": self.epoch, self.metric: value})  # fmt: skip
            raise optuna.TrialPruned(f"pruned after epoch {self.epoch} ({self.metric} {value:.4f})")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (blocking): one worker at a time takes a trial."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _optuna_study(spec: StudySpec, loss: str):
    import optuna

    sampler = (optuna.samplers.TPESampler(seed=spec.seed) if spec.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=spec.seed))  # fmt: skip
    pruner = (
        optuna.pruners.MedianPruner() if spec.pruner == "median" else optuna.pruners.NopPruner()
    )
    storage = spec.storage_url
    if storage.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(storage.removeprefix("journal:")))
    return optuna.create_study(study_name=f"{spec.name}-{loss}", storage=storage,
                               direction="maximize", sampler=sampler, pruner=pruner,
                               load_if_exists=True)  # fmt: skip


def _objective(spec: StudySpec, loss: str, trial) -> float:
    params = _suggest(trial, space_for(spec, loss))
    run_dir = spec.folder / "trials" / f"{loss}-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    toml = load_experiment(spec.base) if spec.base else {}
    own = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{loss}.")}
    flags = {**spec.settings, **{k: v for k, v in params.items() if "." not in k},
             "epochs": spec.epochs, "run_dir": str(run_dir), "progress": False}  # fmt: skip
    if own:
        flags["loss_settings"] = {loss: own}
    cfg, source = resolve({"loss": loss}, toml, flags, prog="fvloss study")
    result = run(cfg, source, cbs=[ReportToTrial(trial, spec.metric, run_dir)])
    value = float(result["final"].get(spec.metric, float("nan")))
    if math.isnan(value):
        raise ValueError(f"{run_dir}: the run ended without a {spec.metric!r} score")
    return value


def prepare(spec: StudySpec) -> None:
    """Create the study folder and each loss's study in the storage (before workers start)."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    with _locked(spec.folder / ".storage.lock"):
        for loss in spec.losses:
            _optuna_study(spec, loss)


def run_worker(spec: StudySpec) -> dict[str, int]:
    """Work on the study until every loss's budget is spent; returns the trials this worker
    finished per loss. A trial that fails is recorded (its reason in ``error``) and not counted;
    as many failures as the budget stop that loss."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done: dict[str, int] = {}
    for loss in spec.losses:
        # workers starting together would each create the database's tables: one at a time
        with _locked(spec.folder / ".storage.lock"):
            study = _optuna_study(spec, loss)
        done[loss] = 0
        while True:
            with _locked(spec.folder / f".{loss}.lock"):
                trials = study.get_trials(deepcopy=False)
                counted = [t for t in trials if t.state in
                           (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]  # fmt: skip
                failed = [t for t in trials if t.state == TrialState.FAIL]
                if len(counted) >= spec.trials or len(failed) >= spec.trials:
                    break
                trial = study.ask()
            try:
                study.tell(trial, _objective(spec, loss, trial))
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
            except Exception as e:  # diverged, bad data: recorded, never a result
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
                study.tell(trial, state=TrialState.FAIL)
                print(f"[fvloss study] {loss} trial {trial.number} failed: {e}", file=sys.stderr)
                continue
            done[loss] += 1
    return done


def status(spec: StudySpec) -> str:
    """Trials by state and the best so far, per loss."""
    from optuna.trial import TrialState

    lines = [f"study {spec.name} ({spec.storage_url}): {spec.trials} trials x {spec.epochs} epochs per loss, "
             f"maximising {spec.metric}", "",
             "| loss | complete | pruned | running | failed | best | its settings | run |",
             "|:--|--:|--:|--:|--:|--:|:--|:--|"]  # fmt: skip
    for loss in spec.losses:
        study = _optuna_study(spec, loss)
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        best = max((t for t in trials if t.state == TrialState.COMPLETE),
                   key=lambda t: t.value, default=None)  # fmt: skip
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in (best.params.items() if best else []))  # fmt: skip
        lines.append(
            f"| {loss} | {count[TrialState.COMPLETE]} | {count[TrialState.PRUNED]} | "
            f"{count[TrialState.RUNNING]} | {count[TrialState.FAIL]} | "
            f"{f'{best.value:.4f}' if best else '-'} | {shown or '-'} | "
            f"{best.user_attrs.get('run_dir', '-') if best else '-'} |"
        )
    return "\n".join(lines)
