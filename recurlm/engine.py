"""Generation: prefill the prompt in parallel, then decode token by token through the KV cache (DESIGN §2).

Per decoded token the engine runs the recurrence itself, so it can warm-start the state from the previous token's
final state and stop each row of the batch early once its exit criterion fires. A row that stops keeps its state
and writes its final K/V into the slots of the iterations it skipped, so later tokens find, at every depth, the
deepest state that token reached.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from recurlm.cache import KVCache
from recurlm.config import UserError
from recurlm.exits import parse_exit
from recurlm.model import RecurrentGPT
from recurlm.tokenizer import significance_ids


@dataclass
class Generation:
    tokens: list[list[int]] = field(default_factory=list)  # generated ids per row, stop token excluded
    # recurrences of the forward pass that produced each of those tokens, and the stop token (it costs a pass too)
    steps: list[list[int]] = field(default_factory=list)


def sample(logits: torch.Tensor, temperature=0.0, top_k=0, top_p=1.0, generator=None) -> torch.Tensor:
    """Next token per row from (B, V) logits; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


class Engine:
    def __init__(
        self,
        model: RecurrentGPT,
        kv_budget: int | None = None,
        warm_start: bool | None = None,
        exit: str | None = None,
        min_steps: int | None = None,
        use_cache: bool = True,
        digit_ids: set[int] | None = None,
        max_steps: int | None = None,
    ):
        cfg = model.cfg
        if cfg.abacus and not digit_ids:
            raise UserError("this model uses digit-significance ids: pass the tokenizer's digit_ids")
        self.digit_ids = set(digit_ids or ())
        self.digit_tensor = torch.tensor(sorted(self.digit_ids), dtype=torch.long)
        self.model, self.cfg, self.use_cache = model, cfg, use_cache
        self.kv_budget = cfg.kv_budget if kv_budget is None else kv_budget
        self.warm_start = cfg.warm_start if warm_start is None else warm_start
        self.criterion = parse_exit(cfg.exit if exit is None else exit)
        self.min_steps = cfg.exit_min_steps if min_steps is None else min_steps
        self.max_steps = max_steps  # adaptive exit's cap for generated tokens (default: r; the prompt runs r)
        if self.kv_budget < 1:
            raise UserError(f"kv budget must be >= 1, got {self.kv_budget}")
        if not use_cache and self.criterion is not None:
            raise UserError("adaptive exit needs the KV cache (drop --no-cache)")
        if max_steps is not None and (self.criterion is None or max_steps < 1):
            raise UserError("max steps caps adaptive exit: it needs an exit criterion and must be >= 1")
        self.cache: KVCache | None = None
        self.state: torch.Tensor | None = None  # each row's last final state, for warm start
        self.run: torch.Tensor | None = None  # each row's count of generated digits in a row (abacus ids)

    def _recurrences(self, r: int | None) -> int:
        r = self.cfg.default_recurrences if r is None else r
        if r < 1:
            raise UserError(f"recurrences must be >= 1, got {r}")
        return r

    def _left_pad(self, seqs: list[list[int]], n_prompt: list[int]):
        """(B, L) ids, valid mask and digit-significance ids (None without abacus) of left-padded sequences."""
        L = max(len(q) for q in seqs)
        if L > self.cfg.seq_len:
            raise UserError(f"prompt of {L} tokens is longer than the context ({self.cfg.seq_len} tokens)")
        device = self.model.wte.weight.device
        idx = torch.zeros(len(seqs), L, dtype=torch.long, device=device)
        valid = torch.zeros(len(seqs), L, dtype=torch.bool, device=device)
        digit_pos = torch.zeros(len(seqs), L, dtype=torch.long, device=device) if self.cfg.abacus else None
        for b, (q, n) in enumerate(zip(seqs, n_prompt, strict=True)):
            idx[b, L - len(q) :] = torch.tensor(q, dtype=torch.long)
            valid[b, L - len(q) :] = True
            if digit_pos is not None:
                digit_pos[b, L - len(q) :] = torch.tensor(significance_ids(q, n, self.digit_ids))
        return idx, valid, digit_pos

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], recurrences: int | None = None) -> torch.Tensor:
        """Run the left-padded prompts in parallel, filling a fresh cache; returns (B, V) last-position logits."""
        r = self._recurrences(recurrences)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("every prompt needs at least one token")
        idx, valid, digit_pos = self._left_pad(prompts, [len(p) for p in prompts])
        B, L = idx.shape
        cache = KVCache(self.cfg, B, self.cfg.seq_len, self.kv_budget, idx.device, self.model.wte.weight.dtype)
        cache.valid[:, :L] = valid
        cache.padded = not bool(valid.all())
        self.cache = cache
        ctx = self.model.context(L, 0, cache)
        e = self.model.embed(idx, ctx, digit_pos)
        s = self.model.init_state(e)
        for i in range(r if self.model.core else 0):
            s = self.model.core_step(e, s, i, ctx)
        cache.pos = L
        self.state = s[:, -1:]
        self.run = torch.zeros(B, dtype=torch.long, device=idx.device)
        return self.model.head(s, ctx)[:, -1]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, recurrences: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one token per row; returns its (B, V) logits and the recurrences each row used."""
        model, cache, r = self.model, self.cache, self._recurrences(recurrences)
        assert cache is not None, "call prefill() first"
        B, pos = tokens.size(0), cache.pos
        ctx = model.context(1, pos, cache)
        digit_pos = None
        if self.cfg.abacus:
            is_digit = torch.isin(tokens, self.digit_tensor.to(tokens.device))
            self.run = torch.where(is_digit, self.run + 1, 0)
            digit_pos = self.run.view(B, 1)
        e = model.embed(tokens.view(B, 1), ctx, digit_pos)
        s = self.state if self.warm_start else model.init_state(e)
        steps = torch.full((B,), r if model.core else 0, dtype=torch.long)
        if model.core and self.criterion is not None:
            s, steps = self._adaptive_loop(e, s, self.max_steps or r, ctx)
        elif model.core:
            for i in range(r):
                s = model.core_step(e, s, i, ctx)
        cache.pos = pos + 1
        self.state = s
        return model.head(s, ctx)[:, -1], steps

    def reorder(self, rows: torch.Tensor):
        """Make row b continue from row rows[b] (beam search): cache, state and digit counters follow."""
        cache = self.cache
        cache.k, cache.v, cache.valid = cache.k[:, rows], cache.v[:, rows], cache.valid[rows]
        self.state, self.run = self.state[rows], self.run[rows]

    def _core_slots(self, iteration: int) -> list[int]:
        return [self.cache.slot("core", j, iteration) for j in range(len(self.model.core))]

    def _adaptive_loop(self, e, s, r, ctx):
        model, cache, crit, pos = self.model, self.cache, self.criterion, ctx.pos
        B = s.size(0)
        done = torch.zeros(B, dtype=torch.bool, device=s.device)
        steps = torch.full((B,), r, dtype=torch.long)
        snap_k = snap_v = None  # each row's K/V of its latest iteration, per core block

        def watch(state):
            if crit.watches == "state":
                return state[:, -1]
            return F.log_softmax(model.head(state, ctx)[:, -1].float(), dim=-1)

        prev, i = watch(s), 0
        for i in range(r):
            s = torch.where(done[:, None, None], s, model.core_step(e, s, i, ctx))
            slots = self._core_slots(i)
            if snap_k is not None and done.any():  # stopped rows: undo this iteration's K/V write
                cache.k[slots, :, :, pos] = torch.where(done[None, :, None, None], snap_k, cache.k[slots, :, :, pos])
                cache.v[slots, :, :, pos] = torch.where(done[None, :, None, None], snap_v, cache.v[slots, :, :, pos])
            snap_k, snap_v = cache.k[slots, :, :, pos].clone(), cache.v[slots, :, :, pos].clone()
            cur = watch(s)
            if i + 1 >= self.min_steps:
                newly = crit.done(prev, cur) & ~done
                steps[newly.cpu()] = i + 1
                done |= newly
            prev = cur
            if bool(done.all()):
                break
        for i2 in range(i + 1, min(r, i + 1 + cache.budget)):  # slots of the skipped iterations
            slots = self._core_slots(i2)
            cache.k[slots, :, :, pos], cache.v[slots, :, :, pos] = snap_k, snap_v
        return s, steps

    @torch.no_grad()
    def _full_forward_logits(self, seqs: list[list[int]], n_prompt: list[int], r: int) -> torch.Tensor:
        """--no-cache: recompute the whole (left-padded) sequences, exactly the training-time computation."""
        idx, valid, digit_pos = self._left_pad(seqs, n_prompt)
        return self.model(idx, r, valid=None if bool(valid.all()) else valid, digit_pos=digit_pos)[:, -1]

    def stream(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        recurrences: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        stop_tokens=(),
        seed: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (tokens, steps), each (B,), one generated token per row at a time, until every row has produced a
        stop token, max_new_tokens is reached or the context is full. steps[b] is the number of recurrences of the
        forward pass that predicted tokens[b]."""
        r = self._recurrences(recurrences)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.model.wte.weight.device).manual_seed(seed)
        stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long)
        seqs = [list(p) for p in prompts]
        if self.use_cache:
            logits = self.prefill(prompts, r)
        else:
            logits = self._full_forward_logits(seqs, [len(p) for p in prompts], r)
        steps = torch.full((len(prompts),), r if self.model.core else 0, dtype=torch.long)
        finished = torch.zeros(len(prompts), dtype=torch.bool)
        L = max(len(p) for p in prompts)
        for n in range(max_new_tokens):
            tokens = sample(logits, temperature, top_k, top_p, gen)
            yield tokens, steps
            finished |= torch.isin(tokens.cpu(), stop)
            if bool(finished.all()) or n + 1 == max_new_tokens or L + n + 1 > self.cfg.seq_len:
                return
            if self.use_cache:
                logits, steps = self.decode(tokens, r)
            else:
                for q, t in zip(seqs, tokens.tolist(), strict=True):
                    q.append(t)
                logits = self._full_forward_logits(seqs, [len(p) for p in prompts], r)

    @torch.no_grad()
    def beam_search(
        self, prompts: list[list[int]], max_new_tokens: int, beams: int, recurrences: int | None = None, stop_tokens=()
    ) -> Generation:
        """Per prompt, the most probable continuation (total log-probability) among `beams` hypotheses kept at each
        step. A finished hypothesis can only be extended by a stop token, at no cost, so finished and open ones
        compete on the same score; beams=1 is greedy decoding."""
        if not self.use_cache:
            raise UserError("beam search needs the KV cache (drop --no-cache)")
        r, B, W = self._recurrences(recurrences), len(prompts), beams
        stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long)
        logits = self.prefill(prompts, r)
        device, V = logits.device, logits.size(-1)
        rows = torch.arange(B, device=device).repeat_interleave(W)
        self.reorder(rows)
        logits, steps = logits[rows], torch.full((B * W,), r if self.model.core else 0, dtype=torch.long)
        score = torch.full((B, W), float("-inf"), device=device)
        score[:, 0] = 0.0  # the W copies are identical: start from one so the first step does not pick duplicates
        hist = torch.zeros(B * W, 0, dtype=torch.long, device=device)
        used = torch.zeros(B * W, 0, dtype=torch.long)
        done = torch.zeros(B * W, dtype=torch.bool, device=device)
        L = max(len(p) for p in prompts)
        for n in range(max_new_tokens):
            logp = F.log_softmax(logits.float(), dim=-1)
            if stop.numel():
                logp[done] = float("-inf")
                logp[done, stop[0]] = 0.0
            score, flat = (score.view(-1, 1) + logp).view(B, W * V).topk(W, dim=-1)
            rows = (torch.arange(B, device=device)[:, None] * W + flat // V).view(-1)
            tokens = (flat % V).view(-1)
            hist = torch.cat([hist[rows], tokens[:, None]], dim=1)
            used = torch.cat([used[rows.cpu()], steps[rows.cpu(), None]], dim=1)
            done = done[rows] | torch.isin(tokens, stop.to(device))
            if bool(done.all()) or n + 1 == max_new_tokens or L + n + 1 > self.cfg.seq_len:
                break
            self.reorder(rows)
            logits, steps = self.decode(tokens, r)
        best = torch.arange(B, device=device) * W + score.argmax(dim=-1)
        out = Generation()
        for b in best.tolist():
            ids = hist[b].tolist()
            n = next((i for i, t in enumerate(ids) if t in set(stop.tolist())), len(ids))
            out.tokens.append(ids[:n])
            out.steps.append(used[b, : n + 1].tolist())  # the stop token's pass too, if there was one
        return out

    def generate(self, prompts: list[list[int]], max_new_tokens: int, **kwargs) -> Generation:
        out = Generation([[] for _ in prompts], [[] for _ in prompts])
        stop = set(kwargs.get("stop_tokens", ()))
        finished = [False] * len(prompts)
        for tokens, steps in self.stream(prompts, max_new_tokens, **kwargs):
            for b, (t, k) in enumerate(zip(tokens.tolist(), steps.tolist(), strict=True)):
                if finished[b]:
                    continue
                out.steps[b].append(k)
                if t in stop:
                    finished[b] = True
                    continue
                out.tokens[b].append(t)
        return out
