#!/usr/bin/env bash
# Multi-seed evidence for the report's key comparisons (issue #13), on CK+48 10-fold by subject with the
# from-scratch recipe (fer_cnn width 16, 20 epochs: the one a 2-core CPU can repeat): 3 seeds x 10 folds, paired
# by (seed, fold), so each paired test has n = 30. Steps (STEPS, default all, in order):
#   emlf_vs_ce    EMLF against cross-entropy alone on the partial image (EMLF at the best setting of Table 3:
#                 weight 0.05, pos_margin 0.5; chosen on seed 0's folds, so seeds 1 and 2 are the fresh evidence);
#   full_face_ce  the partial image against the full face, with cross-entropy alone (paired across the two
#                 folders: the split depends only on train.seed and the data, so the same seed gives the same folds);
#   emlf_hard     EMLF's `variant = "hard"` (each anchor's farthest positive and nearest negative instead of the
#                 means) at the same setting, paired with emlf_vs_ce's cells across folders in the same way.
# Resumable: run it again to continue.
#   OUT=runs/multiseed bash scripts/reproduce_multiseed.sh
#   STEPS=emlf_hard bash scripts/reproduce_multiseed.sh     # one step
set -euo pipefail

# shellcheck source=lib/words.sh
source "$(dirname "$0")/lib/words.sh"  # words, has, die

main() {
  cd "$(dirname "$0")/.."
  OUT=${OUT:-runs/multiseed}
  local steps step
  words steps STEPS step "nothing to do" emlf_vs_ce full_face_ce emlf_hard
  for step in "${steps[@]}"; do
    case $step in
      emlf_vs_ce) .venv/bin/fermetric ablate recipes/pidml/base.toml --out "$OUT/emlf_vs_ce" --seeds 3 \
                    --set loss.1.pos_margin=0.5 --grid loss.1.weight=0,0.05 --baseline loss.1.weight=0 "$@" ;;
      full_face_ce) .venv/bin/fermetric ablate recipes/pidml/base.toml --out "$OUT/full_face_ce" --seeds 3 \
                      --set loss.1.pos_margin=0.5 --set crop.name=full_face --set crop.landmarks=template \
                      --grid loss.1.weight=0 "$@" ;;
      emlf_hard) .venv/bin/fermetric ablate recipes/pidml/base.toml --out "$OUT/emlf_hard" --seeds 3 \
                   --set loss.1.pos_margin=0.5 --set loss.1.variant=hard --grid loss.1.weight=0.05 "$@" ;;
    esac
  done
}

# Everything is in functions, read before the first runs: the script can be edited while a run goes on.
main "$@"; exit
