#!/usr/bin/env bash
# The transfer chain of issue #13: ImageNet MobileNetV2 -> FER2013 (Training only; the epoch is selected on 5% of
# Training, PublicTest is only reported) -> CK+48 10-fold by subject, partial image and full face, CE and CE+EMLF,
# each paired (same seed, same folds) with the same cell trained from ImageNet only.
# Long on a CPU (hours): every step is resumable, run the script again to continue where it stopped.
#   OUT=runs/transfer bash scripts/reproduce_transfer.sh
#   STEPS="full_face long" bash scripts/reproduce_transfer.sh    # only some steps (default: all three, in order)
#   FROM=imagenet STEPS=full_face bash scripts/reproduce_transfer.sh  # only the ImageNet-only cells of a chain
# Afterwards: .venv/bin/python scripts/make_results_13.py --transfer "$OUT" --write docs/results.md
set -euo pipefail

# One crop's chain (a stop leaves the chains before it complete): its FER2013 source (input size and crop must
# match the CK+48 step), then CK+48 from it against ImageNet only ("" = no init_from), CE alone (weight 0)
# against CE + EMLF. init_from is the outer axis, so the cells that start from the source run right after it,
# while its folder is surely there: run folders do not outlive a machine, and a source trained again is another
# network (the report flags cells whose folds mix two). `ablate` checks every cell's source before the first
# cell trains, so the ImageNet-only cells too need the source folder to be there, unless FROM=imagenet, which
# trains only them (no source; they do not depend on it) into the same folder, for a machine whose source is gone.
chain() {
  local crop=$1; shift
  local inits=""
  if [[ " $FROM " == *" fer2013 "* ]]; then
    .venv/bin/fermetric run "$FER" --out "$OUT/fer2013_$crop" "$@" --resume ${extra[@]+"${extra[@]}"}
    inits="\"$OUT/fer2013_$crop\","
  fi
  [[ " $FROM " == *" imagenet "* ]] && inits+='""' || inits=${inits%,}
  .venv/bin/fermetric ablate "$CK" --out "$OUT/ck48_$crop" "$@" \
    --grid "model.init_from=$inits" --grid loss.1.weight=0,0.5 \
    --baseline "loss.1.weight=0,model.init_from=${inits##*,}" ${extra[@]+"${extra[@]}"}
}

main() {
  cd "$(dirname "$0")/.."
  OUT=${OUT:-runs/transfer}
  STEPS=${STEPS-au_partial full_face long}
  FER=recipes/pidml/fer2013_mobilenet_pretrained.toml
  CK=recipes/pidml/ck48_transfer_96.toml
  FROM=${FROM-fer2013 imagenet}  # which CK+48 cells: from the FER2013 source, from ImageNet only, or both
  extra=("$@")
  for from in $FROM; do
    case $from in
      fer2013|imagenet) ;;
      *) echo "reproduce_transfer.sh: unknown source '$from' in FROM (fer2013, imagenet)" >&2; exit 2 ;;
    esac
  done
  [ -n "$FROM" ] || { echo "reproduce_transfer.sh: FROM is empty: no CK+48 cell to train" >&2; exit 2; }
  for step in $STEPS; do  # every step checked before hours of work start
    case $step in
      au_partial|full_face|long) ;;
      *) echo "reproduce_transfer.sh: unknown step '$step' in STEPS (au_partial, full_face, long)" >&2; exit 2 ;;
    esac
  done
  [ -n "$STEPS" ] || { echo "reproduce_transfer.sh: STEPS is empty: nothing to do" >&2; exit 2; }
  for step in $STEPS; do
    case $step in
      au_partial) chain au_partial ;;
      full_face) chain full_face --set crop.name=full_face --set crop.size=96 ;;
      # FER2013 at a longer schedule: the partial-image source's recipe for 30 epochs, its own run (the cosine
      # schedule spans train.epochs, so it is not a continuation of the 10-epoch source). Last, because the
      # chains do not need it; about 6.5 h on a 2-core CPU.
      long) .venv/bin/fermetric run "$FER" --out "$OUT/fer2013_au_partial_30ep" --set train.epochs=30 --resume \
              ${extra[@]+"${extra[@]}"} ;;
    esac
  done
}

# Everything is in functions, read before the first runs: the script can be edited while a run goes on.
main "$@"; exit
