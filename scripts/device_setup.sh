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
compgen -G ".device/wheels/*.whl" >/dev/null ||
  die "no wheels in .device/wheels: run bash scripts/device_pack.sh on your machine and carry .device"
if [ ! -x .venv/bin/python ]; then
  "$BASE" -c "import torch" 2>/dev/null || die "$BASE has no torch: set DEVICE_PYTHON to the Python that holds PyTorch"
  # Built aside and moved into place once whole, so that a failure half-way leaves no .venv to be taken as ready.
  rm -rf .venv.partial
  "$BASE" -m venv --without-pip .venv.partial
  # The machine's PyTorch stack (and pip) live in its own environment's site-packages, which a venv made from it
  # does not see (--system-site-packages reaches only the base interpreter's): add that folder, after the venv's
  # own, with its .pth files processed.
  site=$(.venv.partial/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$BASE" -c 'import site; print("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in dict.fromkeys(
      site.getsitepackages())))' > "$site/_device_base.pth"
  mv .venv.partial .venv
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
import importlib.metadata as metadata
from packaging.requirements import Requirement
import torch, timm, pytorch_metric_learning, fermetric
from fermetric.plugins import get_host

# What fermetric declares against what the machine has: a missing one is named here, not hours later. faiss-cpu,
# absent from the lent machines' image, only serves eval.knn (device_long.sh turns it off).
off = []
for line in metadata.requires("fermetric") or []:
    req = Requirement(line)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        off.append(f"{req.name} (missing)")
        continue
    if have not in req.specifier:
        off.append(f"{req.name} {have} (fermetric asks {req.specifier})")
if off:
    print("device_setup.sh: warning: not as fermetric declares:", "; ".join(off))
host = get_host()  # every built-in component must register, as in a full install
if host.problems:
    raise SystemExit(f"device_setup.sh: plugins failed to load: {host.problems}")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
print(f"device_setup.sh: torch {torch.__version__} ({gpu}), timm {timm.__version__},"
      f" pytorch-metric-learning {pytorch_metric_learning.__version__},"
      f" {sum(len(r.names()) for r in host.registries.values())} components, fermetric at {fermetric.__file__}")
PY
