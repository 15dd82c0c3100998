#!/usr/bin/env bash
# How much of the gap to the published CK+48 figures is training budget? The same protocol and folds with a
# wider CNN trained twice as long: cross-entropy alone against cross-entropy + EMLF at the best setting of the
# EMLF sweep. Resumable: run it again to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reproduce_ck48}
.venv/bin/fermetric ablate recipes/pidml/base.toml --out "$OUT/budget" \
  --set backbone.width=24 --set train.epochs=40 \
  --grid 'loss.1={name="emlf",weight=0},{name="emlf",weight=0.05,pos_margin=0.5}' \
  "$@"
