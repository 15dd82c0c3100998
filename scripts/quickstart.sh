#!/usr/bin/env bash
# Set everything up, then train and evaluate the bundled default recipe on synthetic faces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/fermetric run recipes/quickstart.toml --out runs/quickstart --resume "$@"
