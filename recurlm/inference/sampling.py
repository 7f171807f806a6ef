"""Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p, each row under its
own settings and random generator (so that a row's draw does not depend on the batch it is in)."""

import torch

from recurlm.config import InferencePolicy


def sample(logits: torch.Tensor, temperature=0.0, top_k=0, top_p=1.0, generator=None) -> torch.Tensor:
    """Next token per row from (B, V) logits; temperature 0 is greedy.

    The logits are shifted to a maximum of 0 and divided by the temperature in float64: the best token then scores
    exactly 0 and every other one a finite number or -inf, so no temperature > 0 a double holds, however small,
    makes an inf or a NaN (a tiny one is greedy in effect). Before, 1e-300 became 0 in float32, 0 / 0 a NaN.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.double()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def sample_rows(logits: torch.Tensor, policies: list[InferencePolicy], generators: list) -> torch.Tensor:
    """(B,) next tokens: row i under policies[i]'s sampling settings and its own generators[i]."""
    out = logits.argmax(dim=-1)
    for i, p in enumerate(policies):
        if p.temperature > 0:
            out[i] = sample(logits[i : i + 1], p.temperature, p.top_k, p.top_p, generators[i])[0]
    return out
