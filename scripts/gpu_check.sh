#!/usr/bin/env bash
# One script for a machine with a CUDA GPU (issue #11): the GPU-marked tests, then one epoch of FER2013 at 48 and
# at 96 px (bf16 autocast where the GPU has it, channels_last, torch.compile off and on), with images/s, the data
# share of an epoch and peak GPU memory, all written to one JSON file.
#   bash scripts/gpu_check.sh            # -> runs/gpu_check/gpu_check.json (OUT=... to change)
# Needs ../shared/data/fer2013 for the epochs (the tests run without it). Set-up as for the quick start.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
if [ ! -x .venv/bin/python ]; then
  # A lent device machine has no network: scripts/device_setup.sh installs what device_pack.sh carried instead.
  if [ -d .device ]; then bash scripts/device_setup.sh; else bash scripts/bootstrap.sh; fi
fi
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here: nothing to check')"
export MPLBACKEND=Agg
set +e
.venv/bin/python -m pytest tests -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" | tee "$OUT/gpu_tests.txt"
TESTS_RC=${PIPESTATUS[0]}
set -e
RECIPE=recipes/pidml/fer2013_mobilenet_pretrained.toml
for SIZE in 48 96; do
  for COMPILE in false true; do
    NAME="fer2013_${SIZE}px_compile_${COMPILE}"
    rm -rf "$OUT/$NAME"
    .venv/bin/fermetric run "$RECIPE" --out "$OUT/$NAME" --set train.epochs=1 --set crop.size="$SIZE" \
      --set train.compile="$COMPILE" --set train.device='"cuda"' --set eval.tsne=false --set eval.knn=false \
      --set eval.tta='"none"' 2>&1 | tail -3
  done
done
.venv/bin/python - "$OUT" "$TESTS_RC" <<'PY'
import json, sys
from pathlib import Path
import torch
from fermetric.runfolder import RunFolder
out, tests_rc = Path(sys.argv[1]), int(sys.argv[2])
report = {"gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
          "torch": torch.__version__, "cuda": torch.version.cuda, "gpu_tests_exit_code": tests_rc,
          "gpu_tests": (out / "gpu_tests.txt").read_text().strip().splitlines()[-1:], "epochs": []}
for folder in sorted(p for p in out.iterdir() if p.is_dir()):
    run = RunFolder(folder)
    info, history = run.run_info() or {}, run.history()
    if not history:
        continue
    row = history[-1]
    report["epochs"].append({
        "config": folder.name, "images_per_s": float(row["images_per_s"]), "epoch_seconds": float(row["seconds"]),
        "data_share": float(row["data_seconds"]) / float(row["seconds"]) if row.get("data_seconds") else None,
        "gpu_peak_memory_mb": info.get("gpu_peak_memory_mb"), "test_accuracy": (run.metrics() or {}).get("accuracy"),
        "amp": info.get("device"), "status": info.get("status"),
    })
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
PY
