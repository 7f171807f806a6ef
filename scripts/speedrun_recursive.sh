#!/usr/bin/env bash
# Recursive nanochat d20 and its plain 20-layer baseline through nanochat's pipeline, one command:
# BPE tokenizer -> pretrain -> midtrain -> SFT (`recurlm train` runs them in order, resuming where it stopped), under
# torchrun, then chat evaluation (the recursive model at r = 1, 2, 4, 8, 16) and a report over both runs.
#
#   scripts/speedrun_recursive.sh --text SHARDS [--bench DIR] [--nproc 8] [--out runs/speedrun]
#   scripts/speedrun_recursive.sh --smoke [--out DIR]     # tiny widths, a few steps, 2 CPU processes (gloo): CI
#
# SHARDS: local text (.parquet with a 'text' column, .jsonl or .txt, a file or a directory); nothing is downloaded.
# DIR (optional): benchmark files in their public formats, scored when present: arc_easy.jsonl,
# arc_challenge.jsonl, mmlu/ (csv), gsm8k.jsonl. Per-GPU batch 16 x 2048 with 2 accumulation steps keeps nanochat's
# 524,288 tokens per step on 8 GPUs; `python scripts/speedrun_plan.py` estimates each stage's time and memory.
set -euo pipefail
cd "$(dirname "$0")/.."

text="" bench="" nproc=8 out=runs/speedrun smoke=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --text) text="$2"; shift 2 ;;
        --bench) bench="$2"; shift 2 ;;
        --nproc) nproc="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --smoke) smoke=1; shift ;;
        *) echo "speedrun_recursive.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
    esac
done

[[ -x .venv/bin/recurlm ]] || bash scripts/setup.sh
py=.venv/bin/python
chat_tasks=arithmetic,two_step,even_odd,comparison,pattern,word_problem,sorting,spelling_bee
sets=(--set batch_size=16 --set grad_accum=2)
recurrences=1,2,4,8,16 limit=500 budget=()
if [[ $smoke == 1 ]]; then
    # The same stages and processes at a size CI trains in seconds, on a corpus written from the task generators;
    # validation at the stages' ends on 4 problems per task and difficulty (an untrained model writes to the budget).
    nproc=2 recurrences=1,4 limit=8 budget=(--max-new-tokens 16)  # an untrained model writes to the budget
    mkdir -p "$out"
    text="$out/corpus.jsonl"
    $py - "$text" <<'EOF'
import json, sys
from recurlm.tasks import get_task
with open(sys.argv[1], "w") as f:
    for name in ("word_problem", "arithmetic", "sorting"):
        for ex in get_task(name).generate("train", 100, seed=0):
            f.write(json.dumps({"text": ex.prompt + " " + ex.target}) + "\n")
EOF
    sets=(--set d_model=64 --set n_head=2 --set vocab_size=384 --set seq_len=128 --set batch_size=4
        --set stage.pretrain.steps=4 --set stage.midtrain.steps=3 --set stage.sft.steps=3
        --set eval_every=0 --set eval_n=4 --set ckpt_every=2 --set warmup_steps=1 --set log_every=1)
fi
[[ -n "$text" ]] || { echo "speedrun_recursive.sh: --text SHARDS is required (local pretraining text)" >&2; exit 2; }
[[ $smoke == 1 ]] || $py scripts/speedrun_plan.py --nproc "$nproc"

tasks=()
for name in ${chat_tasks//,/ }; do tasks+=(--task "$name"); done
if [[ -n "$bench" ]]; then
    for name in arc_easy arc_challenge gsm8k; do
        [[ -f "$bench/$name.jsonl" ]] && tasks+=(--task "$name:$bench/$name.jsonl")
    done
    [[ -d "$bench/mmlu" ]] && tasks+=(--task "mmlu:$bench/mmlu")
fi

for preset in recursive-nanochat-d20 nanochat-d20; do
    run="$out/$preset"
    echo "== $preset: tokenizer, pretrain, midtrain, SFT on $nproc processes -> $run"
    $py -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m recurlm.cli train --preset "$preset" \
        --set stage.pretrain.text="$text" "${sets[@]}" --out "$run" --resume
    r=$([[ $preset == nanochat-d20 ]] && echo 1 || echo "$recurrences")
    echo "== $preset: chat evaluation (test split) at r = $r"
    .venv/bin/recurlm eval --checkpoint "$run" "${tasks[@]}" --recurrences "$r" --split test --limit "$limit" \
        "${budget[@]}" --json "$run/eval.json"
done
.venv/bin/recurlm report "$out/recursive-nanochat-d20" "$out/nanochat-d20" --out "$out/report"
echo "== report: $out/report/report.md"
