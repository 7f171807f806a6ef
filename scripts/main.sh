#!/usr/bin/env bash
# The main job: train the rrslm-addition preset on CPU with its 1 -> 2 -> 3 digit curriculum, score held-out
# (test-split) problems of each length at r = 1, 2, 4, 5 (trained) and 8, then with adaptive exit capped at r = 8,
# and write runs/rrslm-addition/report/ (report.md and PNG plots). Re-running resumes (or skips) the training run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run=runs/rrslm-addition
.venv/bin/recurlm train --preset rrslm-addition --out "$run" --resume
.venv/bin/recurlm eval --checkpoint "$run" --task addition --recurrences 1,2,4,5,8 --exit none --limit 500 \
    --json "$run/eval.json"
.venv/bin/recurlm eval --checkpoint "$run" --task addition --recurrences 8 --limit 500 \
    --exit latent:0.3 --exit latent:0.2 --exit kl:0.01 --exit kl:0.001 --exit kl:0.00001 --json "$run/eval-exit.json"
.venv/bin/recurlm report "$run"
