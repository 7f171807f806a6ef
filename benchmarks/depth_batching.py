"""Adaptive depth in a batch: does each row pay for its own recurrences? (docs/design.md §6, depth batching)

    .venv/bin/python benchmarks/depth_batching.py [--checkpoint checkpoints/miniaxion-0.9m] [--deep DIR]
        [--rows 16] [--tokens 48] [--repeats 2] [--json F]

1. Mixed depths, 16 rows of one checkpoint (default: the shipped MiniAxion), greedy, `--tokens` new tokens per
   row from test prompts of its tasks (stop tokens ignored): 16 rows at r = 2; one row at r = 16 beside 15 at
   r = 2; 16 rows at r = 16; 16 rows under `kl:0.1` capped at 16. Each under the three ways the engine can run a
   batch: `dense` (every row runs until the batch's deepest is done: recurlm before depth batching), `compacted`
   (each recurrence gathers only the rows still iterating) and `depth` (depth batching: each core pass runs one
   recurrence of every row's token, a row whose token is done picks its next one while others iterate; on
   MiniAxion's shape also the engine's own choice). Tokens/s of the batch, and the ratio to 16 rows at r = 2 (goal
   for the mixed batch: >= 60%). Last, the 16 clients' mix of `serve.py` (four at r = 2) without the server.
2. `--deep DIR`, a model trained for deep r (recursive-nanochat-mini): 16 rows decoding together from test
   prompts, fixed r = 8 against `--exits` capped at 8, dense, depth-batched and as the engine chooses (`auto`;
   goal: >= 1.6x fixed r = 8's tokens/s), and accuracy on test prompts taken 16 at a time against one at a time
   (the same answers).
3. Compaction against dense for the prompt pass: 16 prompts of 64 tokens, k rows at r = 16 and the rest at r = 2:
   where compaction starts to pay (`model.compacts`).
4. `checks`: what each exit criterion costs per check (every iteration of every token), at 1 and 16 rows.
5. `reads`: attention of k of the cache's 16 rows (a pass's subset), the rows' keys and values gathered against
   every row's read in place: where reading in place starts to pay (`cache.IN_PLACE_SHARE`).
6. `ops`: tensor operations per decoding step of 16 rows at r = 2 and of serve.py's mix, and the steps' times.
Shared CPUs drift: compare figures from one run.
"""

import argparse
import dataclasses
import json
import statistics
import time
from contextlib import contextmanager

import torch
from common import machine, matmul_peak, median_time
from serve import MIXED
from torch.utils._python_dispatch import TorchDispatchMode

import recurlm.network.cache as kv
import recurlm.network.model as network
from recurlm.checkpoint import load_checkpoint
from recurlm.config import InferencePolicy, ModelConfig
from recurlm.inference.engine import Engine
from recurlm.inference.generation import GenerationLoop, Sequence
from recurlm.network.model import build_model
from recurlm.tasks import extract_answer
from recurlm.tasks.runs import task_from_configs, trained_task_names
from recurlm.text.calculator import Calculator
from recurlm.text.prompting import example_ids, example_question

REFERENCE = ModelConfig(vocab_size=8192, seq_len=256, d_model=256, n_head=2, n_prelude=2, n_core=4, n_coda=2)


@contextmanager
def mode(name: str):
    """Run the engine as `dense` (no compaction, no depth batching), `compacted`, `depth` (depth batching whenever
    rows differ in depth) or `auto` (the default: depth batching where the model's shape says it pays)."""
    compacts, batching = network.compacts, GenerationLoop.batching
    GenerationLoop.batching = {"dense": "dense", "compacted": "dense", "depth": "depth"}.get(name, "auto")
    if name == "dense":
        network.compacts = lambda live, batch: False
    try:
        yield
    finally:
        network.compacts, GenerationLoop.batching = compacts, batching


def test_examples(configs, n: int):
    names = trained_task_names(configs)
    tasks = [task_from_configs(name, configs) for name in names]
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        out.append(task.generate("test", n, seed=0)[i // len(tasks)])
    return out, tasks


def steady(engine, prompts: list[list[int]], policies, total: int) -> tuple[float, float]:
    """Tokens/s of a batch in steady state, all rows decoding (a server's busy batch): the time the loop takes to
    emit `total` tokens after the prefill, rows never running out of room first; and the mean steps per token."""
    room = engine.cfg.seq_len - max(map(len, prompts))
    loop = GenerationLoop(engine)
    loop.add([Sequence(p, room, q) for p, q in zip(prompts, policies, strict=True)])
    count, steps, t0 = 0, [], time.perf_counter()
    while count < total:
        events = loop.step()
        count += len(events)
        steps += [e.steps for e in events]
    return count / (time.perf_counter() - t0), statistics.mean(steps)


def mixed_depths(checkpoint: str, rows: int, tokens: int, repeats: int) -> list[dict]:
    model, tok, configs = load_checkpoint(checkpoint)
    model.eval()
    examples, _ = test_examples(configs, rows)
    prompts = [example_ids(tok, example_question(tok, ex)) for ex in examples]
    base = configs.inference.override(exit="none")
    cases = {
        f"{rows} rows at r = 2": [base.override(recurrences=2)] * rows,
        f"1 row at r = 16, {rows - 1} at r = 2": [base.override(recurrences=16)] + [base.override(recurrences=2)] * (
            rows - 1),
        f"{rows} rows at r = 16": [base.override(recurrences=16)] * rows,
        f"{rows} rows, kl:0.1 capped at 16": [base.override(recurrences=16, exit="kl:0.1")] * rows,
    }  # fmt: skip
    if rows == len(MIXED):
        cases["serve.py's mix (r = 2 to 16, exits)"] = [base.override(**m) for m in MIXED]
    engine, out, reference = Engine(model, tok.digit_ids), [], {}
    print(f"\n1. {checkpoint}: {rows} rows decoding together, tokens/s over the first {rows * tokens} tokens after "
          f"the prefill (no row runs out of room)")  # fmt: skip
    print(f"  {'batch':<36} {'dense':>8} {'compacted':>10} {'depth':>8}   ratio to {rows} rows at r = 2")
    for label, policies in cases.items():
        row = {"case": label}
        for name in ("dense", "compacted", "depth"):
            with mode(name):
                runs = [steady(engine, prompts, policies, rows * tokens) for _ in range(repeats)]
            row[name], row["steps"] = statistics.median(r[0] for r in runs), runs[0][1]
        reference = reference or row
        out.append(row)
        ratios = "  ".join(f"{row[m] / reference[m]:4.0%}" for m in ("dense", "compacted", "depth"))
        print(f"  {label:<36} {row['dense']:>8.1f} {row['compacted']:>10.1f} {row['depth']:>8.1f}   {ratios}"
              f"   (steps/token {row['steps']:.2f})", flush=True)  # fmt: skip
    return out


def queue(engine, tok, examples, policy, rows: int, max_new: int) -> dict:
    """The examples as a server would take them: `rows` at a time, the next joining as soon as one ends (greedy,
    the tokenizer's stop tokens and calculator): tokens/s, accuracy and steps per token."""
    waiting = [Sequence(example_ids(tok, example_question(tok, ex)), max_new, policy) for ex in examples]
    owner = {id(s): ex for s, ex in zip(waiting, examples, strict=True)}
    loop = GenerationLoop(engine, tok.stop_ids, Calculator.for_tokenizer(tok))
    done, tokens, steps, t0 = [], 0, [], time.perf_counter()
    while waiting or len(loop):
        joining, waiting = waiting[: rows - len(loop)], waiting[rows - len(loop) :]
        loop.add(joining)
        for event in loop.step():
            tokens += 1
            steps.append(event.steps)
            if event.finish:
                done.append(event.seq)
    dt = time.perf_counter() - t0
    right = [extract_answer(tok.decode(s.generated)) == owner[id(s)].answer for s in done]
    return {"tok_s": tokens / dt, "accuracy": sum(right) / len(right), "steps": statistics.mean(steps)}


def deep_exits(checkpoint: str, rows: int, tokens: int, exits: list[str], repeats: int) -> list[dict]:
    model, tok, configs = load_checkpoint(checkpoint)
    model.eval()
    examples, tasks = test_examples(configs, rows * 8)
    prompts = [example_ids(tok, example_question(tok, ex)) for ex in examples[:rows]]
    engine = Engine(model, tok.digit_ids)
    print(f"\n2. {checkpoint}: {rows} rows decoding together (tokens/s over the first {rows * tokens} tokens after "
          f"the prefill), and accuracy on {len(examples)} test prompts of {len(tasks)} tasks taken {rows} at a time "
          f"(each joining when one ends) and one at a time")  # fmt: skip
    fixed = configs.inference.override(recurrences=8, exit="none", kv_budget=1)
    out, reference = [], None
    for spec in ["none", *exits]:
        policy = fixed.override(exit=spec, max_steps=8) if spec != "none" else fixed
        row = {"exit": spec}
        for name in ("dense", "depth", "auto"):
            with mode(name):
                runs = [steady(engine, prompts, [policy] * rows, rows * tokens) for _ in range(repeats)]
            row[name], row["steps"] = statistics.median(r[0] for r in runs), runs[0][1]
        row["accuracy"] = queue(engine, tok, examples, policy, rows, 32)["accuracy"]
        row["accuracy_batch_1"] = queue(engine, tok, examples, policy, 1, 32)["accuracy"]
        reference = reference or row
        out.append(row)
        print(f"  {spec:<12} dense {row['dense']:7.1f} tok/s  depth {row['depth']:7.1f} tok/s "
              f"({row['depth'] / reference['depth']:.2f}x fixed r = 8)  auto {row['auto']:7.1f} tok/s "
              f"({row['auto'] / reference['auto']:.2f}x)  steps/token {row['steps']:.2f}  "
              f"accuracy {row['accuracy']:.3f} (one at a time: {row['accuracy_batch_1']:.3f})", flush=True)  # fmt: skip
    return out


def prompt_crossover(checkpoint: str, rows: int, repeats: int) -> list[dict]:
    model, tok, configs = load_checkpoint(checkpoint)
    model.eval()
    engine = Engine(model, tok.digit_ids)
    prompts = torch.randint(10, model.cfg.vocab_size, (rows, 64), generator=torch.Generator().manual_seed(0)).tolist()
    base = configs.inference.override(exit="none")
    print(f"\n3. prompt pass, {rows} prompts of 64 tokens: k rows at r = 16, the rest at r = 2 (ms)")
    out = []
    for deep in sorted({k for k in (1, 2, 4, 8, 12, 15) if k < rows}):
        policies = [base.override(recurrences=16)] * deep + [base.override(recurrences=2)] * (rows - deep)
        row = {"deep_rows": deep}
        for name in ("dense", "compacted"):
            with mode(name):
                row[name] = median_time(repeats, engine.start, prompts, policies)[0] * 1000
        out.append(row)
        print(f"  k = {deep:>2}: dense {row['dense']:7.1f}  compacted {row['compacted']:7.1f}"
              f"  ({row['dense'] / row['compacted']:.2f}x)", flush=True)  # fmt: skip
    return out


def check_costs(rows_list=(1, 16), tokens: int = 64, repeats: int = 2) -> list[dict]:
    """What each exit criterion costs per check: decoding at r = 8 with the criterion computed at every iteration
    but never allowed to stop a token (min_steps = 8), against no criterion; the reference setting ((2,4,2), width
    256, vocab 8192, random weights) with a learned exit gate."""
    cfg = dataclasses.replace(REFERENCE, exit_gate=True)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    engine, out = Engine(model), []
    print(f"\n4. cost per check of each exit criterion (reference setting, r = 8, {tokens} tokens, ms)")
    for rows in rows_list:
        prompts = torch.randint(0, cfg.vocab_size, (rows, 32), generator=torch.Generator().manual_seed(1)).tolist()
        base = InferencePolicy(recurrences=8, kv_budget=1, warm_start=True)
        none_s = median_time(repeats, engine.generate, prompts, tokens, base)[0]
        for spec in ("latent:0", "cosine:0", "gate:1", "kl:0", "entropy:0", "minp:0", "argmax:100"):
            policy = base.override(exit=spec, min_steps=8)
            dt = median_time(repeats, engine.generate, prompts, tokens, policy)[0]
            per_check = (dt - none_s) / (tokens * 8) * 1000
            out.append({"rows": rows, "criterion": spec.partition(":")[0], "ms_per_check": per_check,
                        "step_ms": dt / tokens * 1000, "fixed_step_ms": none_s / tokens * 1000})  # fmt: skip
            print(f"  {rows:>2} rows  {spec.partition(':')[0]:<8} {per_check:6.3f} ms per check "
                  f"(a token at r = 8: {dt / tokens * 1000:6.1f} ms, without checks {none_s / tokens * 1000:6.1f})",
                  flush=True)  # fmt: skip
    return out


LAYER_CALLS = 200  # per timing of one attention layer


def layer_calls(attn, x, ctx):
    for _ in range(LAYER_CALLS):
        attn(x, ctx, (0, None), None)


def read_crossover(checkpoint: str, rows: int, repeats: int) -> list[dict]:
    """One attention layer (the prelude's first) of a single new token on k of `rows` cache rows, their cached
    positions 60-120: the rows' keys and values gathered (`IN_PLACE_SHARE` above 1) against read in place (0)."""
    model, _, _ = load_checkpoint(checkpoint)
    model.eval()
    cfg, g = model.cfg, torch.Generator().manual_seed(0)
    cache = kv.KVCache(cfg, rows, cfg.seq_len, 1)
    for t in cache.k + cache.v:
        t.copy_(torch.randn(t.shape, generator=g))
    pos, x = torch.randint(60, 121, (rows, 1), generator=g), torch.randn(rows, 1, cfg.d_model, generator=g)
    attn, share, out = model.prelude[0].attn, kv.IN_PLACE_SHARE, []
    print(f"\n5. attention of one token on k of {rows} cache rows: their keys gathered against every row's read in "
          f"place (us per layer)")  # fmt: skip
    try:
        for k in sorted({n for n in (1, 2, 4, 6, 8, 12) if n < rows}):
            index = torch.arange(k)
            ctx = model.context_at(pos[index], cache, int(pos.max()) + 1, rows=index)
            row = {"rows": k}
            for name, kv.IN_PLACE_SHARE in (("gathered", 2.0), ("in_place", 0.0)):
                row[name] = median_time(repeats, layer_calls, attn, x[index], ctx)[0] * 1e6 / LAYER_CALLS
            out.append(row)
            print(f"  k = {k:>2}: gathered {row['gathered']:6.0f}  in place {row['in_place']:6.0f}"
                  f"  ({row['gathered'] / row['in_place']:.2f}x)", flush=True)  # fmt: skip
    finally:
        kv.IN_PLACE_SHARE = share
    return out


class CountOps(TorchDispatchMode):
    """Counts the tensor operations run under it: on a model this small each one costs a few microseconds of
    dispatch whatever it computes, so the count tracks a pass's time on any CPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def operations(checkpoint: str, steps: int = 20, repeats: int = 2) -> dict:
    """6. `ops`: tensor operations per decoding step (one pass, so one token of each r = 2 row) of 16 rows at r = 2
    and of serve.py's mix, and per token generated: a figure no machine's speed moves. Then the step's time (the
    best of `repeats` windows of `steps` steps): the mix's over 16 rows at r = 2 is what an r = 2 row's
    inter-token time grows by beside the others, before the server's own work per token."""
    model, tok, configs = load_checkpoint(checkpoint)
    model.eval()
    examples, _ = test_examples(configs, len(MIXED))
    prompts = [example_ids(tok, example_question(tok, ex)) for ex in examples]
    base = configs.inference.override(exit="none")
    cases = {"16 rows at r = 2": [base.override(recurrences=2)] * len(MIXED), "serve.py's mix": [
        base.override(**m) for m in MIXED]}  # fmt: skip
    engine, out = Engine(model, tok.digit_ids), {}
    print(f"\n6. {checkpoint}: tensor operations and ms per decoding step, after {steps} warm-up steps")
    for label, policies in cases.items():
        loop = GenerationLoop(engine)
        loop.add([Sequence(p, (3 + repeats) * steps, q) for p, q in zip(prompts, policies, strict=True)])
        for _ in range(steps):
            loop.step()
        tokens = 0
        with CountOps() as counter:
            for _ in range(steps):
                tokens += len(loop.step())
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                loop.step()
            times.append((time.perf_counter() - t0) / steps * 1e3)
        out[label] = {"per_step": counter.count / steps, "per_token": counter.count / tokens, "ms": min(times)}
        print(f"  {label:<20} {out[label]['per_step']:>8.0f} per step {out[label]['per_token']:>6.0f} per token"
              f" {out[label]['ms']:>7.2f} ms per step")  # fmt: skip
    shallow, mix = (out[label]["ms"] for label in cases)  # in the order of `cases`
    print(f"  the mix's step against 16 rows at r = 2: {mix / shallow:.2f}x")
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="checkpoints/miniaxion-0.9m")
    p.add_argument("--deep", help="a model trained for deep r, e.g. a recursive-nanochat-mini run")
    p.add_argument("--exits", default="kl:0.1,latent:0.4")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", default="mixed,deep,prompt,checks,reads,ops")
    p.add_argument("--json")
    args = p.parse_args()
    print(machine())
    print(f"matmul peak (2048^3): fp32 {matmul_peak(torch.float32):.0f} GFLOP/s, "
          f"bf16 {matmul_peak(torch.bfloat16):.0f} GFLOP/s")  # fmt: skip
    only, figures = args.only.split(","), {"machine": machine()}
    with torch.no_grad():
        if "mixed" in only:
            figures["mixed"] = mixed_depths(args.checkpoint, args.rows, args.tokens, args.repeats)
        if "deep" in only and args.deep:
            figures["deep"] = deep_exits(args.deep, args.rows, args.tokens, args.exits.split(","), args.repeats)
        if "prompt" in only:
            figures["prompt"] = prompt_crossover(args.checkpoint, args.rows, args.repeats)
        if "checks" in only:
            figures["checks"] = check_costs(repeats=args.repeats)
        if "reads" in only:
            figures["reads"] = read_crossover(args.checkpoint, args.rows, args.repeats)
        if "ops" in only:
            figures["ops"] = operations(args.checkpoint, repeats=args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
