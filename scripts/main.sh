#!/usr/bin/env bash
# The main job. For now: the presets table and a generation from a random rrslm-addition model, with the
# recurrences each token used. (Training and the recurrence-scaling table come with the training issue.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/recurlm presets
.venv/bin/recurlm generate --preset rrslm-addition --prompt "12+34=" --max-new-tokens 6 --show-steps --exit latent:0.5
