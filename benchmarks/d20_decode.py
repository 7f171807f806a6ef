"""What to expect from the published Recursive nanochat d20 (328M parameters) on this CPU: batch-1 greedy decoding of a
randomly initialised model of its shape (the `recursive-nanochat-d20` preset) at r = 2, 4, 8, with the fork's engine
settings (KV budget 1, warm start), a 64-token prompt and 32 new tokens.

    .venv/bin/python benchmarks/d20_decode.py [--recurrences 2,4,8] [--dtype fp32|bf16]
Prints the machine, then per r: new tokens per second (the prompt's prefill included), the KV cache's size and the
process's peak resident memory so far (with KV budget 1 neither grows with r).
"""

import argparse
import resource
import time

import torch
from common import machine

from recurlm.config import load_config
from recurlm.inference.engine import Engine
from recurlm.network.model import build_model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recurrences", default="2,4,8")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--new", type=int, default=32)
    args = p.parse_args()
    print(machine())
    configs = load_config("recursive-nanochat-d20")
    torch.manual_seed(0)
    model = build_model(configs.model).eval()
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    print(f"recursive-nanochat-d20: {params / 1e6:.0f}M parameters, {args.dtype}")
    engine = Engine(model)
    prompt = torch.randint(0, configs.model.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1))
    for r in map(int, args.recurrences.split(",")):
        policy = configs.inference.override(recurrences=r, temperature=0.0, kv_budget=1, warm_start=True)
        with torch.no_grad():
            state, _, _ = engine.start(prompt.tolist(), policy, max_len=64 + args.new)
            cache = state.cache
            cache_mb = cache.nbytes() / 2**20
            t0 = time.perf_counter()
            engine.generate(prompt.tolist(), args.new, policy)
            dt = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"r={r}: {args.new / dt:6.2f} tok/s, KV cache {cache_mb:.1f} MiB, peak RSS {peak_mb:.0f} MiB")


if __name__ == "__main__":
    main()
