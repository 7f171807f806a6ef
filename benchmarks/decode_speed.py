"""Cached greedy decoding throughput: batch 1 and batch 8, a 32-token prompt and 128 new tokens, at KV budget 1
with warm start (recursive nanochat's engine) and at budget r without it (exact).

    .venv/bin/python benchmarks/decode_speed.py [--repeats 3]
Prints the machine, then one line per setting: new tokens per second (median of the repeats; the prompt's
prefill included). Figures vary by +-15% run to run on shared CPUs: compare runs made back to back.
"""

import argparse
import platform
import statistics
import time

import torch

from recurlm.config import InferencePolicy, ModelConfig, load_config
from recurlm.engine import Engine
from recurlm.model import build_model

# The reference table's setting (README "Speed"): (P,R,C) = (2,4,2), width 256, head dim 128, vocab 8192.
REFERENCE = ModelConfig(vocab_size=8192, seq_len=256, d_model=256, n_head=2, n_prelude=2, n_core=4, n_coda=2)


def machine() -> str:
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    bf16 = "AVX512-BF16" if "avx512_bf16" in flags else "no AVX512-BF16"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, {bf16}, torch {torch.__version__}"


def bench(name: str, cfg: ModelConfig, r: int, repeats: int, prompt_len: int = 32, new: int = 128):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # untrained output projections are zero: perturb them so the blocks do real work
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    engine = Engine(model, set(range(10)) if cfg.abacus else None)
    n = min(new, cfg.seq_len - prompt_len)
    for batch in (1, 8):
        prompts = torch.randint(0, cfg.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
        for budget, warm in ((1, True), (r, False)):
            policy = InferencePolicy(recurrences=r, kv_budget=budget, warm_start=warm)
            engine.generate(prompts.tolist(), 4, policy)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                engine.generate(prompts.tolist(), n, policy)
                times.append(time.perf_counter() - t0)
            tps = batch * n / statistics.median(times)
            print(f"{name:<24} r={r} batch {batch} kv_budget {budget:<2} warm {warm!s:<5} {tps:9.1f} tok/s", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(machine())
    bench("(2,4,2) width 256", REFERENCE, 4, args.repeats)
    mini = load_config("miniaxion-0.9m")
    bench("miniaxion-0.9m", mini["model"], mini["inference"].recurrences, args.repeats)


if __name__ == "__main__":
    main()
