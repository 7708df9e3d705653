"""The benchmark scripts run end to end at toy sizes (not timings: their numbers are not checked).

The GPU script matters most: it runs on a borrowed machine with minutes of budget, so a crash
there must be found here first (its ``--dry-run`` takes every code path on the CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
# Toy sizes (32 px, small batches): each script's every code path, not its numbers, in about
# 10-40 s each on an AVX2-only 2-core CPU.
@pytest.mark.parametrize(
    "args",
    [
        ["-m", "bench.gpu_bench", "--dry-run"],
        ["bench/overhead.py", "--quick", "--keep-memory", "--sizes", "32", "--bs", "16"],
        ["bench/data_pipeline.py", "--quick", "--keep-memory", "--img-size", "32", "--bs", "16",
         "--n-images", "8", "--sizes", "32"],
        ["bench/bodies.py", "--quick", "--sizes", "32", "--bs", "8"],
        ["bench/ddp.py", "--quick", "--bs", "8", "--size", "32"],
        ["bench/memory.py", "--heads-only", "--classes", "1000", "--dims", "16"],
        ["bench/data_index.py", "--images", "2000"],
        ["bench/study_overhead.py", "--quick", "--runs", "0"],
        ["bench/faiss_search.py", "--sizes", "2000", "--dim", "16", "--queries", "50"],
    ],
    ids=["gpu_bench", "overhead", "data_pipeline", "bodies", "ddp", "memory_heads", "data_index",
         "study_overhead", "faiss_search"],
)  # fmt: skip
def test_bench_script_runs(args, tmp_path):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TMPDIR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "| " in r.stdout  # a Markdown table was printed
    assert "s in all" in r.stdout or "finished in" in r.stdout  # and the report was closed


# The scripts that run a reference's own code need its snapshot (a fetched git mirror), which CI
# does not have: here only that they explain themselves and refuse a missing one in one line.
@pytest.mark.parametrize("script", ["bench/peer_parity.py", "bench/import_weights.py"])
def test_reference_scripts_need_their_snapshot_and_say_so(script, tmp_path):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    run = [sys.executable, script]
    r = subprocess.run([*run, "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "usage" in r.stdout.lower()
    missing = str(tmp_path / "no-snapshot")
    r = subprocess.run([*run, missing], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "no-snapshot" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
