"""The study engine: Optuna studies in one storage, workers that take trials under a lock,
heartbeats, retries that resume, finals over seeds.

Each loss has two Optuna studies in the storage: ``<name>-<loss>`` (tuning: the sampler asks,
the budget is the same for every loss) and ``<name>-<loss>-finals`` (the best settings and the
defaults over the final seeds, enqueued once tuning is over). Every trial, of either, is an
ordinary fvloss run folder: ``STUDY/trials/<loss>-<NNNN>`` (a grid names it after its values,
``softmax-seed42``) and ``STUDY/finals/<loss>-<tuned|default>-seed<S>``.

Faults:

* a worker killed mid-trial (kill -9, a node lost) stops sending the trial's heartbeat; the
  next worker to look fails it (Optuna's ``fail_stale_trials``) and enqueues a retry with the
  same settings and the same run folder, which resumes from the folder's last checkpoint with
  fvloss's exact resume (not from zero);
* SIGTERM / SIGINT: the trial's run writes its checkpoint as a single run does, the trial is
  failed and a retry enqueued at once, and the worker exits 143 / 130: the same command
  continues the study;
* a trial that raises (diverged, bad data) is failed with its reason (user attribute ``error``)
  and never counted as a result; as many such failures as the budget stop that loss.

Only Optuna's RDB storages (SQLite, PostgreSQL, MySQL) keep heartbeats; on a journal file a
killed worker's trial stays "running" until the study is resumed with ``--fail-running``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback

from ..callbacks.checkpoint import RunInterrupted
from ..experiment import load_experiment, resolve
from ..jsonio import write_json
from ..train import run
from .spec import StudySpec, space_for

__all__ = [
    "ReportToTrial",
    "WorkerStopped",
    "fail_running",
    "finals_study",
    "prepare",
    "run_worker",
    "status",
    "tuning_study",
]

FINALS = "finals"


class WorkerStopped(RuntimeError):
    """The worker stopped on a signal; its trial's checkpoint is written and a retry queued."""

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(message)


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


# -- storage and studies --------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (blocking): one worker at a time takes a trial."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna warns that heartbeats are experimental and meant for ``study.optimize``: a worker
    that asks and tells records them itself (:class:`_Heartbeat`), knowingly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna_warning())
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


def optuna_warning() -> type[Warning]:
    from optuna.exceptions import ExperimentalWarning

    return ExperimentalWarning


_STORAGES: dict[tuple[str, int], Any] = {}  # one storage object per process (and URL)


def _storage(spec: StudySpec):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    key = (spec.storage_url, spec.heartbeat)
    if key not in _STORAGES:
        url = spec.storage_url
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            _STORAGES[key] = JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        else:
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "using an existing study"
            with _quiet():
                retry = RetryHeartbeatStaleTrialCallback(max_retry=spec.retries)
                _STORAGES[key] = optuna.storages.RDBStorage(
                    url, heartbeat_interval=spec.heartbeat, grace_period=2 * spec.heartbeat,
                    heartbeat_stale_trial_callback=retry,
                )  # fmt: skip
    return _STORAGES[key]


def _grid_sampler(space: dict[str, list], seed: int):
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        # Optuna's grid sampler calls study.stop() when the grid is used up, which only works
        # inside study.optimize; workers here ask and tell, and count the budget themselves.
        def after_trial(self, study, trial, state, values) -> None:
            pass

    return GridSampler(space, seed=seed)


def _sampler(spec: StudySpec, loss: str, trial_number: int = 0):
    """The loss's sampler, seeded for one trial: ``spec.seed`` and the trial's number.

    Workers re-create the study for every trial (and several workers share it), so a sampler
    seeded with ``spec.seed`` alone would start from the same random state each time and
    suggest the same settings for every trial; seeding by trial number keeps a study
    repeatable and its trials distinct.
    """
    import optuna

    if spec.sampler == "grid":  # picks among the points no trial has taken yet
        space = space_for(spec, loss)
        return _grid_sampler({k: list(v[1:]) for k, v in space.items()}, spec.seed)
    seed = spec.seed * 1_000_003 + trial_number
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def ask_tuning_trial(study, spec: StudySpec, loss: str):
    """A new trial of the loss's tuning study, its sampler seeded for its number (call it
    under the loss's lock, so that the number is the one ``ask`` gives)."""
    study.sampler = _sampler(spec, loss, len(study.get_trials(deepcopy=False)))
    return study.ask()


def tuning_study(spec: StudySpec, loss: str):
    """The loss's tuning study (created when missing)."""
    import optuna

    sampler = _sampler(spec, loss)
    return optuna.create_study(study_name=f"{spec.name}-{loss}", storage=_storage(spec),
                               direction="maximize", sampler=sampler, pruner=_pruner(spec),
                               load_if_exists=True)  # fmt: skip


def _pruner(spec: StudySpec):
    """The median pruner, waiting for half the budget (at most Optuna's 5) of finished trials:
    with Optuna's fixed 5, a budget of 5 trials or fewer would never prune one."""
    import optuna

    if spec.pruner != "median":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=max(1, min(5, (spec.trials or 0) // 2)))


def finals_study(spec: StudySpec, loss: str):
    """The loss's finals: enqueued trials only (the best settings and the defaults x seeds)."""
    import optuna

    return optuna.create_study(study_name=f"{spec.name}-{loss}-{FINALS}", storage=_storage(spec),
                               direction="maximize", pruner=optuna.pruners.NopPruner(),
                               load_if_exists=True)  # fmt: skip


def prepare(spec: StudySpec) -> None:
    """Create the study folder and each loss's studies in the storage (before workers start)."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    with _locked(spec.folder / ".storage.lock"):
        for loss in spec.losses:
            tuning_study(spec, loss)
            if spec.final_seeds:
                finals_study(spec, loss)


# -- one trial ------------------------------------------------------------------------------------
class _Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds in a thread (Optuna's
    ``study.optimize`` does the same; a worker that asks and tells must do it itself)."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        if hasattr(self.storage, "record_heartbeat"):  # journal storages keep none
            self.storage.record_heartbeat(self.trial_id)  # stale-checkable from the start
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


@dataclass
class _Job:
    kind: str  # "tune" or "final"
    loss: str
    study: Any
    trial: Any


def _suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    out = {}
    for name, r in space.items():
        if r[0] in ("choice", "grid"):
            out[name] = trial.suggest_categorical(name, list(r[1:]))
        else:
            out[name] = trial.suggest_float(name, r[0], r[1], log=r[2])
    return out


def _flags(spec: StudySpec, loss: str, params: dict[str, Any]) -> dict[str, Any]:
    """A run's settings: the study's fixed ones, the tuning protocol, then the trial's."""
    flags = {**spec.settings, **{k: v for k, v in params.items() if "." not in k}}
    if spec.tune is not None:
        flags |= {"pairs": spec.tune.pairs, "pairs_format": spec.tune.protocol}
        if spec.tune.root:
            flags["pairs_root"] = spec.tune.root
    own = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{loss}.")}
    if own:
        tables = dict(flags.get("loss_settings", {}))
        flags["loss_settings"] = {**tables, loss: {**tables.get(loss, {}), **own}}
    return flags


def _run_dir(spec: StudySpec, job: _Job, params: dict[str, Any]) -> Path:
    attrs = job.trial.user_attrs
    if "run_dir" in attrs:  # a retry: the same folder, resumed
        return Path(attrs["run_dir"])
    if job.kind == "final":
        return spec.folder / FINALS / f"{job.loss}-{attrs['kind']}-seed{attrs['seed']}"
    if spec.sampler == "grid":  # named after its values: softmax-seed42, arcface-m0.4-seed42
        parts = [f"{k.split('.')[-1]}{v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}{v}"
                 for k, v in sorted(params.items())]  # fmt: skip
        return spec.folder / "trials" / "-".join([job.loss, *parts])
    return spec.folder / "trials" / f"{job.loss}-{job.trial.number:04d}"


def _train(spec: StudySpec, job: _Job) -> tuple[float, Path]:
    """Train the job's run (or resume it) and return the metric and its folder."""
    trial, loss = job.trial, job.loss
    if job.kind == "tune":
        params = _suggest(trial, space_for(spec, loss))
        name, epochs = loss, spec.epochs
    else:
        params = dict(trial.user_attrs["params"]) | {"seed": trial.user_attrs["seed"]}
        name, epochs = f"{loss}-{trial.user_attrs['kind']}", spec.final_epochs or spec.epochs
    run_dir = _run_dir(spec, job, params)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    if (run_dir / "config.json").is_file():  # a retried trial: fvloss's exact resume
        recipe, toml, flags = None, {}, {"resume": str(run_dir), "progress": False}
    else:
        recipe, toml = {"loss": loss}, (load_experiment(spec.base) if spec.base else {})
        flags = {**_flags(spec, loss, params), "run_dir": str(run_dir), "progress": False,
                 "name": name, **({"epochs": epochs} if epochs else {})}  # fmt: skip
    cfg, source = resolve(recipe, toml, flags, prog="fvloss study")
    cbs = [ReportToTrial(trial, spec.metric, run_dir)] if job.kind == "tune" else []
    result = run(cfg, source, cbs=cbs)
    value = float(result["final"].get(spec.metric, float("nan")))
    if math.isnan(value):
        raise ValueError(f"{run_dir}: the run ended without a {spec.metric!r} score")
    return value, run_dir


def _retry_now(spec: StudySpec, job: _Job) -> None:
    """A trial stopped by a signal: failed, and its retry queued at once (a killed worker's
    trial gets the same from the heartbeat, after the grace period)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    frozen = copy.deepcopy(job.study._storage.get_trial(job.trial._trial_id))
    job.study.tell(job.trial, state=TrialState.FAIL)
    with _quiet():
        RetryHeartbeatStaleTrialCallback(max_retry=spec.retries)(job.study, frozen)


def _do(spec: StudySpec, job: _Job, after_final: Callable[[Path], None] | None) -> bool:
    """Run one job and tell its study how it ended; True when it counts as done."""
    import optuna
    from optuna.trial import TrialState

    what = f"{job.loss} {'trial' if job.kind == 'tune' else 'final'} {job.trial.number}"
    with _Heartbeat(job.study._storage, job.trial._trial_id, spec.heartbeat):
        try:
            value, run_dir = _train(spec, job)
            if job.kind == "final" and after_final is not None:
                after_final(run_dir)  # the test protocols, scored by the worker that trained it
        except optuna.TrialPruned:
            job.study.tell(job.trial, state=TrialState.PRUNED)
            return True
        except RunInterrupted as e:
            _retry_now(spec, job)
            raise WorkerStopped(e.signum, f"{what} stopped: {e.message}") from None
        except Exception as e:  # diverged, bad data: recorded, never a result
            job.trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            job.study.tell(job.trial, state=TrialState.FAIL)
            print(f"[fvloss study] {what} failed: {e}", file=sys.stderr, flush=True)
            return False
    job.study.tell(job.trial, value)
    return True


# -- taking work ----------------------------------------------------------------------------------
def _by_state(trials) -> dict[str, list]:
    out: dict[str, list] = {s: [] for s in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")}
    for t in trials:
        out[t.state.name].append(t)
    out["ERROR"] = [t for t in out["FAIL"] if "error" in t.user_attrs]
    return out


def _tuning_left(spec: StudySpec, loss: str, s: dict[str, list]) -> bool:
    """Budget left: finished, pruned and running trials count; failures with an error stop
    the loss when there are as many as the budget (it keeps failing)."""
    budget = spec.budget(loss)
    used = len(s["COMPLETE"]) + len(s["PRUNED"]) + len(s["RUNNING"])
    return used < budget and len(s["ERROR"]) < budget


def _enqueue_finals(spec: StudySpec, loss: str, tuning, finals) -> None:
    done = [t for t in tuning.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: t.value, default=None)
    kinds: list[tuple[str, dict, dict]] = []
    if best is not None:
        chosen = {k: v for k, v in best.params.items()}
        kinds.append(("tuned", chosen, {"from_trial": best.number, "tune_value": best.value}))
    else:
        print(f"[fvloss study] {loss}: no finished tuning trial, only its defaults go to the finals",
              file=sys.stderr)  # fmt: skip
    if spec.final_defaults or best is None:
        kinds.append(("default", {}, {}))
    for seed in spec.final_seeds:
        for kind, params, extra in kinds:
            finals.enqueue_trial({}, user_attrs={"kind": kind, "seed": seed, "params": params,
                                                 **extra})  # fmt: skip


def _take(spec: StudySpec) -> _Job | None:
    """The next job for this worker, under the loss's lock: a tuning trial while budget is
    left (a queued retry first), then the finals of losses whose tuning is over."""
    from optuna.storages import fail_stale_trials

    for loss in spec.losses:
        with _locked(spec.folder / f".{loss}.lock"):
            study = tuning_study(spec, loss)
            with _quiet():
                fail_stale_trials(study)  # a dead worker's trial: failed, its retry queued
            s = _by_state(study.get_trials(deepcopy=False))
            if _tuning_left(spec, loss, s) or s["WAITING"]:
                with _quiet():
                    return _Job("tune", loss, study, ask_tuning_trial(study, spec, loss))
    for loss in spec.losses if spec.final_seeds else ():
        with _locked(spec.folder / f".{loss}.lock"):
            tuning = tuning_study(spec, loss)
            s = _by_state(tuning.get_trials(deepcopy=False))
            if s["RUNNING"] or s["WAITING"] or _tuning_left(spec, loss, s):
                continue  # tuning is not over: another worker still has a trial
            finals = finals_study(spec, loss)
            with _quiet():
                fail_stale_trials(finals)
            if not finals.get_trials(deepcopy=False):
                _enqueue_finals(spec, loss, tuning, finals)
            if _by_state(finals.get_trials(deepcopy=False))["WAITING"]:
                with _quiet():
                    return _Job("final", loss, finals, finals.ask())
    return None


def _running_anywhere(spec: StudySpec) -> bool:
    studies = [tuning_study(spec, loss) for loss in spec.losses]
    if spec.final_seeds:
        studies += [finals_study(spec, loss) for loss in spec.losses]
    return any(t.state.name == "RUNNING" for s in studies for t in s.get_trials(deepcopy=False))


def fail_running(spec: StudySpec) -> int:
    """Fail every running trial and queue its retry (which resumes its run folder): for a
    journal storage, which keeps no heartbeats, once no worker is alive. Returns how many."""
    n = 0
    for loss in spec.losses:
        studies = [
            tuning_study(spec, loss),
            *([finals_study(spec, loss)] if spec.final_seeds else []),
        ]
        for study in studies:
            with _locked(spec.folder / f".{loss}.lock"):
                for t in study.get_trials(deepcopy=False, states=(_running(),)):
                    job = _Job("", loss, study, _AsTrial(study, t))
                    _retry_now(spec, job)
                    n += 1
    return n


def _running():
    from optuna.trial import TrialState

    return TrialState.RUNNING


class _AsTrial:
    """What ``study.tell`` and :func:`_retry_now` need of a trial: its id and number."""

    def __init__(self, study, frozen):
        self._trial_id, self.number = frozen._trial_id, frozen.number


def run_worker(
    spec: StudySpec,
    after_final: Callable[[Path], None] | None = None,
    poll_s: float | None = None,
) -> dict[str, int]:
    """Work on the study until no work is left: every loss's budget spent, then its finals.
    While other workers still run trials that may open work (a tuning trial before the finals,
    a trial whose worker died), wait and look again every ``poll_s`` seconds. Returns the jobs
    this worker finished per loss; raises :class:`WorkerStopped` on SIGTERM / SIGINT."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _locked(spec.folder / ".storage.lock"):  # workers starting together: tables once
        for loss in spec.losses:
            tuning_study(spec, loss)
    poll = poll_s if poll_s is not None else min(10.0, spec.heartbeat)
    done: dict[str, int] = dict.fromkeys(spec.losses, 0)
    while True:
        job = _take(spec)
        if job is None:
            # a journal keeps no heartbeats: a dead worker's trial would be waited on forever
            heartbeats = hasattr(_storage(spec), "record_heartbeat")
            if not heartbeats or not _running_anywhere(spec):
                return done
            time.sleep(poll)
            continue
        done[job.loss] += _do(spec, job, after_final)


# -- status ---------------------------------------------------------------------------------------
def _age(t) -> str:
    start = t.datetime_start.timestamp() if t.datetime_start else time.time()
    return f"{(time.time() - start) / 60:.0f} min"


def status(spec: StudySpec) -> str:
    """Trials by state, the best so far per loss, the finals, the trials running and where."""
    where = spec.storage_url
    budget = "grid" if spec.sampler == "grid" else f"{spec.trials} trials"
    lines = [f"study {spec.name} ({where}): {budget} x {spec.epochs or 'its'} epochs per loss, "
             f"maximising {spec.metric}", "",
             "| loss | complete | pruned | running | failed | best | its settings | run |",
             "|:--|--:|--:|--:|--:|--:|:--|:--|"]  # fmt: skip
    running = []
    for loss in spec.losses:
        trials = tuning_study(spec, loss).get_trials(deepcopy=False)
        s = _by_state(trials)
        best = max(s["COMPLETE"], key=lambda t: t.value, default=None)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in (best.params.items() if best else []))  # fmt: skip
        lines.append(
            f"| {loss} | {len(s['COMPLETE'])} | {len(s['PRUNED'])} | {len(s['RUNNING'])} | "
            f"{len(s['FAIL'])} | {f'{best.value:.4f}' if best else '-'} | {shown or '-'} | "
            f"{best.user_attrs.get('run_dir', '-') if best else '-'} |"
        )
        running += [(loss, "trial", t) for t in s["RUNNING"]]
    if spec.final_seeds:
        lines += [
            "",
            "| loss | finals done | running | waiting | failed |",
            "|:--|--:|--:|--:|--:|",
        ]
        for loss in spec.losses:
            s = _by_state(finals_study(spec, loss).get_trials(deepcopy=False))
            lines.append(f"| {loss} | {len(s['COMPLETE'])} | {len(s['RUNNING'])} | "
                         f"{len(s['WAITING'])} | {len(s['FAIL'])} |")  # fmt: skip
            running += [(loss, "final", t) for t in s["RUNNING"]]
    workers = sorted({t.user_attrs.get("worker", "?") for _, _, t in running})
    lines += ["", f"running: {len(running)} trial(s) on {len(workers)} worker(s)"]
    lines += [f"- {loss} {kind} {t.number} on {t.user_attrs.get('worker', '?')}, "
              f"started {_age(t)} ago: {t.user_attrs.get('run_dir', '-')}"
              for loss, kind, t in running]  # fmt: skip
    return "\n".join(lines)
