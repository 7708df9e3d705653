#!/usr/bin/env bash
# Issue 5's experiment end to end, from the repository root with ../shared beside it:
# align CelebA-wild and LFW View 1, train softmax / center loss / ArcFace on the same settings
# (recipes/celeba64*.toml), then compare them on LFW pairsDevTest, CFP-FF and CFP-FP (tables + ROC
# figures + bootstrap). CFP's profile photos where YuNet finds no face become centre crops.
set -euo pipefail
SHARED=${FVLOSS_SHARED:-../shared}
YUNET=$SHARED/models/yunet_s_640_640.onnx
fvloss align "$SHARED/data/celeba-wild/images" data/celeba-wild-aligned --detector yunet --model "$YUNET" --workers 2 -q
fvloss align "$SHARED/data/lfw-view1/images" data/lfw-view1-aligned --detector yunet --model "$YUNET" --workers 2 -q
fvloss align "$SHARED/data/cfp/Data/Images" data/cfp-aligned --detector yunet --model "$YUNET" --workers 2 --fallback center -q
for loss in softmax center arcface; do
  python -m "fvloss.recipes.$loss" --config "recipes/celeba64_$loss.toml" --progress false --run-dir "runs/celeba64-$loss"
done
fvloss compare runs/celeba64-softmax runs/celeba64-center runs/celeba64-arcface \
  --pairs "$SHARED/data/lfw-view1/pairsDevTest.txt" --root data/lfw-view1-aligned --out runs/compare-celeba64
for protocol in cfp-ff cfp-fp; do
  fvloss compare runs/celeba64-softmax runs/celeba64-center runs/celeba64-arcface \
    --pairs "$SHARED/data/cfp" --protocol "$protocol" --root data/cfp-aligned --out "runs/compare-celeba64-$protocol"
done
