#!/usr/bin/env bash
# FER2013: train on Training, report PublicTest (docs/results.md). Resumable (same command again): a finished
# run is skipped, an interrupted one continues from its last checkpoint.
#  1. the PI&DML recipe with fer_cnn from scratch. The full schedule of recipes/pidml/fer2013_pidml.toml does
#     not fit a 2-core CPU working session, so by default it runs a shorter CPU budget (the overrides below,
#     reported with the result); on a GPU run  FER_BUDGET="" bash scripts/reproduce_fer2013.sh  for the recipe
#     as written. Extra arguments ("$@", e.g. --set train.device=cuda) go to this run only.
#  2. scripts/reproduce_fer2013_pretrained96.sh: the same recipe on the ImageNet-pretrained MobileNetV2 at
#     96x96, as written.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reproduce_fer2013}
read -r -a BUDGET <<< "${FER_BUDGET-"--set train.epochs=20 --set backbone.width=24 --set eval.tsne_max_points=1500"}"
.venv/bin/fermetric run recipes/pidml/fer2013_pidml.toml --out "$OUT/pidml" --resume "${BUDGET[@]}" "$@"
OUT="$OUT" bash scripts/reproduce_fer2013_pretrained96.sh
