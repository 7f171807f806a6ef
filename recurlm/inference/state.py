"""The sequences a batch is decoding: their KV cache, lengths, final states and per-row policies. The engine takes
a `DecodeState` and returns it, so one engine serves any number of independent batches; rows can join a batch
(`cat`), leave it (`select`), and drop their last tokens (`rollback`)."""

from dataclasses import dataclass

import torch

from recurlm.config import InferencePolicy
from recurlm.errors import UserError
from recurlm.network.cache import KVCache
from recurlm.network.exits import Halting


@dataclass
class InFlight:
    """Depth batching (`Engine.feed` / `Engine.advance`): per row, the token between its prelude and its coda, if
    any. A core pass runs one more recurrence of every token in flight, whatever its iteration, so a row pays for
    its own depth only."""

    active: torch.Tensor  # (B,) bool: the row has a token in flight
    e: torch.Tensor  # (B, 1, d) its prelude output, injected at every recurrence
    s: torch.Tensor  # (B, 1, d) its state
    done: torch.Tensor  # (B,) long: recurrences it has run
    fresh: torch.Tensor  # (B,) bool: fed since the last pass, so what its exit watches on s0 is still to be taken
    watch: dict[str, torch.Tensor]  # what its exit criterion watched after the last recurrence, (B, 1, ...) each
    memory: dict[str, torch.Tensor]  # what stateful criteria carry between recurrences (argmax's streak), (B, 1)

    @classmethod
    def empty(cls, batch: int, d: int, device, dtype) -> "InFlight":
        return cls(
            torch.zeros(batch, dtype=torch.bool, device=device),
            torch.zeros(batch, 1, d, device=device, dtype=dtype),
            torch.zeros(batch, 1, d, device=device, dtype=dtype),
            torch.zeros(batch, dtype=torch.long, device=device),
            torch.zeros(batch, dtype=torch.bool, device=device),
            {},
            {},
        )

    def select(self, index: torch.Tensor) -> "InFlight":
        return InFlight(
            self.active[index], self.e[index], self.s[index], self.done[index], self.fresh[index],
            {k: v[index] for k, v in self.watch.items()}, {k: v[index] for k, v in self.memory.items()},
        )  # fmt: skip

    @staticmethod
    def cat(parts: list["InFlight"]) -> "InFlight":
        def joined(name: str) -> dict[str, torch.Tensor]:  # a part without a buffer has no token that needs it
            out = {}
            for k in set().union(*(getattr(p, name) for p in parts)):
                like = next(getattr(p, name)[k] for p in parts if k in getattr(p, name))
                out[k] = torch.cat([getattr(p, name).get(k, like.new_zeros((len(p.active), *like.shape[1:])))
                                    for p in parts])  # fmt: skip
            return out

        return InFlight(
            torch.cat([p.active for p in parts]), torch.cat([p.e for p in parts]), torch.cat([p.s for p in parts]),
            torch.cat([p.done for p in parts]), torch.cat([p.fresh for p in parts]), joined("watch"),
            joined("memory"),
        )  # fmt: skip

    @staticmethod
    def put(buffers: dict[str, torch.Tensor], index: torch.Tensor, values: dict[str, torch.Tensor], batch: int):
        """buffers[k][index] = values[k], making a (batch, ...) buffer for a key seen the first time."""
        for k, v in values.items():
            if k not in buffers:
                buffers[k] = torch.zeros((batch, *v.shape[1:]), dtype=v.dtype, device=v.device)
            buffers[k][index] = v


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
    flight: InFlight | None = None  # depth batching's tokens in flight (None: none ever was)

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
            None if self.flight is None else self.flight.select(index),
        )

    @staticmethod
    def check_joinable(states: list["DecodeState"]):
        if len({s.cache.budget for s in states}) > 1:
            raise UserError("sequences with different kv budgets cannot share a batch")
        if len({s.max_len for s in states}) > 1:
            raise UserError("sequences with different cache lengths cannot share a batch")

    @staticmethod
    def cat(states: list["DecodeState"]) -> "DecodeState":
        """One batch of all the states' rows (a sequence joins a running batch)."""
        DecodeState.check_joinable(states)
        return DecodeState(
            KVCache.cat([s.cache for s in states]),
            [n for s in states for n in s.lengths],
            torch.cat([s.final for s in states]),
            None if states[0].runs is None else torch.cat([s.runs for s in states]),
            [p for s in states for p in s.policies],
            [x for s in states for x in s.seeds],
            Halting.cat([s.halt for s in states]),
            None if all(s.flight is None for s in states) else InFlight.cat([s.in_flight() for s in states]),
        )

    def put(self, rows: list[int], other: "DecodeState"):
        """Overwrite the given rows (sequences that ended) with `other`'s rows, in order, in place: a sequence joins a
        running batch without copying the batch."""
        DecodeState.check_joinable([self, other])
        index = torch.tensor(rows, dtype=torch.long, device=self.final.device)
        self.cache.put(index, other.cache)
        self.final[index] = other.final
        if self.runs is not None:
            self.runs[index] = other.runs
        for b, n, policy, seed in zip(rows, other.lengths, other.policies, other.seeds, strict=True):
            self.lengths[b], self.policies[b], self.seeds[b] = n, policy, seed
        self.halt = self.halt.put(index, other.halt)
        if self.flight is not None:  # a new row has no token in flight
            self.flight.active[index] = False

    def in_flight(self) -> InFlight:
        """The tokens in flight (depth batching), set up empty the first time."""
        if self.flight is None:
            self.flight = InFlight.empty(len(self), self.final.size(-1), self.final.device, self.final.dtype)
        return self.flight

    def rollback(self, n: int | list[int]) -> "DecodeState":
        """Forget the last n tokens of every row (or n[b] of row b): the next extend continues from there."""
        if self.flight is not None and bool(self.flight.active.any()):
            raise UserError("cannot roll back sequences with a token in flight (depth batching)")
        drops = [n] * len(self) if isinstance(n, int) else list(n)
        if any(d < 0 or d >= length for d, length in zip(drops, self.lengths, strict=True)):
            raise UserError(f"cannot roll back {drops} tokens of sequences of {self.lengths}: one must remain")
        self.lengths = [length - d for length, d in zip(self.lengths, drops, strict=True)]
        return self
