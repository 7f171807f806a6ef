"""Beam search: per prompt, the most probable continuation among `beams` hypotheses kept at each step."""

import torch
import torch.nn.functional as F

from recurlm.config import InferencePolicy
from recurlm.inference.generation import Generation


@torch.no_grad()
def beam_search(
    engine, prompts: list[list[int]], max_new_tokens: int, beams: int, policy: InferencePolicy, stop_tokens=()
) -> Generation:
    """Per prompt, the most probable continuation (total log-probability) among `beams` hypotheses kept at each
    step. A finished hypothesis can only be extended by a stop token, at no cost, so finished and open ones
    compete on the same score; beams=1 is greedy decoding."""
    B, W = len(prompts), beams
    stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long)
    room = min(engine.cfg.seq_len, max(len(p) for p in prompts) + max_new_tokens)
    state, logits, steps = engine.start(prompts, policy, max_len=room)
    device, V = logits.device, logits.size(-1)
    rows = torch.arange(B, device=device).repeat_interleave(W)
    state = state.select(rows.tolist())
    logits, steps = logits[rows], steps[rows].cpu()
    score = torch.full((B, W), float("-inf"), device=device)
    score[:, 0] = 0.0  # the W copies are identical: start from one so the first step does not pick duplicates
    hist = torch.zeros(B * W, 0, dtype=torch.long, device=device)
    used = torch.zeros(B * W, 0, dtype=torch.long)
    done = torch.zeros(B * W, dtype=torch.bool, device=device)
    for n in range(max_new_tokens):
        logp = F.log_softmax(logits.float(), dim=-1)
        if stop.numel():
            logp[done] = float("-inf")
            logp[done, stop[0]] = 0.0
        score, flat = (score.view(-1, 1) + logp).view(B, W * V).topk(W, dim=-1)
        rows = (torch.arange(B, device=device)[:, None] * W + flat // V).view(-1)
        tokens = (flat % V).view(-1)
        hist = torch.cat([hist[rows], tokens[:, None]], dim=1)
        used = torch.cat([used[rows.cpu()], steps.cpu()[rows.cpu(), None]], dim=1)
        done = done[rows] | torch.isin(tokens, stop.to(device))
        if bool(done.all()) or n + 1 == max_new_tokens or max(state.lengths) + 1 > room:
            break
        state, logits, steps = engine.decode(state.select(rows.tolist()), tokens)
    best = torch.arange(B, device=device) * W + score.argmax(dim=-1)
    out = Generation()
    for b in best.tolist():
        ids = hist[b].tolist()
        n = next((i for i, t in enumerate(ids) if t in set(stop.tolist())), len(ids))
        out.tokens.append(ids[:n])
        out.steps.append(used[b, : n + 1].tolist())  # the stop token's pass too, if there was one
    return out
