#!/usr/bin/env bash
# The prepared call for a lent GPU machine (the `device` tool), issue #13: FER2013 at the longer schedule
# (reproduce_transfer.sh's step `long`: the full-face recipe for LONG_EPOCHS epochs, 30 unless set; eval.knn off,
# since the machine has no faiss), stopped by SIGTERM at DEADLINE seconds (by default what is left of 520 s after
# the set-up, so the whole command ends inside the tool's 600 s) so that a slow machine still hands back an
# interrupted run's history. Then the run folder's small files (recipe, run info, log, history, metrics) are copied
# to $OUT/fer2013_full_face_<N>ep, which comes back; checkpoints do not (8 files at most, 16 MiB each).
# Here, first: bash scripts/device_pack.sh; then, with the device tool:
#   run(command="bash scripts/device_long.sh", carry=[".device"], timeout_s=600)
# and fold the returned folder into the report (FILES_AT: the reply's files_at):
#   .venv/bin/python scripts/make_results_13.py --transfer FILES_AT --multiseed /nonexistent --write docs/results.md
# Exit, from the run's own status: 0 finished; 3 interrupted, e.g. at DEADLINE (what it trained came back; not
# timeout's 124, which the tool reads as its own time-out); 1 anything else (failed, never began).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT names the folder whose files come back (the device tool sets it)}"
RUNS=${RUNS:-/tmp/fermetric-runs}
export LONG_EPOCHS=${LONG_EPOCHS:-30} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
bash scripts/device_setup.sh || exit
DEADLINE=${DEADLINE:-$((520 - SECONDS))}
# (timeout takes 0 as no limit at all.)
((DEADLINE > 0)) || { echo "device_long.sh: no time left after the set-up (${SECONDS} s)" >&2; exit 1; }
echo "device_long.sh: set-up took ${SECONDS} s; $LONG_EPOCHS epochs, stopped at $DEADLINE s if not done"
# reproduce_transfer.sh waits for fermetric to write its final status before it exits on the signal.
timeout -k 30 -s TERM "$DEADLINE" env STEPS=long OUT="$RUNS" bash scripts/reproduce_transfer.sh \
  --set eval.knn=false "$@"
rc=$?
.venv/bin/python - "$RUNS/fer2013_full_face_${LONG_EPOCHS}ep" "$OUT/fer2013_full_face_${LONG_EPOCHS}ep" <<'PY'
import shutil, sys, time
from pathlib import Path
from fermetric.errors import FermetricError
from fermetric.runfolder import RunFolder, Status

run, back = RunFolder(Path(sys.argv[1])), RunFolder(Path(sys.argv[2]))
if not run.run_file.is_file():
    raise SystemExit(f"device_long.sh: no run in {run.root}: the step stopped before it began (see above)")
for _ in range(20):  # a process still on the folder (killed by timeout -k, say): give it a moment
    try:
        with run.lock():
            break
    except FermetricError:
        time.sleep(1)
else:
    print("device_long.sh: warning: the run still holds its folder; its status may not be final", file=sys.stderr)
back.root.mkdir(parents=True, exist_ok=True)
for part in ("recipe_file", "run_file", "log_file", "history_file", "metrics_file"):
    if getattr(run, part).is_file():
        shutil.copy2(getattr(run, part), getattr(back, part))
print(f"device_long.sh: status {run.status()!r}, {len(run.history())} epochs; back in {back.root}:",
      ", ".join(sorted(p.name for p in back.root.iterdir())))
# The run's own status decides (it may finish just as the deadline strikes): 0 finished, 3 interrupted, else 1.
sys.exit({Status.FINISHED: 0, Status.INTERRUPTED: 3}.get(run.status(), 1))
PY
copied=$?
case $copied in
  0) exit 0 ;;
  3) echo "device_long.sh: stopped at DEADLINE=$DEADLINE s (step exit $rc); what it trained came back" >&2; exit 3 ;;
  *) echo "device_long.sh: step long exited $rc; see its log above" >&2; exit 1 ;;
esac
