"""``fvloss study run|status|report STUDY.toml``: every loss tuned with the same budget, its
finals over seeds, and the report (:mod:`fvloss.study`, :mod:`fvloss.cli.study_report`).

``run`` starts ``--jobs N`` workers on this machine (default: one per visible GPU, pinned with
``CUDA_VISIBLE_DEVICES``; one without GPUs); the same command on another machine reaching the
storage joins the study. A stopped study continues with the same command.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..study import WorkerStopped, fail_running, load_study, prepare, run_worker, status
from ..study.spec import StudySpec
from .identify import main as identify_main
from .parser import Parser, fail
from .verify import main as verify_main

__all__ = ["main", "score_tests", "worker_envs"]

PROG = "fvloss study"


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        examples=[
            "fvloss study run recipes/studies/celeba64.toml",
            "fvloss study run recipes/studies/celeba64.toml --jobs 2",
            "fvloss study status recipes/studies/celeba64.toml",
            "fvloss study report recipes/studies/celeba64.toml",
        ],
        prog=PROG,
        description="Tune every loss of a study file with the same budget on Optuna, rerun each "
        "loss's best settings and its defaults over seeds on the test protocols, and report. "
        "Several workers (here, or the same command on another machine reaching the storage) "
        "share one study; a stopped study continues with the same command.",
    )
    p.add_argument("action", choices=("run", "status", "report"), help="what to do")
    p.add_argument("study", type=Path, help="the study file (TOML)")
    p.add_argument(
        "--jobs", type=int, help="workers on this machine (default: one per GPU, else 1)"
    )
    p.add_argument(
        "--gpus", help="GPUs the workers share out, e.g. 0,1 (default: every visible one)"
    )
    p.add_argument(
        "--fail-running", action="store_true",
        help="first fail every running trial and queue its retry (a journal storage keeps no "
        "heartbeats: use this when its workers are known dead)",
    )  # fmt: skip
    p.add_argument("--bootstrap", type=int, default=2000, help="report: bootstrap resamples")
    return p


def _visible_gpus(env: Mapping[str, str]) -> list[str]:
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        return [g for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_envs(
    jobs: int | None, gpus: list[str] | None, env: Mapping[str, str]
) -> list[dict[str, str]]:
    """Each worker's environment: with GPUs, worker ``k`` sees only GPU ``k mod len(gpus)``
    (several workers may share one); ``jobs`` defaults to one per GPU, or 1."""
    n = jobs or max(1, len(gpus or []))
    if not gpus:
        return [dict(env) for _ in range(n)]
    return [{**env, "CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)]} for k in range(n)]


def cpu_shares(n: int, cpus: Sequence[int]) -> list[list[int]]:
    """The CPUs of each of ``n`` workers on one machine: ``cpus`` cut into ``n`` near-equal
    contiguous parts (round robin when there are more workers than CPUs). Each worker's data
    loaders and torch threads then size themselves to its part instead of every worker
    starting one loader process and one thread per CPU of the machine."""
    cpus = sorted(cpus)
    if n >= len(cpus):
        return [[cpus[k % len(cpus)]] for k in range(n)]
    cuts = [round(k * len(cpus) / n) for k in range(n + 1)]
    return [cpus[cuts[k] : cuts[k + 1]] for k in range(n)]


def score_tests(spec: StudySpec, run_dir: Path) -> None:
    """Score a final's run on every test protocol (``fvloss verify``, cached in the run's
    ``verify/`` folder, which ``fvloss compare`` and the report reuse) and on the ``[identify]``
    protocol (``fvloss identify``: ``verify/identify.json``, compare's rank-1 / TPIR columns)."""
    for t in spec.test:
        code = verify_main(["--run", str(run_dir), *t.argv()])
        if code:
            raise ValueError(
                f"{run_dir}: scoring the test protocol {t.name!r} failed (exit {code})"
            )
    if spec.identify:
        code = identify_main(["--run", str(run_dir), *spec.identify])
        if code:
            raise ValueError(f"{run_dir}: the [identify] protocol failed (exit {code})")


def _pin(share: list[int]) -> Callable[[], None] | None:
    """Run in the child before it starts: keep it to its CPUs."""
    return (lambda: os.sched_setaffinity(0, share)) if share else None


def _workers(args: argparse.Namespace, spec: StudySpec, gpus: list[str]) -> int:
    """N workers: this same command once per worker, each pinned to its GPU; a signal to this
    process goes to every worker (each checkpoints its trial and queues its retry)."""
    cmd = [sys.executable, "-m", "fvloss.cli", "study", "run", str(args.study), "--jobs", "1"]
    envs = worker_envs(args.jobs, gpus, os.environ)
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    shares = cpu_shares(len(envs), mine) if mine else [[] for _ in envs]
    for e, share in zip(envs, shares):
        if share:
            e.setdefault("OMP_NUM_THREADS", str(len(share)))
    # each worker in its own session: Ctrl-C reaches only this process, which passes it on
    # once (a worker seeing the signal twice would stop at once, without its checkpoint)
    workers = [
        subprocess.Popen(cmd, env=e, start_new_session=True, preexec_fn=_pin(share))
        for e, share in zip(envs, shares)
    ]
    seen: list[int] = []

    def forward(signum, frame) -> None:
        seen.append(signum)
        for w in workers:
            if w.poll() is None:
                w.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [w.wait() for w in workers]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(status(spec))
    if seen:
        return 128 + seen[0]
    return 0 if not any(codes) else 1


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when done, 2 on bad input (one line on stderr; ``FVLOSS_DEBUG=1``
    re-raises), 1 when a worker failed, 143 / 130 when stopped by SIGTERM / SIGINT (the
    running trials checkpointed: the same command continues)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        spec = load_study(args.study)
        if args.jobs is not None and args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        if args.action in ("status", "report") and not spec.storage and not spec.folder.is_dir():
            raise ValueError(f"{args.study}: study {spec.name!r} has not started ({spec.folder} "
                             f"does not exist): fvloss study run {args.study}")  # fmt: skip
        if args.action == "status":
            print(status(spec))
            return 0
        if args.action == "report":
            from .study_report import write_report

            print(write_report(spec, bootstrap=args.bootstrap).read_text())
            return 0
        prepare(spec)  # the database's tables, once, before any worker starts
        if args.fail_running:
            print(f"[fvloss study] {fail_running(spec)} running trial(s) failed, retries queued")
        gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else _visible_gpus(os.environ)
        if len(worker_envs(args.jobs, gpus, os.environ)) > 1:
            return _workers(args, spec, gpus)
        done = run_worker(spec, after_final=lambda d: score_tests(spec, d))
        print(f"[fvloss study] worker {os.getpid()} finished: {done}")
        print(status(spec))
        return 0
    except WorkerStopped as e:
        print(f"[fvloss study] {e}; continue with: fvloss study run {args.study}", file=sys.stderr)
        return 128 + e.signum
    except (OSError, ValueError) as e:
        if os.environ.get("FVLOSS_DEBUG"):
            raise
        return fail(PROG, str(e))
