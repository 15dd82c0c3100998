#!/usr/bin/env bash
# FER2013 with the PI&DML recipe on the ImageNet-pretrained MobileNetV2 at 96x96, as written (10 epochs;
# docs/results.md gives the measured wall time on 2 CPU cores). Resumable: run it again to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reproduce_fer2013}
.venv/bin/fermetric run recipes/pidml/fer2013_mobilenet_pretrained.toml --out "$OUT/pidml_mobilenet96" --resume "$@"
