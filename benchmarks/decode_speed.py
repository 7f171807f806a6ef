"""Decoding speed and cache memory on this machine.

    .venv/bin/python benchmarks/decode_speed.py [--repeats 3] [--checkpoint checkpoints/miniaxion-0.9m] [--json F]
        [--only reference,fast,profile,cache,trained,long] [--split val --exits kl:0.1,kl:0.1+prompt] [--prompts 3]

1. The reference setting ((P,R,C) = (2,4,2), width 256, head dim 128, vocab 8192; random weights): greedy decoding
   of 128 new tokens after a 32-token prompt, batch 1 and 8, r = 1, 4, 8, with KV budget 1 + warm start (recursive
   nanochat's engine), budget r (exact), and no cache: tokens/s and ms per effective layer per token.
   Then the fast paths at batch 1, budget 1 + warm start, r = 4 and 8: the compiled decode step
   (`Engine(compile=True)`, its compile time apart), bf16 weights, and both; and whether their tokens equal the
   eager fp32 engine's.
   `profile`: where a batch-1 step spends its time, eager and compiled (torch.profiler).
2. KV-cache bytes against r and context length, budget 1 and budget r.
3. A trained checkpoint (default: the shipped MiniAxion) on test prompts of the tasks it trained on, batch 1, up to
   128 new tokens:
   fixed r = 8, adaptive exit (KL and latent, of generated tokens or of the prompt's too) capped at 8, and
   self-speculative decoding (drafts at r = 2) — speed, core steps per token, accuracy, and the drafts' acceptance
   rate. Tune exit thresholds on `--split val`, report them on test.
4. The same checkpoint, 128 new tokens from each test prompt (stop tokens ignored): greedy at r = 8 against
   self-speculative decoding with drafts at r = 2, k = 2, 4, 8 — speed, acceptance, and whether the tokens are the
   same.
Figures are medians of the repeats (prefill included). Shared CPUs drift: compare figures from one run.
"""

import argparse
import copy
import dataclasses
import json
import statistics
import time

import torch
from common import machine, matmul_peak, median_time, op_profile, read_bandwidth

from recurlm.checkpoint import load_checkpoint
from recurlm.config import InferencePolicy, ModelConfig
from recurlm.inference.engine import Engine
from recurlm.inference.speculative import speculate
from recurlm.network.cache import KVCache
from recurlm.network.model import build_model
from recurlm.tasks.runs import task_from_configs, trained_task_names
from recurlm.text.prompting import example_ids, example_question

REFERENCE = ModelConfig(vocab_size=8192, seq_len=256, d_model=256, n_head=2, n_prelude=2, n_core=4, n_coda=2)


def reference_model():
    torch.manual_seed(0)
    model = build_model(REFERENCE).eval()
    with torch.no_grad():  # untrained output projections are zero: perturb them so the blocks do real work
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def reference_decoding(repeats: int) -> list[dict]:
    model = reference_model()
    engine, rows = Engine(model), []
    for batch in (1, 8):
        prompts = torch.randint(0, 8192, (batch, 32), generator=torch.Generator().manual_seed(1)).tolist()
        for r in (1, 4, 8):
            for name, budget, warm, cache in (("budget 1, warm", 1, True, True), ("budget r", r, False, True),
                                              ("no cache", r, False, False)):  # fmt: skip
                policy = InferencePolicy(recurrences=r, kv_budget=budget, warm_start=warm)
                dt, _ = median_time(repeats, engine.generate, prompts, 128, policy, use_cache=cache)
                tps = batch * 128 / dt
                layer_ms = dt * 1000 / (128 * model.effective_depth(r))
                rows.append(dict(batch=batch, r=r, setting=name, tok_s=tps, ms_per_layer_token=layer_ms))
                print(f"  batch {batch} r={r} {name:<15} {tps:8.1f} tok/s {layer_ms:6.3f} ms/layer-token", flush=True)
    return rows


def fast_decoding(repeats: int) -> list[dict]:
    """Batch 1, budget 1 + warm start: the eager fp32 engine against the compiled step and bf16 weights."""
    fp32 = reference_model()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    prompt = torch.randint(0, 8192, (1, 32), generator=torch.Generator().manual_seed(1)).tolist()
    rows = []
    for r in (4, 8):
        policy, reference = InferencePolicy(recurrences=r, kv_budget=1, warm_start=True), None
        for name, model, compile in (("eager fp32", fp32, False), ("compiled fp32", fp32, True),
                                     ("eager bf16", bf16, False), ("compiled bf16", bf16, True)):  # fmt: skip
            engine = Engine(model, compile=compile)
            t0 = time.perf_counter()
            engine.generate(prompt, 128, policy)  # compiles, once per r
            first = time.perf_counter() - t0
            dt, out = median_time(repeats, engine.generate, prompt, 128, policy)
            reference = reference or out.tokens
            same = sum(a == b for a, b in zip(out.tokens[0], reference[0], strict=True))
            layer_ms = dt * 1000 / (128 * fp32.effective_depth(r))
            row = dict(r=r, setting=name, tok_s=128 / dt, ms_per_layer_token=layer_ms, first_call_s=first,
                       tokens_as_eager_fp32=same)  # fmt: skip
            rows.append(row)
            print(f"  r={r} {name:<14} {row['tok_s']:7.1f} tok/s {row['ms_per_layer_token']:6.3f} ms/layer-token, "
                  f"first call {first:5.1f} s, {same}/128 tokens as eager fp32", flush=True)  # fmt: skip
    return rows


def decode_profiles() -> dict:
    """Where a batch-1 decoding step goes (reference setting, r = 4, budget 1 + warm start): 16 new tokens."""
    model, out = reference_model(), {}
    prompt = torch.randint(0, 8192, (1, 32), generator=torch.Generator().manual_seed(1)).tolist()
    policy = InferencePolicy(recurrences=4, kv_budget=1, warm_start=True)
    for compile in (False, True):
        engine = Engine(model, compile=compile)
        label = f"16 {'compiled' if compile else 'eager'} fp32 decoding steps, r = 4, batch 1"
        out[label] = op_profile(lambda: engine.generate(prompt, 16, policy), label)  # noqa: B023
    # Each token reads every weight of every effective layer once: at batch 1 memory bandwidth sets the ceiling
    weights_mb, gbs = model.params_per_token(4) * 4 / 1e6, read_bandwidth()
    out["ceiling"] = dict(weights_mb_per_token=weights_mb, read_gb_s=gbs, tok_s=gbs * 1e3 / weights_mb)
    print(f"  fp32 weights read per token at r = 4: {weights_mb:.0f} MB; memory read {gbs:.1f} GB/s: at most "
          f"{out['ceiling']['tok_s']:.0f} tok/s in fp32, {2 * out['ceiling']['tok_s']:.0f} in bf16")  # fmt: skip
    return out


def cache_memory() -> list[dict]:
    rows = []
    for context in (256, 1024):
        for r in (1, 4, 8, 16):
            for budget in (1, r):
                cache = KVCache(REFERENCE, 1, context, budget)
                total = cache.nbytes()
                rows.append(dict(context=context, r=r, budget=budget, core_bytes=cache.core_bytes(), bytes=total))
                print(f"  context {context:5} r={r:<2} budget {budget:<2} {total / 2**20:7.2f} MiB "
                      f"(core {cache.core_bytes() / 2**20:.2f})")  # fmt: skip
    return rows


def trained_prompts(path: str, split: str, n_prompts: int):
    """The checkpoint's engine and tokenizer, its policy at a fixed r = 8 with budget 8 (exact), greedy, and n test
    (or val) prompts of each task it trained on, with the tasks and examples that score the answers."""
    model, tok, configs = load_checkpoint(path)
    engine = Engine(model, tok.digit_ids)
    exact = configs.inference.override(temperature=0.0, recurrences=8, kv_budget=8, warm_start=False, exit="none")
    tasks = [task_from_configs(name, configs) for name in trained_task_names(configs)]
    pairs = [(task, ex) for task in tasks for ex in task.generate(split, n_prompts)]
    owners, examples = zip(*pairs, strict=True)
    prompts = [example_ids(tok, example_question(tok, ex)) for ex in examples]
    return engine, tok, exact, prompts, owners, examples


def exit_policy(exact: InferencePolicy, spec: str) -> InferencePolicy:
    """'kl:0.1' exits generated tokens; 'kl:0.1+prompt' the prompt's tokens too."""
    criterion, plus, _ = spec.partition("+prompt")
    return exact.override(exit=criterion, prompt_exit=bool(plus))


def trained_decoding(path: str, repeats: int, n_prompts: int, split: str, exits: list[str], drafts: list[int]):
    engine, tok, exact, prompts, owners, examples = trained_prompts(path, split, n_prompts)
    settings = [("r=8, budget 8", exact, None)]
    settings += [(f"exit {e}", exit_policy(exact, e), None) for e in exits]
    settings += [(f"speculative r=2, k={k}", exact, k) for k in drafts]
    rows, baseline = [], None
    for name, policy, k in settings:
        dt, out = median_time(repeats, generate_one_by_one, engine, prompts, policy, k, tok.stop_ids)
        texts = [tok.decode(t) for t in out["tokens"]]
        scores = [task.score(ex, t) for task, ex, t in zip(owners, examples, texts, strict=True)]
        acc = sum(scores) / len(examples)
        tps = out["count"] / dt
        baseline = baseline or tps
        row = dict(setting=name, tok_s=tps, speedup=tps / baseline, accuracy=acc,
                   steps=statistics.mean(out["steps"]), acceptance=out["acceptance"], tokens=out["count"])  # fmt: skip
        rows.append(row)
        extra = f" acceptance {row['acceptance']:.2f}" if k else ""
        print(f"  {name:<24} {tps:7.1f} tok/s ({row['speedup']:.2f}x) accuracy {acc:.3f} "
              f"steps {row['steps']:.2f}{extra}", flush=True)  # fmt: skip
    return rows


def long_speculation(path: str, repeats: int, n_prompts: int) -> list[dict]:
    """128 new tokens from each prompt whatever they are (stop tokens ignored, as serving benchmarks do): greedy at
    r = 8 against self-speculative decoding with drafts at r = 2, which must give the same tokens."""
    engine, _, exact, prompts, _, _ = trained_prompts(path, "test", n_prompts)
    rows, greedy, baseline = [], None, None
    for k in (None, 2, 4, 8):
        dt, out = median_time(repeats, generate_one_by_one, engine, prompts, exact, k, ())
        greedy = greedy or out["tokens"]
        tps = out["count"] / dt
        baseline = baseline or tps
        same = sum(a == b for a, b in zip(out["tokens"], greedy, strict=True))
        name = f"speculative r=2, k={k}" if k else "r=8, budget 8"
        rows.append(dict(setting=name, tok_s=tps, speedup=tps / baseline, acceptance=out["acceptance"],
                         tokens=out["count"], identical_generations=same))  # fmt: skip
        extra = f" acceptance {out['acceptance']:.2f}" if k else ""
        print(f"  {name:<24} {tps:7.1f} tok/s ({tps / baseline:.2f}x){extra}, "
              f"{same}/{len(prompts)} generations as greedy r=8", flush=True)  # fmt: skip
    return rows


def generate_one_by_one(engine, prompts, policy, draft_tokens, stop_ids) -> dict:
    """Batch 1: each prompt alone, greedy, up to 128 new tokens (self-speculative with drafts at r = 2 when
    draft_tokens)."""
    tokens, steps, count, drafted, accepted = [], [], 0, 0, 0
    for p in prompts:
        if draft_tokens:
            s = speculate(engine, [p], 128, policy, 2, draft_tokens, stop_tokens=stop_ids)
            gen, drafted, accepted = s.generation, drafted + s.drafted, accepted + s.accepted
        else:
            gen = engine.generate([p], 128, policy, stop_tokens=stop_ids)
        tokens.append(gen.tokens[0])
        steps += gen.steps[0]  # every pass, the prompt's included
        count += len(gen.steps[0])
    return dict(tokens=tokens, steps=steps, count=count, acceptance=accepted / drafted if drafted else None)


def hf_generate(repeats: int) -> list[dict]:
    """The transformers export's `generate` (its KV cache) against recurlm's eager engine: the reference setting,
    batch 1, a 32-token prompt, 128 new tokens, r = 4, budget 1 + warm start and budget r; same tokens? (goal:
    within 1.5x the engine's time)."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from recurlm.checkpoint import build_tokenizer, save_checkpoint
    from recurlm.config import build_configs
    from recurlm.export.hf import export_hf

    model, rows = reference_model(), []
    prompt = torch.randint(0, 8192, (1, 32), generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        configs = build_configs({"model": dataclasses.asdict(REFERENCE)})
        save_checkpoint(f"{tmp}/ckpt", model, build_tokenizer(configs), configs)
        export_hf(f"{tmp}/ckpt", f"{tmp}/hf")
        hf = AutoModelForCausalLM.from_pretrained(f"{tmp}/hf", trust_remote_code=True).eval()
    for budget, warm in ((1, True), (4, False)):
        policy = InferencePolicy(recurrences=4, kv_budget=budget, warm_start=warm)
        engine_s, ours = median_time(repeats, Engine(model).generate, prompt.tolist(), 128, policy)
        with torch.no_grad():
            hf_s, out = median_time(
                repeats, hf.generate, prompt, max_new_tokens=128, min_new_tokens=128, do_sample=False, num_steps=4,
                exit="none", kv_budget=budget, warm_start=warm,
            )  # fmt: skip
        same = sum(a == b for a, b in zip(out[0, 32:].tolist(), ours.tokens[0], strict=True))
        row = dict(kv_budget=budget, warm_start=warm, engine_tok_s=128 / engine_s, hf_tok_s=128 / hf_s,
                   ratio=hf_s / engine_s, same_tokens=same)  # fmt: skip
        rows.append(row)
        print(f"  budget {budget}{', warm' if warm else ''}: engine {row['engine_tok_s']:6.1f} tok/s, transformers "
              f"generate {row['hf_tok_s']:6.1f} tok/s ({row['ratio']:.2f}x the engine's time), {same}/128 tokens "
              "the same", flush=True)  # fmt: skip
    return rows


def csv(text: str, kind=str) -> list:
    return [kind(x) for x in text.split(",") if x]


SECTIONS = {
    "reference": ("reference setting, greedy, 32-token prompt, 128 new tokens:",
                  lambda a: reference_decoding(a.repeats)),
    "fast": ("fast paths, batch 1, budget 1 + warm start:", lambda a: fast_decoding(a.repeats)),
    "profile": ("profiles, reference setting:", lambda a: decode_profiles()),
    "cache": ("KV cache (reference setting, fp32, batch 1):", lambda a: cache_memory()),
    "trained": ("{checkpoint}, batch 1, its {split} prompts, up to 128 new tokens:",
                lambda a: trained_decoding(a.checkpoint, a.repeats, a.prompts, a.split, csv(a.exits),
                                           csv(a.drafts, int))),
    "long": ("{checkpoint}, batch 1, its test prompts, 128 new tokens each (stop tokens ignored):",
             lambda a: long_speculation(a.checkpoint, a.repeats, a.long_prompts)),
    "hf": ("transformers export's generate (its KV cache) against the engine, reference setting, batch 1:",
           lambda a: hf_generate(a.repeats)),
}  # fmt: skip


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", default="checkpoints/miniaxion-0.9m")
    p.add_argument("--prompts", type=int, default=3, help="test prompts per task of the checkpoint's suite")
    p.add_argument("--split", default="test", help="the trained section's prompts: test, or val to tune exits on")
    p.add_argument(
        "--exits",
        default="kl:0.1,kl:0.1+prompt,latent:0.4",
        help="the trained section's exit criteria; CRIT:EPS+prompt exits the prompt's tokens too",
    )
    p.add_argument("--drafts", default="2,4,8", help="the trained section's draft lengths k (empty: none)")
    p.add_argument("--long-prompts", type=int, default=1, help="prompts per task of the long section")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--only", help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)")
    args = p.parse_args()
    only = args.only.split(",") if args.only else list(SECTIONS)
    if unknown := set(only) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    result = {"machine": machine(), "peak_gflops": {}}
    print(result["machine"])
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        result["peak_gflops"][name] = matmul_peak(dtype)
        print(f"matmul peak {name}: {result['peak_gflops'][name]:.0f} GFLOP/s")
    for section in only:
        title, run = SECTIONS[section]
        print(title.format(checkpoint=args.checkpoint, split=args.split))
        result[section] = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
