"""Training throughput on this machine against its own matmul peak: fp32 and bf16 autocast, eager and compiled
(`torch.compile` per block; the recurrence loop stays eager, so a new r must not recompile).

    .venv/bin/python benchmarks/train_speed.py [--presets rrslm-addition,miniaxion-0.9m] [--steps 6] [--compile]
        [--profile] [--json F]

The reference setting ((P,R,C) = (2,4,2), r = 4, width 256, head dim 128, vocab 8192, batch 8 x 256, AdamW) comes
first, then each preset at its own r (batch capped at 8 x 256 tokens). Per setting, its modes taking their steps in
turn: median ms per step, tokens/s, achieved GFLOP/s (3 x the forward FLOPs per token, `flops_per_token`) and its
share of the matmul peak of the same dtype measured in this run; compiled settings add the compile time and the
graphs compiled when r changes; eager bf16 prints the attention kernel it timed faster in the model.
`--profile` then shows where a bf16 step of the reference setting spends its time (torch.profiler).
`--attention` times causal attention alone, forward and backward, eager and compiled: the CPU flash kernel (SDPA)
against the written-out form `model.attend` uses for bf16 contexts of at most 256 positions.
"""

import argparse
import json
import statistics
import time

import torch
from common import machine, matmul_peak, op_profile, timed_attention

from recurlm.config import ModelConfig, load_config
from recurlm.network.model import build_model, written_out_causal_attention
from recurlm.training.trainer import compile_blocks

REFERENCE = ModelConfig(vocab_size=8192, seq_len=256, d_model=256, n_head=2, n_prelude=2, n_core=4, n_coda=2)


def step(model, opt, x, r, amp, digit_pos, bptt_k) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = model(x, r, digit_pos=digit_pos, bptt_k=bptt_k, targets=x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def prepare(name, cfg, r, batch, T, bptt_k, compiled, amp) -> dict:
    """A setting ready to step: its model and optimiser, compiled and warmed up."""
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (batch, T))
    digits = torch.zeros_like(x) if cfg.abacus else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    row = dict(setting=name, dtype="bf16" if amp else "fp32", compiled=compiled, r=r, tokens_per_step=batch * T)
    if amp and not compiled:  # as `recurlm train` does: both attention kernels timed in the model
        row["attention"] = timed_attention(model, lambda: model(x, r, digit_pos=digits, bptt_k=bptt_k, targets=x))
    if compiled:
        compile_blocks(model)
        row["compile_s"] = step(model, opt, x, r, amp, digits, bptt_k)
        before = graphs()
        step(model, opt, x, r + 2, amp, digits, bptt_k)  # a new r between steps must reuse the compiled blocks
        row["graphs_on_new_r"] = graphs() - before
    else:
        step(model, opt, x, r, amp, digits, bptt_k)  # allocator warm-up
    return dict(row=row, step=lambda: step(model, opt, x, r, amp, digits, bptt_k), model=model)


def bench(case, modes, steps, peak) -> list[dict]:
    """Every mode of one setting, their steps taken in turn (this machine's speed drifts within a minute, and the
    ratios between modes are what the table reads): median ms per step of each."""
    name, cfg, r, batch, T, bptt_k = case
    runs = [prepare(name, cfg, r, batch, T, bptt_k, compiled, amp) for compiled, amp in modes]
    times = [[] for _ in runs]
    for _ in range(steps):
        for run, t in zip(runs, times, strict=True):
            t.append(run["step"]())
    rows = []
    for run, t in zip(runs, times, strict=True):
        row, dt = run["row"], statistics.median(t)
        tps = batch * T / dt
        gflops = 3 * run["model"].flops_per_token(r, T) * tps / 1e9
        row.update(ms_per_step=dt * 1000, tok_s=tps, gflops=gflops, peak_share=gflops / peak[row["dtype"]])
        label = f"{row['dtype']}{' +compile' if row['compiled'] else ''}"
        extra = (f", compile {row['compile_s']:.0f} s, graphs on a new r: {row['graphs_on_new_r']}"
                 if row["compiled"] else row.get("attention", ""))  # fmt: skip
        print(f"  {name:<34} {label:<13} {dt * 1000:8.1f} ms/step {tps:8,.0f} tok/s {gflops:6.1f} GFLOP/s "
              f"({100 * row['peak_share']:.0f}% of peak){extra}", flush=True)  # fmt: skip
        rows.append(row)
    return rows


def sdpa_causal(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def attention_speed(repeats: int = 10) -> list[dict]:
    """ms per forward + backward of causal attention, (B, H, T, D) shapes of the reference setting and longer."""
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for B, H, T, D in ((8, 2, 256, 128), (8, 4, 128, 64), (4, 2, 512, 128), (2, 2, 1024, 128)):
            row = dict(dtype=str(dtype).removeprefix("torch."), shape=[B, H, T, D])
            for name, fn in (("sdpa", sdpa_causal), ("written_out", written_out_causal_attention)):
                for compiled in (False, True):
                    f = torch.compile(fn, dynamic=False) if compiled else fn
                    q, k, v = (torch.randn(B, H, T, D, dtype=dtype, requires_grad=True) for _ in range(3))
                    run = lambda: f(q, k, v).float().square().mean().backward()  # noqa: B023, E731
                    run()
                    t0 = time.perf_counter()
                    for _ in range(repeats):
                        run()
                    row[f"{name}{' compiled' if compiled else ''}_ms"] = (time.perf_counter() - t0) / repeats * 1000
            rows.append(row)
            times = "  ".join(f"{k.removesuffix('_ms')} {v:6.2f}" for k, v in row.items() if k.endswith("_ms"))
            print(f"  attention {row['dtype']:<8} {B}x{H}x{T}x{D:<4} ms fwd+bwd: {times}", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="rrslm-addition,miniaxion-0.9m,addition-length")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--compile", action="store_true", help="also compiled (minutes of compile time each)")
    p.add_argument("--profile", action="store_true", help="then profile a bf16 step of the reference setting")
    p.add_argument("--attention", action="store_true", help="then time attention alone: flash against written out")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    print(machine())
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak (2048^3): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    cases = [("reference (2,4,2) w256 8x256", REFERENCE, 4, 8, 256, 0)]
    for name in filter(None, args.presets.split(",")):
        configs = load_config(name)
        cfg, T = configs.model, min(configs.model.seq_len, 256)
        batch = max(1, min(configs.train.batch_size, 8 * 256 // T))
        cases.append((f"{name} {batch}x{T}", cfg, configs.inference.recurrences, batch, T,
                      configs.recurrence.bptt_k))  # fmt: skip
    rows = []
    modes = [(False, False), (False, True)] + ([(True, False), (True, True)] if args.compile else [])
    for case in cases:
        rows += bench(case, modes, args.steps, peak)
    profiles = {}
    if args.profile:
        for compiled in (False, True) if args.compile else (False,):
            torch.manual_seed(0)
            model = build_model(REFERENCE)
            if compiled:
                compile_blocks(model)
            x, opt = torch.randint(0, REFERENCE.vocab_size, (8, 256)), torch.optim.AdamW(model.parameters(), lr=1e-4)
            label = f"a bf16{' compiled' if compiled else ''} training step, reference setting"
            profiles[label] = op_profile(lambda: step(model, opt, x, 4, True, None, 0), label)  # noqa: B023
    attention = attention_speed() if args.attention else []
    if args.json:
        figures = {
            "machine": machine(),
            "peak_gflops": peak,
            "rows": rows,
            "profiles": profiles,
            "attention": attention,
        }
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
