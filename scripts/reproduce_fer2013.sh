#!/usr/bin/env bash
# FER2013: train the PI&DML recipe on Training, report PublicTest. Resumable (same command again).
# On a 2-core CPU the full schedule of recipes/pidml/fer2013_pidml.toml does not fit a working session, so by
# default this runs a shorter CPU budget (the overrides below, reported with the result); on a GPU run
#   FER_BUDGET="" bash scripts/reproduce_fer2013.sh
# for the recipe as written.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reproduce_fer2013}
read -r -a BUDGET <<< "${FER_BUDGET-"--set train.epochs=20 --set backbone.width=24 --set eval.tsne_max_points=1500"}"
.venv/bin/fermetric run recipes/pidml/fer2013_pidml.toml --out "$OUT/pidml" --resume "${BUDGET[@]}" "$@"
