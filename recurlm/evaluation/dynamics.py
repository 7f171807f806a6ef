"""Does the recurrence settle or drift? Per task and iteration i = 1..r of the prompt pass: the mean relative change
of the state, ||s_i - s_{i-1}|| / ||s_i||, and of the next-token distribution, KL(p_i || p_{i-1}), over the prompt's
tokens (the measures of the `latent` and `kl` exits). A model that settles shows both falling towards 0 past its
training depth, and more iterations then cost accuracy nothing; one that drifts keeps moving, and usually
overthinks (accuracy falls with r).
"""

import torch

from recurlm.evaluation.scoring import EvalSet
from recurlm.inference.engine import Engine
from recurlm.network.exits import CRITERIA
from recurlm.text.prompting import example_ids, example_question
from recurlm.text.tokenizer import Tokenizer


def default_depths(r: int) -> list[int]:
    """The r to evaluate a model trained at depth r on: powers of two and r, 2r, up to 4r (thinking 4x longer)."""
    return sorted({2**k for k in range(8) if 2**k <= 4 * r} | {r, 2 * r, 4 * r})


@torch.no_grad()
def settle_or_drift(model, tok: Tokenizer, sets: list[EvalSet], r: int, seed: int = 0) -> list[dict]:
    """One row per task (difficulties pooled) and iteration: {task, iteration, state_change, distribution_change}."""
    engine = Engine(model, tok.digit_ids if model.cfg.abacus else None)
    by_task: dict[str, list] = {}
    for s in sets:
        by_task.setdefault(s.task, []).extend(s.examples)
    rows = []
    for task, examples in by_task.items():
        prompts = [example_ids(tok, example_question(tok, ex)) for ex in examples]
        lengths = torch.tensor([len(p) for p in prompts])
        idx, digit_pos = engine.right_pad(prompts, lengths.tolist())
        valid = (torch.arange(idx.shape[1])[None, :] < lengths[:, None]).to(idx.device)
        torch.manual_seed(seed)  # a random initial state is drawn the same way every time
        ctx = model.context(idx.shape[1])
        e = model.embed(idx, ctx, digit_pos)
        state = model.init_state(e)
        logprobs = torch.log_softmax(model.head(state, ctx).float(), dim=-1)
        for i, nxt in enumerate(model.iterate(e, state, r, ctx), start=1):
            nxt_logprobs = torch.log_softmax(model.head(nxt, ctx).float(), dim=-1)
            state_change = CRITERIA["latent"].measure(state, nxt)
            distribution_change = CRITERIA["kl"].measure(logprobs, nxt_logprobs)
            rows.append(
                dict(
                    task=task,
                    iteration=i,
                    state_change=float(state_change[valid].mean()),
                    distribution_change=float(distribution_change[valid].mean()),
                )
            )
            state, logprobs = nxt, nxt_logprobs
    return rows
