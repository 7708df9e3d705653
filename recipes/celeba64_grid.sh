#!/usr/bin/env bash
# Issue 13's comparison: every registered loss on the celeba64 experiment (recipes/celeba64.toml:
# ResNet34 from scratch, 64x64 CelebA-wild, 16 epochs, the same settings for all), two seeds each,
# then the groups (mean +- std over seeds, pooled-pair bootstrap, pooled ROC) on LFW pairsDevTest,
# CFP-FF and CFP-FP (each in $GRID/compare-<protocol>/). Run from the repository root after recipes/celeba64.sh's alignment steps.
# Stopped half-way, it continues where it was: finished runs are kept, interrupted ones resumed.
# The runs live in $GRID/trials/<loss>-seed<seed> (a study with the grid sampler: docs/guide/studies.md).
set -euo pipefail
SHARED=${FVLOSS_SHARED:-../shared}
LOSSES=${LOSSES:-softmax,center,arcface,cosface,sphereface,combined,subcenter,curricularface,adaface,magface,elasticface}
SEEDS=${SEEDS:-42,43}
GRID=${GRID:-runs/grid-celeba64}
fvloss compare --grid "$LOSSES" --seeds "$SEEDS" --out "$GRID" \
  --pairs "$SHARED/data/lfw-view1/pairsDevTest.txt" --root data/lfw-view1-aligned \
  -- --config recipes/celeba64.toml --progress false
for protocol in cfp-ff cfp-fp; do
  fvloss compare --grid "$LOSSES" --seeds "$SEEDS" --out "$GRID" \
    --pairs "$SHARED/data/cfp" --protocol "$protocol" --root data/cfp-aligned \
    -- --config recipes/celeba64.toml --progress false
done
