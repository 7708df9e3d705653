"""``fvloss study run STUDY.toml [--jobs N]`` and ``fvloss study status STUDY.toml``: every loss
tuned with the same budget (:mod:`fvloss.study`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ..study import load_study, prepare, run_worker, status
from .parser import Parser, fail

__all__ = ["main"]

PROG = "fvloss study"


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        examples=[
            "fvloss study run recipes/studies/celeba64.toml --jobs 2",
            "fvloss study status recipes/studies/celeba64.toml",
        ],
        prog=PROG,
        description="Tune every loss of a study file with the same budget on Optuna; several "
        "workers (here, or the same command on another machine reaching the storage) share it.",
    )
    p.add_argument("action", choices=("run", "status"), help="run (or join) the study, or show it")
    p.add_argument("study", type=Path, help="the study file (TOML)")
    p.add_argument("--jobs", type=int, default=1, help="workers on this machine (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when done, 2 on bad input (one line on stderr; ``FVLOSS_DEBUG=1``
    re-raises), 1 when a worker failed."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        spec = load_study(args.study)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        if args.action == "status":
            print(status(spec))
            return 0
        prepare(spec)  # the database's tables, once, before any worker starts
        if args.jobs == 1:
            done = run_worker(spec)
            print(f"[fvloss study] worker {os.getpid()} finished: {done}")
            print(status(spec))
            return 0
    except (OSError, ValueError) as e:
        if os.environ.get("FVLOSS_DEBUG"):
            raise
        return fail(PROG, str(e))
    # N workers: this same command N times, one worker each; they share the study's storage
    cmd = [sys.executable, "-m", "fvloss.cli", "study", "run", str(args.study), "--jobs", "1"]
    workers = [subprocess.Popen(cmd) for _ in range(args.jobs)]
    codes = [w.wait() for w in workers]
    print(status(spec))
    return 0 if not any(codes) else 1
