"""The one generation loop: the CLI, evaluation, the terminal chat and the server's batcher all drive it.

A `GenerationLoop` holds the sequences being generated as rows of one batch. Each `step` picks one token per row
(sampled under the row's own policy and generator, or forced by the calculator tool), decides which rows end and
why (a stop token, their token budget, a full context, a cancellation), lets the ended rows leave and runs one
decoding step for the rest; `add` prefills new sequences into the running batch between steps. A row's tokens
are those it would get alone: rows never read each other (`DecodeState`).
"""

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from recurlm.config import InferencePolicy
from recurlm.errors import UserError
from recurlm.inference.sampling import sample_rows
from recurlm.inference.state import DecodeState


@dataclass
class Generation:
    tokens: list[list[int]] = field(default_factory=list)  # generated ids per row, stop token excluded
    # recurrences of the forward pass that produced each of those tokens, and the stop token (it costs a pass too)
    steps: list[list[int]] = field(default_factory=list)


@dataclass(eq=False)
class Sequence:
    """One sequence to generate, and what has come of it so far."""

    prompt: list[int]
    max_new_tokens: int
    policy: InferencePolicy
    seed: int = 0  # its sampling generator and its random initial states ('random' state_init)
    generated: list[int] = field(default_factory=list)  # the stop token excluded
    steps: list[int] = field(default_factory=list)  # recurrences of the pass behind each token, the stop token's too
    # Why it ended: 'stop' (a stop token), 'length' (max_new_tokens), 'context' (the context is full), 'cancelled'
    finish: str | None = None
    cancelled: bool = False  # set from outside (its client went away): it ends at the next step, without a token
    forced: list[int] = field(default_factory=list)  # the tool's tokens still to feed
    generator: torch.Generator | None = None


@dataclass
class Event:
    """What one step did for one sequence: the token it picked (None when it ended without one) and the recurrences
    of the pass that predicted it, and why it ended, if it did."""

    seq: Sequence
    token: int | None
    steps: int
    finish: str | None


class GenerationLoop:
    """`stop_tokens` end a row (the token is reported, not kept); `tool` (`text.calculator.Calculator`) forces its
    tokens into a row whose output calls it; `max_len` bounds each row's prompt and output together (default: the
    context); without `use_cache` every step recomputes the whole sequences (no adaptive exit then).

    Rows whose depths differ (another r, an adaptive exit) decode by depth batching (`Engine.feed` / `advance`)
    where that pays (`_depthwise`): each core pass runs one recurrence of every row's token, and a row whose token
    completes picks its next one while the others still iterate, so a row pays for its own depth, not the batch's
    deepest (docs/design.md §6). A step then reports the rows whose token completed; rows of one depth all step
    together."""

    batching = "auto"  # 'auto': depth batching where it pays; 'depth': whenever the rows differ; 'dense': never

    def __init__(self, engine, stop_tokens=(), tool=None, max_len: int | None = None, use_cache: bool = True):
        self.engine, self.stop, self.tool, self.use_cache = engine, set(stop_tokens), tool, use_cache
        self.max_len = min(max_len or engine.cfg.seq_len, engine.cfg.seq_len)
        self._empty()

    def _empty(self):
        self.rows: list[Sequence] = []  # the batch's rows, in order
        self.parked: set[int] = set()  # rows that ended but still ride along (see `step`)
        self.state: DecodeState | None = None
        self.logits: torch.Tensor | None = None  # (rows, V): what each ready row picks its next token from
        self.next_steps: list[int] = []  # the recurrences behind those logits
        self.ready: set[int] = set()  # rows whose logits are there to pick from (the others have a token in flight)

    def __len__(self) -> int:
        """Sequences still generating."""
        return len(self.rows) - len(self.parked)

    @property
    def sequences(self) -> list[Sequence]:
        return [self.rows[i] for i in self._live()]

    def _live(self) -> list[int]:
        """The rows still generating (not parked), in order."""
        return [i for i in range(len(self.rows)) if i not in self.parked]

    def add(self, seqs: list[Sequence]):
        """Prefill new sequences into the batch (all or, on an error, none of them). They take the places of rows
        that ended first (no copy of the batch's cache), and only the rest grow the batch."""
        if not seqs:
            return
        for s in seqs:  # any int is a seed: torch takes 64 bits
            s.generator = torch.Generator(device=self.engine.device).manual_seed(s.seed % 2**64)
        if not self.use_cache:
            logits, steps = self._full_forward(seqs), self._fixed_steps(seqs)
            self._append(seqs, None, logits, steps)
            return
        fresh, logits, steps = self.engine.start(
            [s.prompt for s in seqs], [s.policy for s in seqs], [s.seed for s in seqs], max_len=self.max_len
        )
        steps = steps.tolist()
        if self.state is None:
            self._append(seqs, fresh, logits, steps)
            return
        DecodeState.check_joinable([self.state, fresh])
        places = sorted(self.parked)[: len(seqs)]
        k = len(places)
        if k:
            self.state.put(places, fresh if k == len(seqs) else fresh.select(list(range(k))))
            for place, seq, row_steps in zip(places, seqs, steps, strict=False):
                self.rows[place], self.next_steps[place] = seq, row_steps
            self.logits[places] = logits[:k].to(self.logits.dtype)
            self.parked -= set(places)
            self.ready |= set(places)
        if k < len(seqs):
            self._append(seqs[k:], DecodeState.cat([self.state, fresh.select(list(range(k, len(seqs))))]),
                         logits[k:], steps[k:])  # fmt: skip

    def _append(self, seqs: list[Sequence], state: DecodeState | None, logits: torch.Tensor, steps: list[int]):
        """New rows at the end of the batch: `state` is the whole batch's, theirs included."""
        self.ready |= set(range(len(self.rows), len(self.rows) + len(seqs)))
        self.state, self.rows = state, self.rows + seqs
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])
        self.next_steps += steps

    def step(self) -> list[Event]:
        """One token for every row whose logits are ready; the rows that end leave, the others go on decoding."""
        if not len(self):
            return []
        if self.use_cache and 4 * len(self.parked) >= len(self.rows):
            # Ended rows leave once they are a quarter of the batch: not in the step they end, so that sequences
            # joining in between take their places (`add`) instead of the batch copying its cache twice
            self._compact()
        rows = self.rows
        depthwise = self._depthwise()
        turn = [i for i in range(len(rows)) if i not in self.parked and (i in self.ready or rows[i].cancelled)]
        sampled = sorted(self.ready - self.parked) if depthwise else list(range(len(rows)))  # parked: rolled back
        picked = [0] * len(rows)
        if sampled:
            tokens = sample_rows(self.logits[sampled], [rows[i].policy for i in sampled],
                                 [rows[i].generator for i in sampled])  # fmt: skip
            for i, token in zip(sampled, tokens.tolist(), strict=True):
                picked[i] = token
        events, ended = [], []
        for i in turn:
            seq = rows[i]
            if seq.cancelled:
                seq.finish = "cancelled"
                events.append(Event(seq, None, 0, seq.finish))
                ended.append(i)
                continue
            token = picked[i] = seq.forced.pop(0) if seq.forced else picked[i]
            seq.steps.append(self.next_steps[i])
            if token in self.stop:
                seq.finish = "stop"
            else:
                seq.generated.append(token)
                if self.tool is not None and not seq.forced:
                    seq.forced = self.tool.forced(seq.generated)
                if len(seq.generated) >= seq.max_new_tokens:
                    seq.finish = "length"
                elif len(seq.prompt) + len(seq.generated) > self.max_len:  # no room to feed it back
                    seq.finish = "context"
            events.append(Event(seq, token, self.next_steps[i], seq.finish))
            if seq.finish:
                ended.append(i)
        fed = [i for i in turn if i not in ended]
        self.parked.update(ended)
        if len(self.parked) == len(self.rows):
            self._empty()
        elif depthwise:
            self._advance_depthwise(picked, fed, ended)
        else:
            self._advance(picked, ended)
        return events

    def _depthwise(self) -> bool:
        """Whether the rows decode by depth batching: tokens are in flight, or the rows still generating differ in
        depth by more than it costs. Depth batching saves the core recurrences the shallower rows would idle
        through and pays with more, smaller calls of the prelude and coda (rows finish their tokens in different
        passes): it wins where the looped core outweighs the plain blocks, and loses on a model like the shipped
        recursive-nanochat-mini ((3,1,4), exits capped at 8: 0.96x against the dense loop's 1.35x, README)."""
        cfg = self.engine.model.cfg
        if not self.use_cache or not cfg.n_core or self.batching == "dense":
            return False
        flight = self.state.flight
        if flight is not None and bool(flight.active.any()):
            return True
        live = self._live()
        if len(live) < 2:
            return False
        halt = self.state.halt.select(live)
        if halt.uniform:
            return False
        return self.batching == "depth" or cfg.n_core * halt.spread > cfg.n_prelude + cfg.n_coda

    def _compact(self):
        """Drop the parked rows from the batch (leaving copies the cache)."""
        keep = self._live()
        where = {i: n for n, i in enumerate(keep)}
        if self.use_cache:
            self.state = self.state.select(keep)
        self.rows, self.next_steps = [self.rows[i] for i in keep], [self.next_steps[i] for i in keep]
        self.logits = self.logits[keep]
        self.ready, self.parked = {where[i] for i in self.ready if i in where}, set()

    def _advance_depthwise(self, picked: list[int], fed: list[int], ended: list[int]):
        flight = self.state.in_flight()
        flight.active[ended] = False  # a row cancelled with a token in flight drops it
        self.ready -= set(fed) | set(ended)
        if fed:
            self.engine.feed(self.state, fed, [picked[i] for i in fed])
        # A pass runs as many recurrences as the shallowest fixed-depth row's r, so that row's tokens take one pass
        # each, with one prelude and one coda call as in a dense step (at one recurrence a pass, an r = 2 token took
        # two passes' calls). A token that completes earlier in a pass waits for its end.
        live = self._live()
        iterations = self.state.halt.select(live).shallowest_fixed
        while not self.ready - self.parked:  # core passes until some row's token completes
            done, logits, steps = self.engine.advance(self.state, iterations)
            if done:
                self.logits[done] = logits
                for i, k in zip(done, steps.tolist(), strict=True):
                    self.next_steps[i] = k
                self.ready |= set(done)

    def _advance(self, picked: list[int], ended: list[int]):
        # Leaving a batch copies its cache, so a row that ends rides along, cut back to one token and fed whatever
        # it samples (rolled back after each step), until a quarter of the batch has ended (`step`).
        if not self.use_cache:
            self._compact()
        elif ended:
            self.state.rollback([self.state.lengths[i] - 1 if i in ended else 0 for i in range(len(self.rows))])
        self.ready = set(range(len(self.rows)))
        if not self.use_cache:
            self.logits, self.next_steps = self._full_forward(self.rows), self._fixed_steps(self.rows)
            return
        self.state, self.logits, used = self.engine.decode(self.state, torch.tensor(picked, device=self.engine.device))
        if self.parked:
            self.state.rollback([int(i in self.parked) for i in range(len(self.rows))])
        self.next_steps = used.tolist()

    def _full_forward(self, seqs: list[Sequence]) -> torch.Tensor:
        return self.engine.full_forward(
            [s.prompt + s.generated for s in seqs], [len(s.prompt) for s in seqs], [s.policy for s in seqs],
            [s.seed for s in seqs],
        )  # fmt: skip

    def _fixed_steps(self, seqs: list[Sequence]) -> list[int]:
        return [s.policy.recurrences if self.engine.model.core else 0 for s in seqs]


def stream(
    engine,
    prompts: list[list[int]],
    max_new_tokens: int | list[int],
    policy: InferencePolicy | list[InferencePolicy],
    stop_tokens=(),
    seeds: list[int] | None = None,
    use_cache: bool = True,
    tool=None,
) -> Iterator[tuple[list[int], list[int], list[int]]]:
    """Yield (rows, tokens, steps) after each step for the prompts still generating: their indices, the token each
    picked (a stop token too: it ends the row) and the recurrences of the pass that predicted it."""
    if not prompts:
        return
    if any(not p for p in prompts):
        raise UserError("every prompt needs at least one token")
    policies = list(policy) if isinstance(policy, list | tuple) else [policy] * len(prompts)
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    seeds = list(seeds) if seeds is not None else [0] * len(prompts)
    if not use_cache and any(p.exit != "none" for p in policies):
        raise UserError("adaptive exit needs the KV cache (drop --no-cache)")
    seqs = [Sequence(list(p), n, pol, seed) for p, n, pol, seed in zip(prompts, budgets, policies, seeds, strict=True)]
    index = {id(s): b for b, s in enumerate(seqs)}
    for events in run(engine, seqs, stop_tokens, tool, use_cache):
        yield [index[id(e.seq)] for e in events], [e.token for e in events], [e.steps for e in events]


def run(engine, seqs: list[Sequence], stop_tokens=(), tool=None, use_cache: bool = True) -> Iterator[list[Event]]:
    """Generate the sequences together, yielding each step's events; each sequence's `finish` says why it ended."""
    room = max(len(s.prompt) + s.max_new_tokens for s in seqs)  # no cache longer than any row can grow
    loop = GenerationLoop(engine, stop_tokens, tool, max_len=room, use_cache=use_cache)
    loop.add(seqs)
    while len(loop):
        yield loop.step()


def generate(engine, prompts, max_new_tokens, policy, stop_tokens=(), **kwargs) -> Generation:
    """Every prompt's generated tokens (stop token excluded) and the steps behind each (stop token included)."""
    out = Generation([[] for _ in prompts], [[] for _ in prompts])
    stop = set(stop_tokens)
    for rows, tokens, steps in stream(engine, prompts, max_new_tokens, policy, stop_tokens, **kwargs):
        for b, t, k in zip(rows, tokens, steps, strict=True):
            out.steps[b].append(k)
            if t not in stop:
                out.tokens[b].append(t)
    return out
