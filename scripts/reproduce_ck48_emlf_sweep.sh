#!/usr/bin/env bash
# EMLF parameters tried on CK+48 (partial image, 10 subject-independent folds), against cross-entropy alone on
# the same folds. Run after scripts/reproduce_ck48.sh showed EMLF at its defaults (weight 0.5, pos_margin 0)
# hurting accuracy. Resumable: run it again to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reproduce_ck48}
.venv/bin/fermetric ablate recipes/pidml/base.toml --out "$OUT/emlf_sweep" \
  --grid 'loss.1={name="emlf",weight=0},{name="emlf",weight=0.05},{name="emlf",weight=0.05,pos_margin=0.5},{name="emlf",weight=0.2},{name="emlf",weight=0.2,pos_margin=0.5}' \
  "$@"
