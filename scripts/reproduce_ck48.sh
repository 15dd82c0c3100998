#!/usr/bin/env bash
# Reproduce the CK+48 results of docs/results.md (issue #4): the {full_face, au_partial} x {CE, CE+EMLF} grid,
# then CE+triplet and CE+center on the au_partial crop, then the EMLF parameters tried, then a larger budget,
# then a pretrained backbone at 48x48 and at 96x96, then the report. Resumable: run it again after an
# interruption and finished runs are skipped, the unfinished one continues from its last checkpoint.
#   bash scripts/reproduce_ck48.sh                 # writes runs/reproduce_ck48/<step> and docs/results.md
#   OUT=runs/other bash scripts/reproduce_ck48.sh  # another output folder
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/reproduce_ck48}"
FERMETRIC=.venv/bin/fermetric
RECIPE=recipes/pidml/base.toml
mkdir -p "$OUT"

stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }
echo "reproduce_ck48: start $(stamp)" | tee -a "$OUT/timing.log"

# a. the 2x2 grid: crop x (CE alone = emlf weight 0, CE + EMLF = weight 0.5); baseline full_face + CE
"$FERMETRIC" ablate "$RECIPE" \
  --grid crop.name=full_face,au_partial \
  --grid loss.1.weight=0,0.5 \
  --baseline crop.name=full_face,loss.1.weight=0 \
  --out "$OUT/grid"
echo "reproduce_ck48: grid done $(stamp)" | tee -a "$OUT/timing.log"

# b. the other metric losses in EMLF's place, on the recipe's au_partial crop (same train.seed, so same folds)
"$FERMETRIC" ablate "$RECIPE" \
  --grid 'loss.1={name="triplet",weight=0.5,margin=0.2,miner="batch_hard"},{name="center",weight=0.01,lr=0.05}' \
  --out "$OUT/losses"
echo "reproduce_ck48: losses done $(stamp)" | tee -a "$OUT/timing.log"

# c. the EMLF parameters tried after (a) showed the defaults hurting: weight and positive margin, CE alone as baseline
bash scripts/reproduce_ck48_emlf_sweep.sh
echo "reproduce_ck48: emlf sweep done $(stamp)" | tee -a "$OUT/timing.log"

# d. a larger budget (wider CNN, twice the epochs): CE alone against the best EMLF setting of (c)
bash scripts/reproduce_ck48_budget.sh
echo "reproduce_ck48: budget done $(stamp)" | tee -a "$OUT/timing.log"

# e. an ImageNet-pretrained MobileNetV2 backbone: CE alone against CE + EMLF
bash scripts/reproduce_ck48_pretrained.sh
echo "reproduce_ck48: pretrained done $(stamp)" | tee -a "$OUT/timing.log"

# f. the pretrained backbone with the partial image upsampled to 96x96 and flip test-time augmentation
bash scripts/reproduce_ck48_pretrained96.sh
echo "reproduce_ck48: pretrained96 done $(stamp)" | tee -a "$OUT/timing.log"

# g. the report (with the FER2013 runs of scripts/reproduce_fer2013.sh when their folders exist)
.venv/bin/python scripts/make_results.py "$OUT" > docs/results.md.tmp
mv docs/results.md.tmp docs/results.md
echo "reproduce_ck48: report written to docs/results.md $(stamp)" | tee -a "$OUT/timing.log"
