#!/usr/bin/env bash
# The transfer chain of issue #13: ImageNet MobileNetV2 -> FER2013 (Training only; the epoch is selected on 5% of
# Training, PublicTest is only reported) -> CK+48 10-fold by subject, partial image and full face, CE and CE+EMLF,
# each paired (same seed, same folds) with the same cell trained from ImageNet only.
# Long on a CPU (hours): every step is resumable, run the script again to continue where it stopped.
#   OUT=runs/transfer bash scripts/reproduce_transfer.sh
#   STEPS="full_face long" bash scripts/reproduce_transfer.sh    # only some steps (default: all three, in order)
#   STEPS=long LONG_EPOCHS=18 bash scripts/reproduce_transfer.sh  # the longer FER2013 schedule, shortened to fit
#   FROM=imagenet STEPS=full_face bash scripts/reproduce_transfer.sh  # only the ImageNet-only cells of a chain
#   FROM=fer2013 LOSSES=emlf STEPS=full_face bash ...  # only the CE + EMLF cell from FER2013 (a cell to finish)
# Afterwards: .venv/bin/python scripts/make_results_13.py --transfer "$OUT" --write docs/results.md
set -euo pipefail

# One crop's chain (a stop leaves the chains before it complete): its FER2013 source (input size and crop must
# match the CK+48 step), then CK+48 from it against ImageNet only ("" = no init_from), CE alone (weight 0)
# against CE + EMLF (the EMLF weights in `weights`, from LOSSES; FROM sets from_fer2013/from_imagenet). init_from is the outer axis, so the cells that start from the source run right after it,
# while its folder is surely there: run folders do not outlive a machine, and a source trained again is another
# network (the report flags cells whose folds mix two). `ablate` checks every cell's source before the first
# cell trains, so the ImageNet-only cells too need the source folder to be there, unless FROM=imagenet, which
# trains only them (no source; they do not depend on it) into the same folder, for a machine whose source is gone.
chain() {
  local crop=$1; shift
  local source="\"$OUT/fer2013_$crop\"" inits=() baseline
  if ((from_fer2013)); then
    .venv/bin/fermetric run "$FER" --out "$OUT/fer2013_$crop" "$@" --resume ${extra[@]+"${extra[@]}"}
    inits+=("$source"); baseline=$source
  fi
  if ((from_imagenet)); then inits+=('""'); baseline='""'; fi
  local IFS=,
  .venv/bin/fermetric ablate "$CK" --out "$OUT/ck48_$crop" "$@" \
    --grid "model.init_from=${inits[*]}" --grid "loss.1.weight=${weights[*]}" \
    --baseline "loss.1.weight=${weights[0]},model.init_from=$baseline" ${extra[@]+"${extra[@]}"}
}

# shellcheck source=lib/words.sh
source "$(dirname "$0")/lib/words.sh"  # words, has, die

main() {
  cd "$(dirname "$0")/.."
  OUT=${OUT:-runs/transfer}
  FER=recipes/pidml/fer2013_mobilenet_pretrained.toml
  CK=recipes/pidml/ck48_transfer_96.toml
  FULL_FACE=(--set crop.name=full_face --set crop.size=96)
  extra=("$@")
  local steps froms losses step
  words steps STEPS step "nothing to do" au_partial full_face long
  words froms FROM source "no CK+48 cell to train" fer2013 imagenet  # CK+48 cells from the FER2013 run, ImageNet only
  words losses LOSSES loss "no CK+48 cell to train" ce emlf  # and with which losses: CE alone, CE + EMLF
  from_fer2013=0 from_imagenet=0 weights=()
  if has fer2013 "${froms[@]}"; then from_fer2013=1; fi
  if has imagenet "${froms[@]}"; then from_imagenet=1; fi
  # EMLF's weight (loss.1.weight) in the chosen losses' cells, CE alone first: the first is the baseline's.
  if has ce "${losses[@]}"; then weights+=(0); fi
  if has emlf "${losses[@]}"; then weights+=(0.5); fi
  if has long "${steps[@]}" && ! ((from_fer2013)); then
    die "step 'long' trains FER2013, which FROM=${froms[*]} leaves out: drop it from STEPS"
  fi
  long_epochs=${LONG_EPOCHS:-30}
  [[ $long_epochs =~ ^[1-9][0-9]*$ ]] || die "LONG_EPOCHS='$long_epochs' is not a whole number of epochs (1 or more)"
  # OUT goes into TOML strings ("...") and comma-separated grid values.
  [[ $OUT != *[\"\\,]* ]] || die "OUT='$OUT' holds a quote, backslash or comma; choose a plainer folder name"
  for step in "${steps[@]}"; do
    case $step in
      au_partial) chain au_partial ;;
      full_face) chain full_face "${FULL_FACE[@]}" ;;
      # FER2013 at a longer schedule: the full-face source's recipe (the better FER2013 crop, by 5 points at 10
      # epochs) for LONG_EPOCHS epochs, its own run (the cosine schedule spans train.epochs, so it is not a
      # continuation of the 10-epoch source). Last, because the chains do not need it. An epoch takes 6-8 min on
      # a 2-core CPU: 30 epochs outlast a 3-hour session, and run folders do not outlive a machine, so a CPU
      # session sets LONG_EPOCHS to what it has time for; a GPU needs minutes. Each length is its own folder and
      # report row: runs of different lengths are different schedules, not run-to-run variation.
      long) .venv/bin/fermetric run "$FER" --out "$OUT/fer2013_full_face_${long_epochs}ep" "${FULL_FACE[@]}" \
              --set "train.epochs=$long_epochs" --resume ${extra[@]+"${extra[@]}"} ;;
    esac
  done
}

# A SIGTERM or Ctrl-C reaches the fermetric run too, which saves its state and writes its final status: wait for
# it (a trap runs once the command in hand ends) rather than die at once, so whoever stopped the script (timeout in
# scripts/device_long.sh, a scheduler) finds the run folder finished with.
trap 'exit 130' INT
trap 'exit 143' TERM
# Everything is in functions, read before the first runs: the script can be edited while a run goes on.
main "$@"; exit
