"""Self-speculative decoding (Huginn): the same model drafts k tokens at a low r, then checks them all in one pass
at the target r; the agreeing prefix is kept, plus the target's own token where they first disagree, and the cache
rolls back past the rest. Greedy output is the target r's, token for token.

The check is one parallel pass only where the engine's `extend` is exact in parallel (KV budget >= r, no warm
start); otherwise it runs token by token, still exact but with nothing saved, so speculation pays with budget r.
"""

from dataclasses import dataclass

import torch

from recurlm.config import InferencePolicy
from recurlm.errors import UserError
from recurlm.inference.engine import Engine
from recurlm.inference.generation import Generation
from recurlm.network.exits import Halting


@dataclass
class Speculation:
    generation: Generation
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # of which the target agreed with

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@torch.no_grad()
def speculate(
    engine: Engine,
    prompts: list[list[int]],
    max_new_tokens: int,
    policy: InferencePolicy,
    draft_recurrences: int,
    draft_tokens: int = 4,
    stop_tokens=(),
) -> Speculation:
    """Greedy generation at `policy` (its temperature is ignored), drafting `draft_tokens` at a time with
    `draft_recurrences`. Rows run one after another: speculation is a batch-1 latency tool."""
    if draft_recurrences < 1 or draft_tokens < 1:
        raise UserError(f"draft recurrences and draft tokens must be >= 1, got {draft_recurrences}, {draft_tokens}")
    if draft_recurrences >= policy.recurrences:
        raise UserError(f"drafts need fewer recurrences than the target's {policy.recurrences}")
    out = Speculation(Generation())
    for prompt in prompts:
        tokens, steps = _one(
            engine, prompt, max_new_tokens, policy, draft_recurrences, draft_tokens, set(stop_tokens), out
        )
        out.generation.tokens.append(tokens)
        out.generation.steps.append(steps)
    return out


def _one(engine, prompt, max_new, policy, r_draft, k, stop, stats) -> tuple[list[int], list[int]]:
    """One prompt's tokens (stop token excluded) and the recurrences of the pass that predicted each (included),
    as `Engine.generate` returns them."""
    seq_len = engine.cfg.seq_len
    state, logits, used = engine.start([prompt], policy, max_len=min(seq_len, len(prompt) + max_new + k))
    target_halt, draft_halt = state.halt, Halting.build([(r_draft, 1, "none")], engine.device)
    tokens, steps = [int(logits[0].argmax())], [int(used[0])]

    def done() -> bool:
        return tokens[-1] in stop or len(tokens) >= max_new or len(prompt) + len(tokens) > seq_len

    while not done():
        n = min(k, state.max_len - state.lengths[0] - 1, max_new - len(tokens))  # the check feeds n + 1 tokens
        if n < 1:  # no room left to draft: one plain step
            state, logits, used = engine.decode(state, [tokens[-1]])
            tokens.append(int(logits[0].argmax()))
            steps.append(int(used[0]))
            continue
        state.halt, fed = draft_halt, [tokens[-1]]
        for _ in range(n):
            state, logits, _ = engine.decode(state, [fed[-1]])
            fed.append(int(logits[0].argmax()))
        state.rollback(n)  # the drafts' cache entries hold the draft's r: the check rewrites them
        state.halt = target_halt
        state, logits, used = engine.extend(state, [fed])
        target, used = logits[0].argmax(dim=-1).tolist(), used[0].tolist()  # the target's token after each prefix
        agree = next((i for i in range(n) if fed[i + 1] != target[i]), n)
        stats.drafted += n
        stats.accepted += agree
        state.rollback(n - agree)
        for i in range(agree + 1):  # the agreeing drafts, then the target's own next token
            tokens.append(target[i])
            steps.append(used[i])
            if done():
                break
    if tokens[-1] in stop:
        tokens.pop()
    return tokens, steps
