"""Forward passes through the KV cache (docs/design.md §2): prefill prompts in parallel (`start`), then extend each
sequence token by token or k tokens at once (`decode`, `extend`), each row of a batch at its own position and under
its own inference policy. The recurrence is the model's one loop (`RecurrentGPT.recur_until`), which here
warm-starts a token from the previous token's final state and stops each token once its row's exit criterion fires.

What to do with the logits (sampling, stop rules, rows joining and leaving) is the generation loop's
(`recurlm.inference.generation`); `generate`, `stream` and `beam_search` here are its front door.
"""

import functools

import torch

from recurlm.config import InferencePolicy, check_exit_fits
from recurlm.errors import UserError
from recurlm.inference import beam, generation
from recurlm.inference.state import DecodeState, InFlight
from recurlm.network.cache import KVCache
from recurlm.network.exits import Halting
from recurlm.network.model import Context, RecurrentGPT
from recurlm.text.tokenizer import significance_ids


def extends_in_parallel(policy: InferencePolicy) -> bool:
    """Whether T new tokens under `policy` are one parallel pass, exactly T single steps: no warm start (a token
    would start from its predecessor's end) and a core slot per iteration (else iteration i would read the
    predecessors' iteration i instead of their final one)."""
    return policy.kv_budget >= policy.steps_cap and not policy.warm_start


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
                g = torch.Generator().manual_seed((seed * 1_000_003 + start + t) % 2**63)
                torch.nn.init.trunc_normal_(out[b, t], std=1.0, a=-3.0, b=3.0, generator=g)
        return out.to(self.device)

    def _policies(self, policy, n: int) -> list[InferencePolicy]:
        policies = list(policy) if isinstance(policy, list | tuple) else [policy] * n
        if len(policies) != n:
            raise UserError(f"{len(policies)} policies for {n} sequences")
        if len({p.kv_budget for p in policies}) > 1:
            raise UserError("sequences with different kv budgets cannot share a batch")
        for p in policies:
            check_exit_fits(p.exit, self.cfg)
        if not self.model.core:  # no loop, no state to carry: a warm start would hand a token its predecessor's
            policies = [p.override(warm_start=False) for p in policies]
        return policies

    def _significance(self, runs: torch.Tensor) -> torch.Tensor:
        """Abacus ids of generated digits from their run counters (0: not a digit), at the model's shift."""
        return runs + self.cfg.abacus_shift * (runs > 0)

    def right_pad(self, seqs: list[list[int]], n_prompt: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
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
                digit_pos[b, : len(q)] = torch.tensor(
                    significance_ids(q, n, self.digit_ids, self.cfg.abacus_shift, self.cfg.abacus_operands)
                )
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
        idx, digit_pos = self.right_pad(prompts, [len(p) for p in prompts])
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
        run = self.model.recur_until(e, s0, prompt_depth, ctx)
        s, steps = run.state, run.steps
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
        s = self.model.recur(e, self.model.init_state(e) if prev is None else prev, r, ctx)
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
            digit_pos = self._significance(digit_pos)
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
            run = model.recur_until(e, s0, state.halt, ctx)
            s, steps = run.state, run.steps
            logits = model.head(s, ctx) if run.logits is None else run.logits  # a KL exit check ran the head
        _put_rows(state.final, ctx, s)
        state.lengths = [n + T for n in state.lengths]
        return logits, steps

    # ---- depth batching: each token of a batch iterates at its own pace ----

    @torch.no_grad()
    def feed(self, state: DecodeState, rows: list[int], tokens) -> None:
        """Depth batching: start a new token on each of `rows` ((len(rows),) ids; rows with no token in flight):
        its embedding and prelude now, its recurrences in the `advance` passes that follow."""
        model, flight = self.model, state.in_flight()
        if not model.core:
            raise UserError("depth batching needs a looped model: a plain GPT's tokens all take one pass")
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        starts = [state.lengths[b] for b in rows]
        if max(starts) + 1 > state.max_len:
            raise UserError(f"sequence of {max(starts) + 1} tokens is longer than its room ({state.max_len})")
        pos = torch.tensor(starts, device=self.device)
        ctx = model.context_at(pos[:, None], state.cache, max(starts) + 1, rows=self._subset(index, state))
        digit_pos = None
        if state.runs is not None:  # generated numbers count their digits from the first (reversed answers)
            run = torch.where(torch.isin(tokens[:, 0], self.digit_tensor), state.runs[index, pos - 1] + 1, 0)
            state.runs[index, pos] = run
            digit_pos = self._significance(run[:, None])
        e = model.embed(tokens, ctx, digit_pos)
        warm = torch.tensor([state.policies[b].warm_start for b in rows], device=self.device)
        s0 = state.final[index, pos - 1][:, None]
        if not bool(warm.all()):
            cold = model.init_state(e, self._noise([state.seeds[b] for b in rows], starts, 1))
            s0 = torch.where(warm[:, None, None], s0, cold)
        flight.active[index], flight.e[index], flight.s[index], flight.done[index] = True, e, s0, 0
        flight.fresh[index] = True  # what its exit watches on s0 is taken in `advance`, beside other tokens' checks
        for memory in flight.memory.values():
            memory[index] = 0
        for b in rows:
            state.lengths[b] += 1

    @torch.no_grad()
    def advance(
        self, state: DecodeState, iterations: int = 1
    ) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        """Depth batching: up to `iterations` more recurrences of every token in flight, each at its own iteration
        (a fresh token under a KL-type exit one fewer, `_first_checks`), before one coda and head call for the tokens
        that completed (their exit fired or their cap was reached; a token that completes early in the pass waits for
        its end). Tokens whose next iteration reads and writes the same cache slot and adapter (all of them, with KV
        budget 1 and no LoRA) share one core call. Returns the rows whose token completed, their (n, V) logits and
        the recurrences each ran (n,)."""
        model, flight = self.model, state.flight
        index = flight.active.nonzero()[:, 0]
        if not len(index):
            return [], None, None
        pos = torch.tensor(state.lengths, device=self.device)[index] - 1
        ctx = model.context_at(pos[:, None], state.cache, int(pos.max()) + 1, rows=self._subset(index, state))
        halt = state.halt.select(index.tolist())
        e, s, done = flight.e[index], flight.s[index], flight.done[index]
        running = torch.arange(len(index), device=self.device)  # the pass's places whose token still iterates
        late = self._first_checks(state, index, ctx, halt, iterations)
        head = None  # the head's logits on every token of the pass, after its last iteration
        for j in range(iterations):
            stepping = running if j or late is None else running[~late]
            for iteration, members in self._iteration_groups(done, stepping, state.cache.budget):
                sub = ctx if len(members) == len(index) else ctx.select(members)
                s = s.index_copy(0, members, model.core_step(e[members], s[members], iteration, sub))
            done = done.index_add(0, stepping, torch.ones_like(stepping))
            rows = index[running]
            every = len(running) == len(index)
            sub, sub_halt = (ctx, halt) if every else (ctx.select(running), halt.select(running.tolist()))
            known = None
            if j == iterations - 1 and sub_halt.rows_watching("logprobs"):
                # A KL-type check runs the coda and head here anyway: run them once for every token of the pass,
                # the ones completing now or earlier in it too, instead of a second call for those
                head = model.head(s, ctx)
                known = head if every else head[running]
            cur = model.watch_rows(s[running], sub, sub_halt, known)
            memory = {k: v[rows] for k, v in flight.memory.items()}
            prev = {k: flight.watch[k][rows] if k in flight.watch else v for k, v in cur.items()}
            stop = sub_halt.stop(done[running] - 1, prev, cur, memory)[:, 0]
            if j == 0 and late is not None:  # the late tokens watched their initial state: that was no check
                stop = stop & ~late
                memory = {k: torch.where(late[:, None], 0, v) for k, v in memory.items()}
            InFlight.put(flight.watch, rows, cur, len(state))
            InFlight.put(flight.memory, rows, memory, len(state))
            running = running[~stop]
            if not len(running):
                break
        flight.s[index], flight.done[index] = s, done
        finished = torch.ones(len(index), dtype=torch.bool, device=self.device)
        finished[running] = False
        finished = finished.nonzero()[:, 0]
        if not len(finished):
            return [], None, None
        rows, steps = index[finished], done[finished]
        sub = ctx.select(finished)
        if state.cache.budget > 1:  # a token stopped below its cap: the slots it skips get its final K/V
            for k in steps.unique().tolist():
                at = (steps == k).nonzero()[:, 0]
                state.cache.fill_skipped(sub.select(at), k, halt.max_cap, halt.cap[finished[at]])
        if head is not None:
            logits = head[finished]
        elif "logits" in flight.watch and set(finished.tolist()) <= set(halt.rows_watching("logprobs")):
            logits = flight.watch["logits"][rows]  # the exit check ran the head on the final state already
        else:
            logits = model.head(s[finished], sub)
        state.final[rows, pos[finished]] = s[finished, 0]
        flight.active[rows] = False
        return rows.tolist(), logits[:, 0], steps

    def _first_checks(
        self, state: DecodeState, index: torch.Tensor, ctx: Context, halt: Halting, iterations: int
    ) -> torch.Tensor | None:
        """What the exits of the pass's fresh tokens (fed since the last pass) watch on their initial state, which
        their first check compares with. Where that is the coda and head's distribution and the pass runs more than
        one recurrence, a fresh token sits out the pass's first core call and its initial state is watched in the
        coda call the other tokens' checks make after it: its own checks then fall one recurrence later, the last
        one in the head call that ends the pass, and the pass makes one coda call fewer. Returns those late tokens
        as a mask over the pass's places (None: none); the other fresh tokens' watches are taken here."""
        flight = state.flight
        fresh = flight.fresh[index]
        if not bool(fresh.any()):
            return None
        flight.fresh[index] = False
        late = torch.zeros_like(fresh)
        if iterations > 1:
            late[halt.rows_watching("logprobs")] = True
            late &= fresh
        now = (fresh & ~late).nonzero()[:, 0]
        if len(now):
            watched = self.model.watch_rows(flight.s[index[now]], ctx.select(now), halt.select(now.tolist()))
            InFlight.put(flight.watch, index[now], watched, len(state))
        return late if bool(late.any()) else None

    @staticmethod
    def _subset(index: torch.Tensor, state: DecodeState) -> torch.Tensor | None:
        """The cache rows of a pass over `index`: None when that is every row in order (attention then reads the
        cache in place instead of gathering the rows)."""
        return None if len(index) == len(state) else index

    def _iteration_groups(
        self, done: torch.Tensor, places: torch.Tensor, budget: int
    ) -> list[tuple[int, torch.Tensor]]:
        """The pass's tokens at `places` grouped by what their next iteration needs (`done`: each token's recurrences
        so far): the core slot (iteration mod budget) and the LoRA adapter (iterations past the last adapter reuse
        it). Per group: an iteration number standing for all, and the members' places."""
        adapters = self.cfg.recur_lora_count if self.cfg.recur_lora_rank else 0
        groups: dict[tuple[int, int], list[int]] = {}
        iteration: dict[tuple[int, int], int] = {}
        for place, it in zip(places.tolist(), done[places].tolist(), strict=True):
            key = (it % budget, min(it, adapters - 1) if adapters else 0)
            groups.setdefault(key, []).append(place)
            iteration.setdefault(key, it)
        return [(iteration[key], torch.tensor(members, device=self.device)) for key, members in groups.items()]

    @torch.no_grad()
    def full_forward(self, seqs: list[list[int]], n_prompt: list[int], policy, seeds=None) -> torch.Tensor:
        """No cache: recompute whole sequences (the training-time computation, no warm start, no exit); (B, V)
        logits after each. The first n_prompt[b] tokens of row b are its prompt (for digit-significance ids)."""
        policies = self._policies(policy, len(seqs))
        idx, digit_pos = self.right_pad(seqs, n_prompt)
        B, L = idx.shape
        ctx = self.model.context(L)
        e = self.model.embed(idx, ctx, digit_pos)
        s0 = self.model.init_state(e, self._noise(seeds or [0] * B, [0] * B, L))
        s = self.model.recur_until(
            e, s0, Halting.build([(p.recurrences, 1, "none") for p in policies], self.device), ctx
        ).state
        return self.model.unembed(self._last(self.model.coda_out(s, ctx), [len(q) for q in seqs]))

    def generate(self, prompts: list[list[int]], max_new_tokens, policy, stop_tokens=(), **kwargs):
        """Every prompt's tokens and steps (`generation.generate`: the one generation loop)."""
        return generation.generate(self, prompts, max_new_tokens, policy, stop_tokens, **kwargs)

    def stream(self, prompts: list[list[int]], max_new_tokens, policy, stop_tokens=(), **kwargs):
        """(rows, tokens, steps) after each decoding step (`generation.stream`: the one generation loop)."""
        return generation.stream(self, prompts, max_new_tokens, policy, stop_tokens, **kwargs)

    def beam_search(self, prompts: list[list[int]], max_new_tokens: int, beams: int, policy, stop_tokens=()):
        """The most probable continuation per prompt among `beams` hypotheses (`beam.beam_search`)."""
        return beam.beam_search(self, prompts, max_new_tokens, beams, policy, stop_tokens)
