#!/usr/bin/env bash
# One GPU session's work, as one prepared command (issue 27, with the GPU checks of issues 6 and
# 26): the celeba64 grid (every loss x seeds 42, 43: recipes/studies/celeba64_grid.toml) trained
# by JOBS workers sharing the GPU, then each run's CFP frontal -> profile identification, the
# three verification tables (LFW pairsDevTest, CFP-FF, CFP-FP, with rank-1 / TPIR columns), the
# quality curves and norm-degradation response, and bench/gpu_check.sh in the time left.
#
#   python bench/gpu_pack.py                  # here: the folder gpu_pack/ that travels (below)
#   bench/gpu_celeba64.sh                     # there: OUT=... (default /tmp/fvloss-gpu)
#
# The device machine has no ../shared and no registry: gpu_pack/ holds the aligned faces as
# 64 px JPEG copies (the size the recipe trains at), the protocol files, and the wheels its
# image lacks. Every stage is cut by the deadline DEADLINE_S (default 560 s) so that a run cut
# short still returns what was done; results.tgz holds every run's tables and figures (no weights).
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=${PACK:-gpu_pack}
OUT=${OUT:-/tmp/fvloss-gpu}
JOBS=${JOBS:-8}
STUDY=${STUDY:-recipes/studies/celeba64_grid.toml}
DEADLINE_S=${DEADLINE_S:-560}
GRID_S=${GRID_S:-300}
SCORE_JOBS=${SCORE_JOBS:-8}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
stamp() { echo "=== [${SECONDS} s] $*"; }
left() {  # seconds to the deadline, less a reserve (at least 1: timeout takes no 0 or less)
    local n=$((DEADLINE_S - SECONDS - ${1:-0}))
    echo $((n > 0 ? n : 1))
}

stamp setup
if compgen -G "$PACK/whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$PACK"/whl/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site"
fi
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
if ! command -v fvloss >/dev/null; then  # not installed there: the package from this checkout
    mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m fvloss.cli "$@"\n' >/tmp/bin/fvloss
    chmod +x /tmp/bin/fvloss && export PATH="/tmp/bin:$PATH" PYTHONPATH="$PWD:${PYTHONPATH:-}"
fi
# the README's layout: ../shared/data/<set> (protocol files) and data/<set>-aligned (faces)
if [[ -d "$PACK/shared" && ! -e ../shared ]]; then
    mkdir -p ../shared/data && for d in "$PACK"/shared/*; do ln -s "$PWD/$d" ../shared/data/; done
fi
[[ -e data || ! -d "$PACK/data" ]] || ln -s "$PACK/data" data
python3 -c "import torch, fastai, albumentations, optuna, fvloss
print('torch', torch.__version__, '| fastai', fastai.__version__, '| cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
nproc

name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$STUDY")
stamp "grid: $STUDY, $JOBS workers (cut at $GRID_S s)"
timeout --kill-after 30 "$GRID_S" fvloss study run "$STUDY" --jobs "$JOBS"
fvloss study status "$STUDY" | tee "$OUT/grid_status.md"
mapfile -t runs < <(ls -d studies/"$name"/trials/*/ 2>/dev/null | while read -r d; do
    [[ -f "$d/metrics.json" && ! -f "$d/pruned.json" ]] && echo "${d%/}"; done)
echo "${#runs[@]} finished runs"
((${#runs[@]})) || exit 1
RES=studies/$name/gpu
mkdir -p "$RES"

stamp "score: CFP frontal -> profile identification, LFW pairsDevTest, CFP-FF, CFP-FP, each run"
# the CFP identification table (closed set over 500 people, open set with half left out), beside
timeout "$(left 150)" python3 bench/identify_runs.py "${runs[@]}" --index numpy \
    --cfp ../shared/data/cfp --root data/cfp-aligned >"$OUT/identify_runs.md" 2>&1 &
table=$!
# one line per (run, protocol), scored in parallel; compare then reads the cached scores
for r in "${runs[@]}"; do
    echo "identify --run $r --cfp ../shared/data/cfp --root data/cfp-aligned --index numpy --num-workers 2"
    echo "verify --run $r --pairs ../shared/data/lfw-view1/pairsDevTest.txt --root data/lfw-view1-aligned --num-workers 2"
    for p in cfp-ff cfp-fp; do
        echo "verify --run $r --pairs ../shared/data/cfp --protocol $p --root data/cfp-aligned --num-workers 2"
    done
done | timeout "$(left 150)" xargs -P "$SCORE_JOBS" -L 1 fvloss >"$OUT/scores.log" 2>&1
grep -E "rank1=|AUC|error" "$OUT/scores.log" | head -100
wait "$table"; tail -20 "$OUT/identify_runs.md"

stamp "compare: LFW pairsDevTest, CFP-FF, CFP-FP (with rank-1 / TPIR columns)"
timeout "$(left 110)" fvloss compare "${runs[@]}" --pairs ../shared/data/lfw-view1/pairsDevTest.txt \
    --root data/lfw-view1-aligned --out "$RES/compare-lfw"
for p in cfp-fp cfp-ff; do
    timeout "$(left 100)" fvloss compare "${runs[@]}" --pairs ../shared/data/cfp --protocol "$p" \
        --root data/cfp-aligned --out "$RES/compare-$p"
done

stamp "quality: error-vs-reject on CFP-FP, norm response to degradations"
for seed in 42 43; do
    mine=()
    for r in "${runs[@]}"; do [[ $r == *seed$seed ]] && mine+=("$r"); done
    ((${#mine[@]})) && timeout "$(left 80)" fvloss quality "${mine[@]}" --pairs ../shared/data/cfp \
        --protocol cfp-fp --root data/cfp-aligned --degrade 500 --out "$RES/quality-cfp-fp-seed$seed"
done

stamp "results.tgz"
tar czf "$OUT/results.tgz" --exclude='*.pth' --exclude='*.pt' --exclude='*.onnx' \
    --exclude='*.npy' --exclude='checkpoints' --exclude='*/verify/*.png' "studies/$name"
ls -la "$OUT"

if (($(left 40) > 60)); then
    stamp "bench/gpu_check.sh in the $(left 40) s left"
    timeout "$(left 10)" bench/gpu_check.sh --budget-s "$(left 100)" --out "$OUT/gpu_check.md"
fi
stamp done
