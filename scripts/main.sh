#!/usr/bin/env bash
# The main job: train the rrslm-addition preset on CPU with its 1 -> 2 -> 3 digit curriculum, then score held-out
# (test-split) problems of each length at r = 1, 2, 4, 8 (and the default 5) and print the recurrence-scaling table.
# Re-running resumes (or skips) the training run in runs/rrslm-addition.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run=runs/rrslm-addition
.venv/bin/recurlm train --preset rrslm-addition --out "$run" --resume
.venv/bin/recurlm eval --checkpoint "$run" --task addition --recurrences 1,2,4,5,8 --limit 500 --json "$run/eval.json"
