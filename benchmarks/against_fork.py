"""recurlm side by side with the public recursive nanochat fork (TrelisResearch/nanochat, branch `recursive`), in
one process on this machine, at the reference setting: (P,R,C) = (2,4,2), r = 4, width 256, head dim 128, vocab
8192, batch 8 x 256, AdamW.

    git clone -b recursive https://github.com/TrelisResearch/nanochat fork   # its source, given by path
    .venv/bin/python benchmarks/against_fork.py --fork fork [--steps 6] [--tokens 128] [--no-compile] [--json F]

The fork is not a dependency and nothing of it is copied here: its GPT and Engine are imported from the path as
they are (its tokenizer back-ends `rustbpe` and `tiktoken`, which neither calls, are stubbed when missing). Both
models get the same weights (the fork's, converted by recurlm's nanochat importer), so greedy decoding can be
compared token for token.

Rows: training tokens/s, eager and compiled (the fork: `torch.compile` of the model at a fixed r; recurlm: each
block and the loss, the loop eager), fp32 and bf16 autocast, median of `--steps` steps the two sides take in turn
(this machine's speed drifts within a minute); batch-1 greedy decoding of `--tokens` tokens after a 32-token prompt
at r = 4 (the fork's Engine: KV budget 1 and warm start; recurlm's eager engine with the same policy, and its
compiled step), median of 3 runs in turn, and how many tokens agree with the fork's. recurlm's eager bf16 row first
chooses its attention kernel as `recurlm train` does, by timing both in the model.
"""

import argparse
import importlib
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from common import machine, matmul_peak, timed_attention

from recurlm.config import InferencePolicy
from recurlm.importers.nanochat import recurlm_configs, recurlm_state_dict
from recurlm.inference.engine import Engine
from recurlm.machine import cpu_has_bf16
from recurlm.network.model import build_model, writes_out_attention
from recurlm.training.trainer import compile_blocks

SETTING = dict(sequence_len=256, vocab_size=8192, n_layer=8, n_head=2, n_kv_head=2, n_embd=256, n_prelude=2,
               n_recur_block=4, n_coda=2, train_recur_mean=4.0, train_recur_max=16, bptt_k=4)  # fmt: skip


def import_fork(path: Path):
    """The fork's gpt and engine modules, imported from its source tree."""
    if not (path / "nanochat" / "gpt.py").is_file():
        sys.exit(f"error: no nanochat/gpt.py under {path}: give the fork's checkout (branch recursive) with --fork")
    for name in ("rustbpe", "tiktoken"):  # tokenizer back-ends the model and engine never call
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(path))
    return importlib.import_module("nanochat.gpt"), importlib.import_module("nanochat.engine")


class NoTokenizer:
    """What the fork's Engine asks of a tokenizer: special-token ids, here ones no model emits."""

    def encode_special(self, name):
        return -1

    def get_bos_token_id(self):
        return -1


def models(gpt):
    """The fork's GPT with perturbed weights (its init zeroes the output projections), and recurlm's with the same."""
    torch.manual_seed(0)
    fork = gpt.GPT(gpt.GPTConfig(**SETTING))
    fork.init_weights()
    with torch.no_grad():
        for p in fork.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = build_model(recurlm_configs(SETTING).model)
    ours.load_state_dict(recurlm_state_dict(fork.state_dict(), SETTING["n_head"], SETTING["n_kv_head"]))
    return fork, ours


def train_step(fn, params, amp: bool) -> float:
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return step


def training(gpt, steps: int, compile: bool) -> list[dict]:
    x = torch.randint(0, SETTING["vocab_size"], (8, 256), generator=torch.Generator().manual_seed(1))
    rows = []
    for compiled in (False, True) if compile else (False,):
        for amp in (False, True):
            fork, ours = models(gpt)
            fork_fwd = torch.compile(fork, dynamic=False) if compiled else fork
            if compiled:
                compile_blocks(ours)
            sides = {
                "fork": train_step(lambda f=fork_fwd: f(x, targets=x, num_recur=4), fork.parameters(), amp),
                "recurlm": train_step(lambda m=ours: m(x, 4, bptt_k=4, targets=x), ours.parameters(), amp),
            }
            row = {"row": f"train {'compiled' if compiled else 'eager'} {'bf16' if amp else 'fp32'}"}
            if amp and not compiled:  # as `recurlm train` does: both attention kernels timed in the model
                row["recurlm attention"] = timed_attention(ours, lambda m=ours: m(x, 4, bptt_k=4, targets=x))
            for step in (*sides.values(), *sides.values()):  # compilation, allocator warm-up
                step()
            times = {side: [] for side in sides}
            for _ in range(steps):  # in turn: the machine's speed drifts within a minute
                for side, step in sides.items():
                    times[side].append(step())
            for side in sides:
                row[side] = x.numel() / statistics.median(times[side])
            rows.append(row)
            print(f"  {row['row']:<24} fork {row['fork']:8,.0f} tok/s  recurlm {row['recurlm']:8,.0f} tok/s  "
                  f"({row['recurlm'] / row['fork']:.2f}x){row.get('recurlm attention', '')}", flush=True)  # fmt: skip
    return rows


def decoding(gpt, engine_module, tokens: int, compile: bool) -> list[dict]:
    fork, ours = models(gpt)
    fork.eval()
    ours.eval()
    prompt = torch.randint(0, SETTING["vocab_size"], (32,), generator=torch.Generator().manual_seed(2)).tolist()
    fork_engine = engine_module.Engine(fork, NoTokenizer())

    def fork_run():
        out = []
        for column, _ in fork_engine.generate(prompt, num_samples=1, max_tokens=tokens, temperature=0.0, num_recur=4):
            out.append(column[0])
        return out

    policy = InferencePolicy(recurrences=4, kv_budget=1, warm_start=True)
    sides = {"fork": fork_run, "recurlm": lambda: Engine(ours).generate([prompt], tokens, policy).tokens[0]}
    if compile:
        compiled = Engine(ours, compile=True)
        sides["recurlm compiled step"] = lambda: compiled.generate([prompt], tokens, policy).tokens[0]
    row, outs = {"row": f"decode batch 1, r = 4, budget 1 + warm start, {tokens} tokens"}, {}
    times = {side: [] for side in sides}
    with torch.no_grad():
        for run in sides.values():
            run()  # warm-up (and compilation)
        for _ in range(3):  # in turn, as the training steps
            for side, run in sides.items():
                t0 = time.perf_counter()
                outs[side] = run()
                times[side].append(time.perf_counter() - t0)
    for side in sides:
        row[side] = tokens / statistics.median(times[side])
    for side in sides:
        same = sum(a == b for a, b in zip(outs[side], outs["fork"], strict=True))
        row[f"{side} same tokens"] = same
        print(f"  {row['row']:<24} {side:<22} {row[side]:7.1f} tok/s ({row[side] / row['fork']:.2f}x), "
              f"{same}/{tokens} tokens as the fork's", flush=True)  # fmt: skip
    return [row]


def paths() -> str:
    """Which kernels recurlm takes on this machine at the reference setting (bf16 autocast)."""
    q = torch.zeros(8, 2, 256, 128, dtype=torch.bfloat16)
    compiled = "written out" if writes_out_attention(q) else "SDPA (flash)"
    muon = "torch's (bf16)" if cpu_has_bf16() else "Fp32Muon"
    return (f"bf16 causal attention {compiled} when compiled, eager the faster timed in the model (its row); "
            f"fp32 attention SDPA; Muon orthogonalising: {muon}")  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fork", required=True, help="the fork's source tree (branch recursive)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    gpt, engine_module = import_fork(Path(args.fork))
    print(machine())
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak (2048^3): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"recurlm's paths: {paths()}")
    rows = training(gpt, args.steps, not args.no_compile) + decoding(gpt, engine_module, args.tokens,
                                                                      not args.no_compile)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "peak": peak, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
