#!/usr/bin/env bash
# The pretrained MobileNetV2 of reproduce_ck48_pretrained.sh with the input upsampled to 96x96 and flip
# test-time augmentation, same protocol and folds: cross-entropy alone against cross-entropy + EMLF, first on
# the partial image, then on the full face (the paper's first idea, measured again on the stronger backbone).
# Resumable: run it again to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reproduce_ck48}
.venv/bin/fermetric ablate recipes/pidml/ck48_mobilenet_pretrained_96.toml --out "$OUT/pretrained96" \
  --grid loss.1.weight=0,0.5 \
  "$@"
.venv/bin/fermetric ablate recipes/pidml/ck48_mobilenet_pretrained_96.toml --out "$OUT/pretrained96_full_face" \
  --set crop.name=full_face --set crop.size=96 \
  --grid loss.1.weight=0,0.5 \
  "$@"
