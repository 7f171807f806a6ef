"""Training throughput on this machine: fp32 vs bf16 autocast, eager vs torch.compile (blocks compiled, the
recurrence loop eager so a new r does not recompile). Decoding: benchmarks/decode_speed.py.

    .venv/bin/python benchmarks/train_speed.py [--preset rrslm-addition] [--steps 8] [--compile]
Prints one line per setting: median ms per step and tokens/s. Figures vary +-25% run to run on shared CPUs.
"""

import argparse
import statistics
import time

import torch

from recurlm.config import load_config
from recurlm.evaluate import loss_on
from recurlm.model import build_model
from recurlm.train import compile_blocks


def time_steps(model, x, y, r, amp, steps, digit_pos, bptt_k):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_on(model, x, y, r, digit_pos, bptt_k)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:  # the first steps warm up allocators (and compile)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="rrslm-addition")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=0, help="sequence length (default: the preset's context)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd blocks (slow to start)")
    args = p.parse_args()
    configs = load_config(args.preset, overrides=args.set)
    cfg, bptt_k = configs["model"], configs["recurrence"].bptt_k
    T, r = args.seq or cfg.seq_len, configs["inference"].recurrences
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, T))
    digits = torch.zeros_like(x) if cfg.abacus else None
    print(f"{args.preset}: batch {args.batch} x {T} tokens, r = {r}, {torch.get_num_threads()} threads")
    settings = [("fp32", False, False), ("bf16", True, False)]
    if args.compile:
        settings += [("fp32+compile", False, True), ("bf16+compile", True, True)]
    for name, amp, compiled in settings:
        model = build_model(cfg)
        if compiled:
            compile_blocks(model)
        dt = time_steps(model, x, x, r, amp, args.steps, digits, bptt_k)
        print(f"  train {name:<14} {dt * 1000:8.1f} ms/step {args.batch * T / dt:10,.0f} tok/s")


if __name__ == "__main__":
    main()
