"""Scoring a model on examples: greedy generation through the KV-cache engine, answer extraction, exact match."""

import time

import torch

from recurlm.data import prompt_ids
from recurlm.engine import Engine
from recurlm.model import RecurrentGPT
from recurlm.tasks import Example, extract_answer
from recurlm.tasks.reasoning import format_ok
from recurlm.tokenizer import Tokenizer


def evaluate(
    model: RecurrentGPT,
    tok: Tokenizer,
    examples: list[Example],
    recurrences: int,
    score=None,
    batch_size: int = 128,
    exit: str | None = None,
    kv_budget: int | None = None,
) -> dict:
    """Accuracy and recurrence steps per generated token over `examples` (generated greedily, in batches), and for
    reasoning-trace tasks the share of outputs that follow the trace grammar exactly ('format')."""
    was_training = model.training
    model.eval()
    engine = Engine(model, exit=exit, kv_budget=kv_budget, digit_ids=tok.digit_ids)
    correct, well_formed, steps, n_tokens, t0 = 0, 0, [], 0, time.perf_counter()
    traces = any(ex.target.startswith("<THINK>") for ex in examples)
    per_example = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        prompts = [prompt_ids(tok, ex.prompt) for ex in chunk]
        max_new = max(len(tok.encode(ex.target)) for ex in chunk) + 1
        out = engine.generate(prompts, max_new, recurrences=recurrences, stop_tokens=[tok.eos_id])
        for ex, ids, used in zip(chunk, out.tokens, out.steps, strict=True):
            text = tok.decode(ids)
            ok = score(ex, text) if score else float(extract_answer(text) == ex.answer)
            correct += ok
            well_formed += traces and format_ok(text)
            steps.extend(used)
            n_tokens += len(ids) + 1
            per_example.append(
                {"difficulty": ex.difficulty, "correct": ok, "steps": sum(used) / len(used) if used else 0.0}
            )
    model.train(was_training)
    dt = time.perf_counter() - t0
    return {
        "accuracy": correct / max(len(examples), 1),
        "n": len(examples),
        "mean_steps": sum(steps) / max(len(steps), 1),
        "max_steps": max(steps, default=0),
        "tokens_per_s": n_tokens / dt,
        "format": well_formed / max(len(examples), 1) if traces else None,
        "examples": per_example,
    }


def loss_on(model: RecurrentGPT, x, y, recurrences: int, digit_pos=None) -> torch.Tensor:
    logits = model(x, recurrences, digit_pos=digit_pos)
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1)
