"""What the full-scale speedrun (scripts/speedrun_recursive.sh) will cost: per preset and stage, the tokens, the
training FLOPs, the time on N GPUs at an assumed model-FLOPs utilisation, and each GPU's memory for the training
step. These are estimates from the configs (no GPU is used), printed as a markdown table.

Training FLOPs per token are the forward at the training mean r plus twice the forward of the layer passes that
backpropagate (truncated BPTT: the last bptt_k recurrences). Memory counts fp32 weights and gradients, the
optimizer's state (Muon: one momentum buffer for block matrices; AdamW: two moments for the rest), the activations
kept for backward (about 34 bytes per token, width unit and backpropagated layer pass with bf16 autocast and flash
attention: Korthikanti et al. 2022) and the logits (bf16, their fp32 soft-capped copy and its gradient).

    python scripts/speedrun_plan.py [--nproc 8] [--peak-tflops 989] [--mfu 0.4] [--set KEY=VALUE ...]

(at the script's batch, 16 x 2048 per GPU with 2 accumulation steps, unless --set changes it)
"""

import argparse

from recurlm.config import load_config
from recurlm.network.model import build_model

PRESETS = ("recursive-nanochat-d20", "nanochat-d20")
SPEEDRUN = ["batch_size=16", "grad_accum=2"]  # the script's batch: nanochat's 524,288 tokens per step on 8 GPUs
GB = 1e9


def plan(preset: str, nproc: int, peak_tflops: float, mfu: float, overrides=()) -> list[dict]:
    configs = load_config(preset, overrides=list(overrides))
    mcfg, tcfg, rec = configs.model, configs.train, configs.recurrence
    model = build_model(mcfg, device="meta")  # shapes only: nothing allocated
    r = max(1, round(rec.mean)) if model.core else 1
    kept = min(r, rec.bptt_k) if model.core and rec.bptt_k else r  # recurrences that backpropagate
    forward = model.flops_per_token(r)
    per_layer = (forward - 2 * mcfg.vocab_size * mcfg.d_model) / model.effective_depth(r)
    train_flops = forward + 2 * (forward - per_layer * mcfg.n_core * (r - kept))
    params = model.param_groups()["unique"]
    block_matrices = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "wte" not in n)
    optimizer = 4 * (block_matrices + 2 * (params - block_matrices)) if tcfg.optimizer == "muon" else 8 * params
    rows = []
    for name, stage in configs.stages.items():
        seq = stage.seq_len or mcfg.seq_len
        tokens_per_gpu = tcfg.batch_size * tcfg.grad_accum * seq  # per optimizer step
        layer_passes = mcfg.n_prelude + mcfg.n_coda + mcfg.n_core * kept
        micro_tokens = tcfg.batch_size * seq
        activations = 34 * micro_tokens * mcfg.d_model * layer_passes
        logits = micro_tokens * mcfg.vocab_size * (2 + 4 + 4)
        tokens = stage.steps * tokens_per_gpu * nproc
        seconds = tokens * train_flops / (nproc * peak_tflops * 1e12 * mfu)
        rows.append(
            {
                "preset": preset,
                "stage": name,
                "steps": stage.steps,
                "tokens": tokens,
                "train_flops_per_token": train_flops,
                "minutes": seconds / 60,
                "memory_gb": (8 * params + optimizer + activations + logits) / GB,
                "activations_gb": activations / GB,
            }
        )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=8)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="per GPU, bf16 dense (H100 SXM: 989)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation")
    ap.add_argument("--set", action="append", default=[], help="a config override for both presets")
    args = ap.parse_args()
    args.set = SPEEDRUN + args.set
    print(f"Estimates for {args.nproc} GPUs at {args.peak_tflops:g} TFLOP/s and {args.mfu:.0%} MFU (not measured)\n")
    print("| preset | stage | steps | tokens | train GFLOP/token | est. minutes | est. GB per GPU (activations) |")
    print("|---|---|---|---|---|---|---|")
    for preset in PRESETS:
        for row in plan(preset, args.nproc, args.peak_tflops, args.mfu, args.set):
            print(
                f"| {row['preset']} | {row['stage']} | {row['steps']:,} | {row['tokens'] / 1e9:.2f} B | "
                f"{row['train_flops_per_token'] / 1e9:.2f} | {row['minutes']:.0f} | "
                f"{row['memory_gb']:.0f} ({row['activations_gb']:.0f}) |"
            )


if __name__ == "__main__":
    main()
