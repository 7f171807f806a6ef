"""Scoring a model on examples: greedy (or beam) generation through the KV-cache engine and exact match of the
extracted answer; multiple-choice examples compare their choice letters' logits after the prompt in one forward."""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from recurlm.config import InferencePolicy, RunConfig
from recurlm.errors import UserError
from recurlm.inference.engine import Engine
from recurlm.inference.speculative import speculate
from recurlm.network.model import RecurrentGPT
from recurlm.tasks import Example, Task, extract_answer, read_jsonl
from recurlm.tasks.reasoning import format_ok
from recurlm.tasks.runs import task_from_configs
from recurlm.text.calculator import Calculator
from recurlm.text.prompting import example_ids, example_question
from recurlm.text.tokenizer import Tokenizer


def evaluate(
    model: RecurrentGPT,
    tok: Tokenizer,
    examples: list[Example],
    policy: InferencePolicy,
    max_new_tokens: int,
    score=None,
    batch_size: int = 128,
    beams: int = 1,
    draft: tuple[int, int] | None = None,
) -> dict:
    """Accuracy and recurrence steps per generated token over `examples` (in batches), and for reasoning-trace tasks
    the share of outputs that follow the trace grammar exactly ('format'). Decoding is greedy (or beam search with
    beams > 1) under `policy`, up to max_new_tokens per example: each example decodes as it would alone, whatever
    the batch size. `score(example, text)` replaces exact match of the extracted answer. `draft` = (r, k):
    self-speculative decoding, one example at a time (the same tokens as greedy)."""
    was_training = model.training
    model.eval()
    policy = policy.override(temperature=0.0)
    engine, tool = Engine(model, tok.digit_ids), Calculator.for_tokenizer(tok)
    if draft and tool is not None:
        raise UserError("self-speculative decoding does not drive the calculator tool: drop --draft")
    steps, n_tokens, drafted, accepted, t0 = [], 0, 0, 0, time.perf_counter()
    per_example: list[dict | None] = [None] * len(examples)
    for multiple_choice, indices in batches(examples, batch_size):
        chunk = [examples[i] for i in indices]
        prompts = [example_ids(tok, example_question(tok, ex)) for ex in chunk]
        if multiple_choice:
            texts = choose(engine, tok, chunk, prompts, policy)
            used = [[policy.recurrences if model.core else 0]] * len(chunk)
        else:
            if beams > 1:
                out = engine.beam_search(prompts, max_new_tokens, beams, policy, stop_tokens=tok.stop_ids)
            elif draft:
                spec = speculate(engine, prompts, max_new_tokens, policy, *draft, stop_tokens=tok.stop_ids)
                out, drafted, accepted = spec.generation, drafted + spec.drafted, accepted + spec.accepted
            else:
                out = engine.generate(prompts, max_new_tokens, policy, stop_tokens=tok.stop_ids, tool=tool)
            texts, used = [tok.decode(ids) for ids in out.tokens], out.steps
        for i, ex, text, k in zip(indices, chunk, texts, used, strict=True):
            if multiple_choice or not score:
                ok = float((text if multiple_choice else extract_answer(text)) == ex.answer)
            else:
                ok = score(ex, text)
            n_tokens += len(k)
            k = k[1:] or k  # the first token comes from the prompt pass (all r unless prompt_exit): count decoded ones
            steps.extend(k)
            per_example[i] = {
                "difficulty": ex.difficulty,
                "correct": ok,
                "steps": sum(k) / len(k) if k else 0.0,
                "output": text,
                "well_formed": format_ok(text) if ex.target.startswith("<THINK>") else None,
            }
    model.train(was_training)
    dt = time.perf_counter() - t0
    n = max(len(examples), 1)
    formats = [e["well_formed"] for e in per_example if e["well_formed"] is not None]
    return {
        "accuracy": sum(e["correct"] for e in per_example) / n,
        "n": len(examples),
        "mean_steps": sum(steps) / max(len(steps), 1),
        "max_steps": max(steps, default=0),
        "tokens_per_s": n_tokens / dt,
        "format": sum(formats) / len(formats) if formats else None,
        "acceptance": accepted / drafted if drafted else None,  # of speculative drafts
        "examples": per_example,
    }


def batches(examples: list[Example], batch_size: int) -> Iterator[tuple[bool, list[int]]]:
    """(multiple choice?, example indices) per batch: multiple-choice examples and generated ones apart."""
    for multiple_choice in (True, False):
        indices = [i for i, ex in enumerate(examples) if bool(ex.choices) == multiple_choice]
        for start in range(0, len(indices), batch_size):
            yield multiple_choice, indices[start : start + batch_size]


@torch.no_grad()
def choose(engine: Engine, tok: Tokenizer, chunk: list[Example], prompts: list[list[int]], policy) -> list[str]:
    """Each example's choice whose letter's first token has the highest logit right after the prompt."""
    logits = engine.start(prompts, policy)[1].float()
    picks = []
    for ex, row in zip(chunk, logits, strict=True):
        ids = [tok.encode(c)[0] for c in ex.choices]
        picks.append(ex.choices[int(row[ids].argmax())])
    return picks


@dataclass
class EvalSet:
    task: str
    difficulty: int | None
    examples: list[Example]
    max_new_tokens: int  # the task's generation budget (or --max-new-tokens)
    score: Callable | None = None  # (example, text) -> credit; None: exact match of the extracted answer


def task_sets(
    names: list[str], configs: RunConfig, split: str, limit: int, seed: int = 0, max_new_tokens: int | None = None
) -> list[EvalSet]:
    """Each task's `split` examples, one set per difficulty, generated as the run trained the task."""
    sets = []
    for name in names:
        task = task_from_configs(name, configs)
        budget = max_new_tokens or task.max_new_tokens
        for d in task.difficulties:
            examples = task.generate(split, limit, seed=seed, difficulty=d)
            if examples:  # a tiny problem space may hold none of a split (one-digit even/odd in val): no 0.000 row
                sets.append(EvalSet(name, d, examples, budget, task.score))
    return sets


def file_sets(
    path: str, configs: RunConfig, limit: int | None = None, max_new_tokens: int | None = None
) -> list[EvalSet]:
    """A JSONL file of examples, one set per difficulty when every example has one (at most `limit` each); scored
    by their task (and with its budget) when they all name the same one. The budget also leaves room for the
    longest answer written a character per token (a file of 40-digit sums for a model set up for 10)."""
    examples = read_jsonl(path)
    names = {ex.task for ex in examples}
    task = task_from_configs(names.pop(), configs) if len(names) == 1 and None not in names else None
    longest = max((len(ex.answer) for ex in examples), default=0) + 2
    budget = max_new_tokens or max(task.max_new_tokens if task else Task.max_new_tokens, longest)
    score = task.score if task else None
    if any(ex.difficulty is None for ex in examples):
        return [EvalSet(path, None, examples[:limit], budget, score)]
    levels = sorted({ex.difficulty for ex in examples})
    return [EvalSet(path, d, [ex for ex in examples if ex.difficulty == d][:limit], budget, score) for d in levels]


def sweep(
    model: RecurrentGPT,
    tok: Tokenizer,
    sets: list[EvalSet],
    policy: InferencePolicy,
    recurrences: list[int],
    exits: list[str | None] = (None,),
    beams: int = 1,
    batch_size: int = 128,
    draft: tuple[int, int] | None = None,
    samples: bool = False,
) -> Iterator[dict]:
    """One result row per (r, exit, decoding, set) under `policy` with r and the exit replaced (None: the
    policy's own exit): greedy always, beam search too when beams > 1, self-speculative too with a draft (r, k).
    With `samples`, each row also holds its examples' prompt, answer, output, credit and steps ('samples')."""
    decodes = [("greedy", 1, None)] + ([(f"beam{beams}", beams, None)] if beams > 1 else [])
    decodes += [(f"draft{draft[0]}x{draft[1]}", 1, draft)] if draft else []
    for r in recurrences:
        for exit in exits:
            run = policy.override(recurrences=r, exit=exit)
            for decode, width, spec in decodes:
                if spec and spec[0] >= r:
                    continue  # nothing to draft below r
                for s in sets:
                    res = evaluate(model, tok, s.examples, run, s.max_new_tokens, s.score, batch_size, width, spec)
                    examples = res.pop("examples")
                    row = {
                        "task": s.task,
                        "difficulty": s.difficulty,
                        "recurrences": r,
                        "exit": run.exit,
                        "decode": decode,
                        **res,
                        "steps_by_example": [e["steps"] for e in examples],
                    }
                    if samples:
                        row["samples"] = [
                            {"prompt": ex.prompt, "answer": ex.answer} | e
                            for ex, e in zip(s.examples, examples, strict=True)
                        ]
                    yield row
