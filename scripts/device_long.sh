#!/usr/bin/env bash
# The prepared call for a lent GPU machine (the `device` tool), issue #13: FER2013 at the longer schedule
# (reproduce_transfer.sh's step `long`: the full-face recipe for LONG_EPOCHS epochs, 30 unless set), stopped by
# SIGTERM at DEADLINE seconds (default 420) so that a slow machine still hands back an interrupted run's history;
# then the run folder's small files (recipe, run info, log, history, metrics) are copied to
# $OUT/fer2013_full_face_long, which comes back (checkpoints do not: 8 files at most, 16 MiB each).
# Here, first: bash scripts/device_pack.sh; then, with the device tool:
#   run(command="bash scripts/device_long.sh", carry=[".device"], timeout_s=600)
# and fold the returned folder into the report (FILES_AT: the reply's files_at):
#   .venv/bin/python scripts/make_results_13.py --transfer FILES_AT --multiseed /nonexistent --write docs/results.md
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT names the folder whose files come back (the device tool sets it)}"
DEADLINE=${DEADLINE:-420}
RUNS=${RUNS:-/tmp/fermetric-runs}
bash scripts/device_setup.sh || exit
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
timeout -s TERM "$DEADLINE" env STEPS=long OUT="$RUNS" bash scripts/reproduce_transfer.sh "$@"
rc=$?
.venv/bin/python - "$RUNS/fer2013_full_face_long" "$OUT/fer2013_full_face_long" <<'PY'
import shutil, sys, time
from pathlib import Path
from fermetric.errors import FermetricError
from fermetric.runfolder import RunFolder

run, back = RunFolder(Path(sys.argv[1])), RunFolder(Path(sys.argv[2]))
# timeout's SIGTERM ends the script at once, but fermetric first writes the run's final status: wait until it lets
# the folder go, or the copy would say "running".
for _ in range(120):
    try:
        with run.lock():
            break
    except FermetricError:
        time.sleep(1)
back.root.mkdir(parents=True, exist_ok=True)
for part in ("recipe_file", "run_file", "log_file", "history_file", "metrics_file"):
    if getattr(run, part).is_file():
        shutil.copy2(getattr(run, part), getattr(back, part))
print(f"device_long.sh: status {run.status()!r}, {len(run.history())} epochs; back in {back.root}:",
      ", ".join(sorted(p.name for p in back.root.iterdir())))
PY
echo "device_long.sh: step long exited $rc (124: stopped at DEADLINE=$DEADLINE s)"
exit "$rc"
