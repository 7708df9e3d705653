#!/usr/bin/env bash
# GPU check for fvloss (issue 6): training images/s of ResNet34 at 112 and 160 px with
# fp32 / fp16 / bf16 and channels_last, face_learner against a plain loop, and the loader's
# images/s with N workers. Writes bench/results/gpu_<device-name>.md; under 10 minutes.
#
#   bench/gpu_check.sh              # on a CUDA machine, from anywhere in the checkout
#   bench/gpu_check.sh --dry-run    # toy sizes on the CPU: checks the script (~1-2 min)
#   FVLOSS_BENCH_DEVICE=cpu bench/gpu_check.sh   # the same
#
# Python: $PYTHON, else the repository's .venv, else python3. Data: ../shared (or
# $FVLOSS_SHARED) when present, else made-up JPEGs. Extra arguments go to bench/gpu_bench.py
# (e.g. --budget-s 300, --workers 0 4 8).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONWARNINGS=ignore
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
fi
# the hard stop is 9.5 minutes; the script itself stops starting new parts after --budget-s
exec timeout 570 "$py" -m bench.gpu_bench "$@"
