"""Generation through the KV cache (DESIGN §2): prefill prompts in parallel, then extend each sequence token by
token (or k tokens at once), with each row of a batch at its own position and under its own inference policy.

Everything about the sequences being decoded lives in a `DecodeState` that the engine takes and returns, so one
engine serves any number of independent batches; rows can join a batch (`DecodeState.cat`), leave it
(`select`), and drop their last tokens (`rollback`). The recurrence itself is the model's one loop
(`RecurrentGPT.recur`), which here warm-starts a token from the previous token's final state and stops each token
once its row's exit criterion fires.
"""

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from recurlm.cache import KVCache
from recurlm.config import InferencePolicy
from recurlm.errors import UserError
from recurlm.exits import Halting
from recurlm.model import Context, RecurrentGPT
from recurlm.tokenizer import significance_ids


@dataclass
class Generation:
    tokens: list[list[int]] = field(default_factory=list)  # generated ids per row, stop token excluded
    # recurrences of the forward pass that produced each of those tokens, and the stop token (it costs a pass too)
    steps: list[list[int]] = field(default_factory=list)


@dataclass
class DecodeState:
    """B sequences being decoded. The engine updates the tensors in place as it extends them and returns the
    state; positions past a row's length hold nothing it will read."""

    cache: KVCache
    lengths: list[int]  # tokens each row holds
    final: torch.Tensor  # (B, max_len, d): each position's final recurrent state (warm start reads the last one)
    runs: torch.Tensor | None  # (B, max_len): digit-run counters of generated tokens (abacus models)
    policies: list[InferencePolicy]
    seeds: list[int]  # per sequence: its random initial states ('random' state_init) do not depend on its batch
    halt: Halting  # per row: recurrence cap and exit of generated tokens

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return self.final.size(1)

    def select(self, rows: list[int]) -> "DecodeState":
        """The given rows, in that order (repeats allowed: beam search). A new state: this one is unchanged."""
        index = torch.tensor(rows, dtype=torch.long, device=self.final.device)
        return DecodeState(
            self.cache.select(index),
            [self.lengths[b] for b in rows],
            self.final[index],
            None if self.runs is None else self.runs[index],
            [self.policies[b] for b in rows],
            [self.seeds[b] for b in rows],
            self.halt.select(rows),
        )

    @staticmethod
    def cat(states: list["DecodeState"]) -> "DecodeState":
        """One batch of all the states' rows (a sequence joins a running batch)."""
        if len({s.cache.budget for s in states}) > 1:
            raise UserError("sequences with different kv budgets cannot share a batch")
        if len({s.max_len for s in states}) > 1:
            raise UserError("sequences with different cache lengths cannot share a batch")
        return DecodeState(
            KVCache.cat([s.cache for s in states]),
            [n for s in states for n in s.lengths],
            torch.cat([s.final for s in states]),
            None if states[0].runs is None else torch.cat([s.runs for s in states]),
            [p for s in states for p in s.policies],
            [x for s in states for x in s.seeds],
            Halting.cat([s.halt for s in states]),
        )

    def rollback(self, n: int | list[int]) -> "DecodeState":
        """Forget the last n tokens of every row (or n[b] of row b): the next extend continues from there."""
        drops = [n] * len(self) if isinstance(n, int) else list(n)
        if any(d < 0 or d >= length for d, length in zip(drops, self.lengths, strict=True)):
            raise UserError(f"cannot roll back {drops} tokens of sequences of {self.lengths}: one must remain")
        self.lengths = [length - d for length, d in zip(self.lengths, drops, strict=True)]
        return self


def extends_in_parallel(policy: InferencePolicy) -> bool:
    """Whether T new tokens under `policy` are one parallel pass, exactly T single steps: no warm start (a token
    would start from its predecessor's end) and a core slot per iteration (else iteration i would read the
    predecessors' iteration i instead of their final one)."""
    return policy.kv_budget >= policy.steps_cap and not policy.warm_start


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


def _rows_at(buf: torch.Tensor, ctx: Context) -> torch.Tensor:
    """buf (B, L, ...) at the new tokens' positions: (B, T, ...)."""
    if ctx.positions is None:
        return buf[:, ctx.start : ctx.start + ctx.cos.size(1)]
    return buf[torch.arange(buf.size(0), device=buf.device)[:, None], ctx.positions]


def _put_rows(buf: torch.Tensor, ctx: Context, value: torch.Tensor):
    if ctx.positions is None:
        buf[:, ctx.start : ctx.start + value.size(1)] = value
    else:
        buf[torch.arange(buf.size(0), device=buf.device)[:, None], ctx.positions] = value.to(buf.dtype)


class Engine:
    """`compile=True` runs each single-token step at a fixed number of recurrences (no adaptive exit) through a
    `torch.compile`d function whose shapes never change: attention reads the whole cache under a mask, so one
    compilation per (batch size, r, warm start) serves every position. The prompt pass, multi-token extends and
    steps under adaptive exit stay eager."""

    def __init__(self, model: RecurrentGPT, digit_ids: set[int] | None = None, compile: bool = False):
        cfg = model.cfg
        if cfg.abacus and not digit_ids:
            raise UserError("this model uses digit-significance ids: pass the tokenizer's digit_ids")
        self.model, self.cfg = model, cfg
        self.device = model.wte.weight.device  # build the engine after moving the model
        self.digit_ids = set(digit_ids or ())
        self.digit_tensor = torch.tensor(sorted(self.digit_ids), dtype=torch.long, device=self.device)
        self.compiled_step = torch.compile(self._fixed_step) if compile else None
        if compile:
            from torch._inductor import config as inductor  # here, not at the top: importing it takes a second

            # Frozen: the weights are constants of the compiled step (build a new engine after changing them).
            # Without freezing, inductor (torch 2.13, CPU) computed a gated model's final state wrongly.
            self.frozen = functools.partial(inductor.patch, freezing=True)

    def _noise(self, seeds: list[int], starts: list[int], T: int) -> torch.Tensor | None:
        """Huginn's random initial state, drawn per sequence and position (so independent of the batch)."""
        if self.cfg.state_init != "random":
            return None
        out = torch.empty(len(seeds), T, self.cfg.d_model)
        for b, (seed, start) in enumerate(zip(seeds, starts, strict=True)):
            for t in range(T):
                g = torch.Generator().manual_seed(seed * 1_000_003 + start + t)
                torch.nn.init.trunc_normal_(out[b, t], std=1.0, a=-3.0, b=3.0, generator=g)
        return out.to(self.device)

    def _policies(self, policy, n: int) -> list[InferencePolicy]:
        policies = list(policy) if isinstance(policy, list | tuple) else [policy] * n
        if len(policies) != n:
            raise UserError(f"{len(policies)} policies for {n} sequences")
        for p in policies:
            if p.recurrences < 1:
                raise UserError(f"recurrences must be >= 1, got {p.recurrences}")
        if len({p.kv_budget for p in policies}) > 1:
            raise UserError("sequences with different kv budgets cannot share a batch")
        if not self.model.core:  # no loop, no state to carry: a warm start would hand a token its predecessor's
            policies = [p.override(warm_start=False) for p in policies]
        return policies

    def _right_pad(self, seqs: list[list[int]], n_prompt: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L) ids padded on the right (causal attention never looks there), and their digit-significance ids
        (the first n_prompt[b] tokens of row b are its prompt)."""
        if not seqs or any(len(q) == 0 for q in seqs):
            raise UserError("every prompt needs at least one token")
        L = max(len(q) for q in seqs)
        if L > self.cfg.seq_len:
            raise UserError(f"prompt of {L} tokens is longer than the context ({self.cfg.seq_len} tokens)")
        idx = torch.zeros(len(seqs), L, dtype=torch.long)
        digit_pos = torch.zeros(len(seqs), L, dtype=torch.long) if self.cfg.abacus else None
        for b, (q, n) in enumerate(zip(seqs, n_prompt, strict=True)):
            idx[b, : len(q)] = torch.tensor(q, dtype=torch.long)
            if digit_pos is not None:
                digit_pos[b, : len(q)] = torch.tensor(significance_ids(q, n, self.digit_ids))
        return idx.to(self.device), None if digit_pos is None else digit_pos.to(self.device)

    @staticmethod
    def _prompt_depth(p: InferencePolicy) -> tuple[int, int, str]:
        """(cap, min steps, exit) of a prompt's tokens: all r, unless the policy lets them exit too."""
        return (p.steps_cap, p.min_steps, p.exit) if p.prompt_exit else (p.recurrences, 1, "none")

    def _last(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """x (B, L, ...) at each row's last position."""
        if min(lengths) == max(lengths):
            return x[:, lengths[0] - 1]
        return x[torch.arange(x.size(0), device=x.device), torch.tensor(lengths, device=x.device) - 1]

    @torch.no_grad()
    def start(
        self,
        prompts: list[list[int]],
        policy: InferencePolicy | list[InferencePolicy],
        seeds: list[int] | None = None,
        max_len: int | None = None,
    ) -> tuple[DecodeState, torch.Tensor, torch.Tensor]:
        """Prefill the prompts in parallel (each at its policy's r) into a new state; returns it, each row's (B, V)
        logits after its prompt and the recurrences its last token ran (B,). `max_len` bounds the tokens a row may
        reach (default: the context)."""
        policies = self._policies(policy, len(prompts))
        seeds = list(seeds) if seeds is not None else [0] * len(prompts)
        max_len = min(max_len or self.cfg.seq_len, self.cfg.seq_len)
        idx, digit_pos = self._right_pad(prompts, [len(p) for p in prompts])
        B, L = idx.shape
        if L > max_len:
            raise UserError(f"prompt of {L} tokens is longer than the room asked for ({max_len} tokens)")
        if self.compiled_step is not None:  # every cache spans the context: one shape for the compiled step
            max_len = self.cfg.seq_len
        dtype = self.model.wte.weight.dtype
        state = DecodeState(
            KVCache(self.cfg, B, max_len, policies[0].kv_budget, self.device, dtype),
            [len(p) for p in prompts],
            torch.zeros(B, max_len, self.cfg.d_model, device=self.device, dtype=dtype),
            torch.zeros(B, max_len, dtype=torch.long, device=self.device) if self.cfg.abacus else None,
            policies,
            seeds,
            Halting.build([(p.steps_cap, p.min_steps, p.exit) for p in policies], self.device),
        )
        ctx = self.model.context(L, [0] * B, state.cache)
        e = self.model.embed(idx, ctx, digit_pos)
        s0 = self.model.init_state(e, self._noise(seeds, [0] * B, L))
        prompt_depth = Halting.build([self._prompt_depth(p) for p in policies], self.device)
        s, steps = self.model.recur(e, s0, prompt_depth, ctx)
        state.final[:, :L] = s
        h = self.model.coda_out(s, ctx)  # every position: the coda's cache slots need them all
        return state, self.model.unembed(self._last(h, state.lengths)), self._last(steps, state.lengths)

    @torch.no_grad()
    def extend(self, state: DecodeState, tokens) -> tuple[DecodeState, torch.Tensor, torch.Tensor]:
        """Append T tokens to every row ((B, T) ids): returns the state, their (B, T, V) logits and the recurrences
        each token ran (B, T). The result is exactly that of T single-token steps: one parallel pass when that is
        the same computation (budget >= every row's step cap, no warm start), token by token otherwise (a warm
        token starts from the previous token's end; with fewer slots than iterations a token's iteration i would
        see its predecessors' iteration i instead of their final one)."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        if tokens.dim() != 2 or tokens.size(0) != len(state):
            raise UserError(
                f"extend needs one row of tokens per sequence ({len(state)}), got shape {list(tokens.shape)}"
            )
        stepwise = not all(extends_in_parallel(p) for p in state.policies)
        if tokens.size(1) > 1 and stepwise:
            parts = [self._extend(state, tokens[:, t : t + 1]) for t in range(tokens.size(1))]
            return state, torch.cat([lg for lg, _ in parts], 1), torch.cat([st for _, st in parts], 1)
        return (state, *self._extend(state, tokens))

    @torch.no_grad()
    def decode(self, state: DecodeState, tokens) -> tuple[DecodeState, torch.Tensor, torch.Tensor]:
        """One token per row ((B,) ids): the state, (B, V) logits and (B,) recurrences."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        if tokens.size(0) != len(state):
            raise UserError(f"decode needs one token per sequence ({len(state)}), got {tokens.size(0)}")
        logits, steps = self._extend(state, tokens)
        return state, logits[:, 0], steps[:, 0]

    def _fixed_step(self, tokens, positions, prev, cache: KVCache, r: int, digit_pos) -> tuple[torch.Tensor, ...]:
        """One token per row at `positions` (B, 1), r recurrences, starting from `prev` (warm) or init_state: the
        (B, 1, V) logits and the final states. Every shape is fixed by the cache: the body `compile=True` compiles."""
        ctx = self.model.context_at(positions, cache, cache.max_len)
        e = self.model.embed(tokens, ctx, digit_pos)
        s, _ = self.model.recur(e, self.model.init_state(e) if prev is None else prev, r, ctx)
        return self.model.head(s, ctx), s

    def _compiles(self, state: DecodeState, T: int) -> bool:
        warm = {p.warm_start for p in state.policies}
        noise = self.cfg.state_init == "random"  # drawn per sequence and position, in Python
        return self.compiled_step is not None and T == 1 and state.halt.uniform and len(warm) == 1 and not noise

    def _extend(self, state: DecodeState, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model, T = self.model, tokens.size(1)
        if max(state.lengths) + T > state.max_len:
            raise UserError(f"sequence of {max(state.lengths) + T} tokens is longer than its room ({state.max_len})")
        ctx = model.context(T, state.lengths, state.cache)
        digit_pos = None
        if state.runs is not None:
            run = self._last(state.runs, state.lengths)
            digit_pos = torch.empty_like(tokens)
            for t in range(T):  # generated numbers count their digits from the first (reversed answers)
                run = torch.where(torch.isin(tokens[:, t], self.digit_tensor), run + 1, 0)
                digit_pos[:, t] = run
            _put_rows(state.runs, ctx, digit_pos)
        if self._compiles(state, T):
            r = state.halt.max_cap
            prev = self._last(state.final, state.lengths)[:, None] if state.policies[0].warm_start else None
            positions = torch.tensor(state.lengths, device=self.device)[:, None]
            with self.frozen():
                logits, s = self.compiled_step(tokens, positions, prev, state.cache, r, digit_pos)
            steps = torch.full((len(state), 1), r if model.core else 0, dtype=torch.long, device=self.device)
        else:
            e = model.embed(tokens, ctx, digit_pos)
            warm = [p.warm_start for p in state.policies]
            s0 = None if all(warm) else model.init_state(e, self._noise(state.seeds, state.lengths, T))
            if any(warm):  # one token per row here (see extend)
                prev = self._last(state.final, state.lengths)[:, None]
                if s0 is None:
                    s0 = prev
                else:
                    s0 = torch.where(torch.tensor(warm, device=self.device)[:, None, None], prev, s0)
            s, steps = model.recur(e, s0, state.halt, ctx)
            logits = model.head(s, ctx) if ctx.logits is None else ctx.logits  # a KL exit check ran the head
        _put_rows(state.final, ctx, s)
        state.lengths = [n + T for n in state.lengths]
        return logits, steps

    @torch.no_grad()
    def full_forward(self, seqs: list[list[int]], n_prompt: list[int], policy, seeds=None) -> torch.Tensor:
        """No cache: recompute whole sequences (the training-time computation, no warm start, no exit); (B, V)
        logits after each. The first n_prompt[b] tokens of row b are its prompt (for digit-significance ids)."""
        policies = self._policies(policy, len(seqs))
        idx, digit_pos = self._right_pad(seqs, n_prompt)
        B, L = idx.shape
        ctx = self.model.context(L)
        e = self.model.embed(idx, ctx, digit_pos)
        s0 = self.model.init_state(e, self._noise(seeds or [0] * B, [0] * B, L))
        s, _ = self.model.recur(e, s0, Halting.build([(p.recurrences, 1, "none") for p in policies]), ctx)
        return self.model.unembed(self._last(self.model.coda_out(s, ctx), [len(q) for q in seqs]))

    def _sample(self, logits: torch.Tensor, policies: list[InferencePolicy], generators: list) -> torch.Tensor:
        """Each row under its own sampling settings and generator, so a row's draw does not depend on its batch."""
        out = logits.argmax(dim=-1)
        for i, p in enumerate(policies):
            if p.temperature > 0:
                out[i] = sample(logits[i : i + 1], p.temperature, p.top_k, p.top_p, generators[i])[0]
        return out

    def stream(
        self,
        prompts: list[list[int]],
        max_new_tokens: int | list[int],
        policy: InferencePolicy | list[InferencePolicy],
        stop_tokens=(),
        seeds: list[int] | None = None,
        use_cache: bool = True,
        tool=None,
    ) -> Iterator[tuple[list[int], list[int], list[int]]]:
        """Yield (rows, tokens, steps) after each decoding step for the rows still generating: the prompt indices,
        the token each generated and the recurrences of the pass that predicted it. A row ends after a stop token,
        its max_new_tokens or a full context; the others go on without it. With a `tool` (`tools.Calculator`), the
        tokens it returns for a row's output so far are fed to that row, one per step, instead of sampled ones."""
        B = len(prompts)
        if not B:
            return
        policies = self._policies(policy, B)
        budgets = [max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens)
        seeds = list(seeds) if seeds is not None else [0] * B
        if not use_cache and any(p.exit != "none" for p in policies):
            raise UserError("adaptive exit needs the KV cache (drop --no-cache)")
        gens = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        stop, core = set(stop_tokens), bool(self.model.core)
        room = min(self.cfg.seq_len, max(len(p) + n for p, n in zip(prompts, budgets, strict=True)))
        rows, seqs = list(range(B)), [list(p) for p in prompts]
        if use_cache:
            state, logits, steps = self.start(prompts, policies, seeds, max_len=room)
            steps = steps.tolist()
        else:
            logits = self.full_forward(seqs, [len(p) for p in prompts], policies, seeds)
            steps = [p.recurrences if core else 0 for p in policies]
        parked: list[int] = []  # positions in `rows` of rows that ended but still ride along (see below)
        forced: list[list[int]] = [[] for _ in range(B)]  # the tool's tokens still to feed each row
        while True:
            live = [i for i in range(len(rows)) if i not in parked]
            tokens = self._sample(logits, [policies[b] for b in rows], [gens[b] for b in rows])
            picked = tokens.tolist()
            if any(forced[rows[i]] for i in live):
                picked = [forced[rows[i]].pop(0) if i in live and forced[rows[i]] else t for i, t in enumerate(picked)]
                tokens = torch.tensor(picked, device=tokens.device)
            yield [rows[i] for i in live], [picked[i] for i in live], [steps[i] for i in live]
            ended = []
            for i in live:
                b = rows[i]
                seqs[b].append(picked[i])
                if tool is not None and not forced[b]:
                    forced[b] = tool.forced(seqs[b][len(prompts[b]) :])
                if picked[i] in stop or len(seqs[b]) - len(prompts[b]) >= budgets[b] or len(seqs[b]) > room:
                    ended.append(i)
            parked += ended
            if len(parked) == len(rows):
                return
            # Leaving a batch copies its cache, so a row that ends rides along, cut back to one token and fed
            # whatever it samples (rolled back after each step), until a quarter of the batch has ended.
            if 4 * len(parked) >= len(rows) or not use_cache:
                keep = [i for i in range(len(rows)) if i not in parked]
                if use_cache:
                    state = state.select(keep)
                rows, tokens, parked = [rows[i] for i in keep], tokens[keep], []
            elif ended:
                state.rollback([state.lengths[i] - 1 if i in ended else 0 for i in range(len(rows))])
            if not use_cache:
                n_prompt = [len(prompts[b]) for b in rows]
                logits = self.full_forward(
                    [seqs[b] for b in rows], n_prompt, [policies[b] for b in rows], [seeds[b] for b in rows]
                )
                steps = [policies[b].recurrences if core else 0 for b in rows]
                continue
            state, logits, used = self.decode(state, tokens)
            if parked:
                state.rollback([int(i in parked) for i in range(len(rows))])
            steps = used.tolist()

    def generate(self, prompts: list[list[int]], max_new_tokens, policy, stop_tokens=(), **kwargs) -> Generation:
        out = Generation([[] for _ in prompts], [[] for _ in prompts])
        stop = set(stop_tokens)
        for rows, tokens, steps in self.stream(prompts, max_new_tokens, policy, stop_tokens, **kwargs):
            for b, t, k in zip(rows, tokens, steps, strict=True):
                out.steps[b].append(k)
                if t not in stop:
                    out.tokens[b].append(t)
        return out

    @torch.no_grad()
    def beam_search(
        self, prompts: list[list[int]], max_new_tokens: int, beams: int, policy: InferencePolicy, stop_tokens=()
    ) -> Generation:
        """Per prompt, the most probable continuation (total log-probability) among `beams` hypotheses kept at each
        step. A finished hypothesis can only be extended by a stop token, at no cost, so finished and open ones
        compete on the same score; beams=1 is greedy decoding."""
        B, W = len(prompts), beams
        stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long)
        room = min(self.cfg.seq_len, max(len(p) for p in prompts) + max_new_tokens)
        state, logits, steps = self.start(prompts, policy, max_len=room)
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
            state, logits, steps = self.decode(state.select(rows.tolist()), tokens)
        best = torch.arange(B, device=device) * W + score.argmax(dim=-1)
        out = Generation()
        for b in best.tolist():
            ids = hist[b].tolist()
            n = next((i for i, t in enumerate(ids) if t in set(stop.tolist())), len(ids))
            out.tokens.append(ids[:n])
            out.steps.append(used[b, : n + 1].tolist())  # the stop token's pass too, if there was one
        return out
