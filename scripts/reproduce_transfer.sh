#!/usr/bin/env bash
# The transfer chain of issue #13: ImageNet MobileNetV2 -> FER2013 (Training only; the epoch is selected on 5% of
# Training, PublicTest is only reported) -> CK+48 10-fold by subject, partial image and full face, CE and CE+EMLF,
# each paired (same seed, same folds) with the same cell trained from ImageNet only.
# Long on a CPU (hours): every step is resumable, run the script again to continue where it stopped.
#   OUT=runs/transfer bash scripts/reproduce_transfer.sh
#   STEPS="full_face long" bash scripts/reproduce_transfer.sh    # only some steps (default: all three, in order)
#   FROM=imagenet STEPS=full_face bash scripts/reproduce_transfer.sh  # only the ImageNet-only cells of a chain
#   FROM=fer2013 LOSSES=emlf STEPS=full_face bash ...  # only the CE + EMLF cell from FER2013 (a cell to finish)
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

die() { echo "reproduce_transfer.sh: $*" >&2; exit 2; }

main() {
  cd "$(dirname "$0")/.."
  OUT=${OUT:-runs/transfer}
  FER=recipes/pidml/fer2013_mobilenet_pretrained.toml
  CK=recipes/pidml/ck48_transfer_96.toml
  extra=("$@")
  # Every word checked before hours of work start. `set -f`: a '*' in them is a typo, not a file pattern.
  local steps froms losses step from loss
  set -f
  read -ra steps <<< "${STEPS-au_partial full_face long}"
  read -ra froms <<< "${FROM-fer2013 imagenet}"  # which CK+48 cells: from the FER2013 source, ImageNet only
  read -ra losses <<< "${LOSSES-ce emlf}"  # and which losses: CE alone, CE + EMLF
  set +f
  ((${#steps[@]})) || die "STEPS is empty: nothing to do"
  ((${#froms[@]})) || die "FROM is empty: no CK+48 cell to train"
  ((${#losses[@]})) || die "LOSSES is empty: no CK+48 cell to train"
  from_fer2013=0 from_imagenet=0
  for from in "${froms[@]}"; do
    case $from in
      fer2013) from_fer2013=1 ;;
      imagenet) from_imagenet=1 ;;
      *) die "unknown source '$from' in FROM (fer2013, imagenet)" ;;
    esac
  done
  for loss in "${losses[@]}"; do
    [[ $loss == ce || $loss == emlf ]] || die "unknown loss '$loss' in LOSSES (ce, emlf)"
  done
  # EMLF's weight (loss.1.weight) in each chosen loss's cells, CE alone first: the first is the baseline's.
  local -A weight=([ce]=0 [emlf]=0.5)
  weights=()
  for loss in ce emlf; do
    if [[ " ${losses[*]} " == *" $loss "* ]]; then weights+=("${weight[$loss]}"); fi
  done
  for step in "${steps[@]}"; do
    case $step in
      au_partial|full_face) ;;
      long) ((from_fer2013)) || die "step 'long' trains FER2013, which FROM=${froms[*]} leaves out: drop it from STEPS" ;;
      *) die "unknown step '$step' in STEPS (au_partial, full_face, long)" ;;
    esac
  done
  # OUT goes into TOML strings ("...") and comma-separated grid values.
  [[ $OUT != *[\"\\,]* ]] || die "OUT='$OUT' holds a quote, backslash or comma; choose a plainer folder name"
  for step in "${steps[@]}"; do
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
