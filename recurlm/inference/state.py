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
