#!/usr/bin/env bash
# On a lent GPU machine (the `device` tool: no network, its own Python with PyTorch, CUDA and most of fermetric's
# dependencies): a .venv over that Python's packages, plus the wheels that scripts/device_pack.sh carried in
# .device/wheels and fermetric itself (editable, nothing fetched), and FER2013 unpacked where the recipes look for
# it (../shared/data beside the checkout). Afterwards the repo's scripts (gpu_check.sh, reproduce_transfer.sh) run
# there as they do here. Idempotent. DEVICE_PYTHON names the machine's Python (python3 unless set).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "${0##*/}: $*" >&2; exit 2; }
BASE=${DEVICE_PYTHON:-python3}
[ -d .device/wheels ] || die "no .device/wheels: run bash scripts/device_pack.sh on your machine and carry .device"
"$BASE" -c "import torch" 2>/dev/null || die "$BASE has no torch: set DEVICE_PYTHON to the Python that holds PyTorch"
if [ ! -x .venv/bin/python ]; then
  "$BASE" -m venv --without-pip .venv
  # The machine's PyTorch stack lives in its own environment's site-packages, which a venv made from it does not
  # see (--system-site-packages reaches only the base interpreter's): add that folder, after the venv's own, with
  # its .pth files processed.
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$BASE" -c 'import site, sys; print("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in dict.fromkeys(
      site.getsitepackages())))' > "$site/_device_base.pth"
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q install --no-index --no-deps --no-warn-conflicts)
"${PIP[@]}" .device/wheels/*.whl
"${PIP[@]}" --no-build-isolation -e .
if [ ! -f ../shared/data/fer2013/manifest.csv ]; then
  [ -f .device/fer2013.tar.gz ] || die "no FER2013: neither ../shared/data/fer2013 nor .device/fer2013.tar.gz"
  mkdir -p ../shared/data
  tar -C ../shared/data -xzf .device/fer2013.tar.gz
fi
.venv/bin/python - <<'PY'
import torch, timm, pytorch_metric_learning, fermetric
from fermetric.plugins import get_host
host = get_host()  # every built-in component must register, as in a full install
if host.problems:
    raise SystemExit(f"device_setup.sh: plugins failed to load: {host.problems}")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
print(f"device_setup.sh: torch {torch.__version__} ({gpu}), timm {timm.__version__},"
      f" pytorch-metric-learning {pytorch_metric_learning.__version__},"
      f" {sum(len(r.names()) for r in host.registries.values())} components, fermetric at {fermetric.__file__}")
PY
