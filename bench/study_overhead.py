"""What a study costs beyond its runs: the storage per trial, and N workers against 1.

    python bench/study_overhead.py [--quick] [--trials 40] [--runs 4 | 0] [--save]

1. **Storage per trial.** The engine's whole round for one trial (lock, stale check, budget
   count, ``ask``, heartbeat, ``set_user_attr``, ``tell``) with the training replaced by a no-op,
   on SQLite in the study folder and on Optuna's journal file, against the same ask / tell on
   an in-memory study (Optuna's own floor), interleaved in this one run. Per-trial milliseconds
   grow with the trials already stored (the budget count reads them): reported over
   ``--trials`` trials per loss.
2. **N workers vs 1** on one tiny real study (synthetic faces, 32 px, resnet18, ``--runs``
   trials of one epoch per loss): wall time of ``fvloss study run --jobs 1`` against ``--jobs
   2``, and that each trial ran exactly once. On 2 CPU cores two workers share the cores, so this
   measures correctness and overhead, not speed-up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    REPO,
    emit,
    finish,
    machine_header,
    md_table,
    median,
    quiet_warnings,
    spread,
)

quiet_warnings()

import optuna  # noqa: E402

from fvloss.study import engine, load_study, tuning_study  # noqa: E402

SETTINGS = ('img_size = 32\narch = "resnet18"\nemb_dim = 16\nbs = 16\nval_pairs = 100\n'
            'workers = 0\nlog = ["none"]\nguard = false\nlr = 1e-3\nthreads = 1\n')  # fmt: skip


def study_file(folder: Path, name: str, trials: int, storage: str = "", data: Path | None = None,
               losses: str = '["softmax"]') -> Path:  # fmt: skip
    p = folder / f"{name}.toml"
    store = f'storage = "{storage}"\n' if storage else ""
    settings = f'[settings]\ndata = "{data}"\n{SETTINGS}' if data else ""
    p.write_text(f'name = "{name}"\nlosses = {losses}\ntrials = {trials}\nepochs = 1\n'
                 f'out = "{folder}"\nsampler = "random"\npruner = "none"\n{store}{settings}')  # fmt: skip
    return p


def engine_round_ms(p: Path, trials: int) -> list[float]:
    """Milliseconds per trial of the worker loop, the training a no-op returning a value."""
    spec = load_study(p)
    engine.prepare(spec)
    engine.run = lambda cfg, source, cbs=(): {"final": {"auc": 0.5}}  # no training: the engine
    out, t = [], time.perf_counter()
    orig = engine._do

    def timed(spec, job, after_final):
        nonlocal t
        r = orig(spec, job, after_final)
        now = time.perf_counter()
        out.append(1000 * (now - t))
        t = now
        return r

    engine._do = timed
    try:
        engine.run_worker(spec)
    finally:
        engine._do = orig
    assert len(tuning_study(spec, "softmax").trials) == trials
    return out


def memory_round_ms(trials: int) -> list[float]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    out = []
    for _ in range(trials):
        t = time.perf_counter()
        tr = study.ask()
        tr.suggest_float("lr", 1e-4, 1e-2, log=True)
        tr.set_user_attr("run_dir", "x")
        study.tell(tr, 0.5)
        out.append(1000 * (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toy sizes (the smoke test)")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--runs", type=int, default=4,
                    help="tiny real trials per loss in part 2 (0: skip part 2)")  # fmt: skip
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.trials = 4
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.time()
    out: list[str] = []
    emit(out, "## fvloss study: what a study costs beyond its runs", "", machine_header(), "")
    tmp = Path(tempfile.mkdtemp(prefix="fvloss-study-bench-"))
    rows = []
    for rep in range(2):  # interleaved: memory, sqlite, journal, twice
        mem = memory_round_ms(args.trials)
        sql = engine_round_ms(study_file(tmp, f"sqlite{rep}", args.trials), args.trials)
        jp = tmp / f"journal{rep}.log"
        jrn = engine_round_ms(study_file(tmp, f"journal{rep}", args.trials, f"journal:{jp}"),
                              args.trials)  # fmt: skip
        rows.append((mem, sql, jrn))
    table = []
    for k, name in enumerate(("in memory: ask / tell (Optuna's floor)",
                              "fvloss worker round, SQLite in the study folder",
                              "fvloss worker round, journal file")):  # fmt: skip
        xs = [x for r in rows for x in r[k]]
        first = [x for r in rows for x in r[k][: max(1, args.trials // 4)]]
        last = [x for r in rows for x in r[k][-max(1, args.trials // 4) :]]
        table.append([name, f"{median(xs):.1f} ({spread(xs)})", f"{median(first):.1f}",
                      f"{median(last):.1f}"])  # fmt: skip
    emit(out, f"### 1. Per trial, {args.trials} trials per study, 2 interleaved rounds", "",
         md_table(["round", "ms per trial: median (spread)", "first quarter", "last quarter"],
                  table), "")  # fmt: skip

    if args.runs == 0:
        finish(out, t0, args.save, "study_overhead")
        return
    from fvloss.data.synthetic import SyntheticSpec, make_synthetic

    data = make_synthetic(SyntheticSpec(8, 6, 32, 0), tmp / "syn", quiet=True)
    table = []
    for jobs in (1, 2, 1, 2):
        name = f"real{jobs}-{len(table)}"
        p = study_file(tmp, name, args.runs, data=data, losses='["softmax", "arcface"]')
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "fvloss.cli", "study", "run", str(p),
                            "--jobs", str(jobs)], cwd=REPO, capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - t
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        spec = load_study(p)
        trials = [t for loss in spec.losses for t in tuning_study(spec, loss).trials]
        dirs = [t.user_attrs["run_dir"] for t in trials]
        once = len(dirs) == len(set(dirs)) == 2 * args.runs
        busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
        table.append([jobs, f"{wall:.1f}", f"{busy:.1f}", len(trials),
                      "yes" if once else "NO"])  # fmt: skip
    emit(out, f"### 2. One study of 2 losses x {args.runs} one-epoch trials: --jobs 1 vs 2 "
              "(A B A B)", "",
         md_table(["workers", "wall (s)", "sum of trial durations (s)", "trials",
                   "each trial once"], table), "",
         "On 2 cores two workers each get about one core: wall time measures the engine's "
         "correctness and overhead (process start-up, imports, polling), not a speed-up; with "
         "one GPU per worker the trials run side by side.", "")  # fmt: skip
    finish(out, t0, args.save, "study_overhead")


if __name__ == "__main__":
    main()
