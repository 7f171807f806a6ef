"""The full-scale speedrun's script, run end to end at smoke size (2 processes with gloo), and its cost plan."""

import json
import subprocess
import sys
from pathlib import Path

from recurlm.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from speedrun_plan import SPEEDRUN, plan  # noqa: E402


def test_smoke_speedrun_trains_every_stage_on_two_ranks_and_scores_both_models(tmp_path):
    out = tmp_path / "speedrun"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "speedrun_recursive.sh"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for preset, recurrences in (("recursive-nanochat-d20", {1, 4}), ("nanochat-d20", {1})):
        run = out / preset
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [row for row in rows if "loss" in row]
        assert [row["stage"] for row in steps] == ["pretrain"] * 4 + ["midtrain"] * 3 + ["sft"] * 3
        assert all(row["tokens"] % 2 == 0 for row in steps)  # two ranks' rows counted
        model, _, configs = load_checkpoint(run)
        assert bool(model.core) == (preset == "recursive-nanochat-d20") and configs.model.d_model == 64
        results = json.loads((run / "eval.json").read_text())["results"]
        assert {row["recurrences"] for row in results} == recurrences
        assert {row["task"] for row in results} >= {"arithmetic", "sorting", "spelling_bee"}
    assert (out / "report" / "report.md").is_file()


def test_plan_keeps_nanochats_step_and_fits_an_80_gb_gpu():
    overrides = SPEEDRUN  # what the script runs with
    for preset in ("recursive-nanochat-d20", "nanochat-d20"):
        rows = plan(preset, nproc=8, peak_tflops=989, mfu=0.4, overrides=overrides)
        pretrain = rows[0]
        assert pretrain["stage"] == "pretrain" and pretrain["tokens"] == pretrain["steps"] * 524_288
        assert all(row["memory_gb"] < 80 for row in rows)
        assert 2.5e9 < pretrain["train_flops_per_token"] < 4e9  # ~3 x the ~1.1 GFLOP forward at r = 4
    full = plan("recursive-nanochat-d20", nproc=8, peak_tflops=989, mfu=0.4)[0]  # batch 32: activations double
    assert full["activations_gb"] == 2 * plan("recursive-nanochat-d20", 8, 989, 0.4, overrides)[0]["activations_gb"]
