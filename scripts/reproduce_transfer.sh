#!/usr/bin/env bash
# The transfer chain of issue #13: ImageNet MobileNetV2 -> FER2013 (Training only; the epoch is selected on 5% of
# Training, PublicTest is only reported) -> CK+48 10-fold by subject, partial image and full face, CE and CE+EMLF,
# each paired (same seed, same folds) with the same cell trained from ImageNet only.
# Long on a CPU (hours): every step is resumable, run the script again to continue where it stopped.
#   OUT=runs/transfer bash scripts/reproduce_transfer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/transfer}
FER=recipes/pidml/fer2013_mobilenet_pretrained.toml
CK=recipes/pidml/ck48_transfer_96.toml
# Each crop's chain in turn (a stop leaves one chain complete): its FER2013 source (input size and crop must
# match the CK+48 step), then CK+48 from it against ImageNet only ("" = no init_from), CE alone (weight 0)
# against CE + EMLF. The loss weight is the outer axis, so the CE pair (FER2013 vs ImageNet) finishes first.
.venv/bin/fermetric run "$FER" --out "$OUT/fer2013_au_partial" --resume "$@"
.venv/bin/fermetric ablate "$CK" --out "$OUT/ck48_au_partial" \
  --grid loss.1.weight=0,0.5 --grid "model.init_from=\"$OUT/fer2013_au_partial\",\"\"" \
  --baseline "loss.1.weight=0,model.init_from=\"\"" "$@"
.venv/bin/fermetric run "$FER" --out "$OUT/fer2013_full_face" --set crop.name=full_face --set crop.size=96 --resume "$@"
.venv/bin/fermetric ablate "$CK" --out "$OUT/ck48_full_face" --set crop.name=full_face --set crop.size=96 \
  --grid loss.1.weight=0,0.5 --grid "model.init_from=\"$OUT/fer2013_full_face\",\"\"" \
  --baseline "loss.1.weight=0,model.init_from=\"\"" "$@"
# FER2013 at a longer schedule (issue #13): the partial-image source's recipe for 30 epochs, its own run (the
# cosine schedule spans train.epochs, so it is not a continuation of the 10-epoch source). Last, because the
# chains above do not need it; about 6.5 h on a 2-core CPU.
.venv/bin/fermetric run "$FER" --out "$OUT/fer2013_au_partial_30ep" --set train.epochs=30 --resume "$@"
