#!/usr/bin/env bash
# Set everything up, then run fermetric's tests and every plugin package's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export MPLBACKEND=Agg
.venv/bin/python -m pytest tests plugins -q -p no:cacheprovider --durations=15 "$@"
