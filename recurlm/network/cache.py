"""KV cache across recurrences (docs/design.md §2).

One slot per prelude block, `budget` slots per core block, one per coda block. Iteration i of a token reads and
writes core slot i mod budget, so a past token exposes in slot j its latest iteration congruent to j:
budget = r reproduces the uncached forward exactly; budget = 1 (recursive nanochat) makes every iteration of a new
token attend to the past tokens' final iteration and keeps core memory independent of r.

Each row fills its own positions: a row's length lives in the decoding state, not here, and attention masks keys
past each query's position, so rows of one batch may hold sequences of any lengths.
"""

from dataclasses import dataclass

import torch

from recurlm.config import ModelConfig

# attention of a subset of the cache's rows reads every row in place once the subset holds this share of them (measured
# crossover at 2 threads: 7 of 16 rows)
IN_PLACE_SHARE = 0.5


@dataclass
class Stopped:
    """Under adaptive exit, per new token (B, T bool each): which still iterate, and which have stopped below their
    row's cap (the slots of the iterations they skip get their final K/V)."""

    active: torch.Tensor
    skipping: torch.Tensor


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, budget: int, device=None, dtype=torch.float32):
        assert budget >= 1
        self.cfg, self.budget, self.max_len = cfg, budget, max_len
        n_slots = cfg.n_prelude + cfg.n_core * budget + cfg.n_coda
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        # One tensor per slot, not one stacked tensor: a compiled decoding step then writes a slot in place, where
        # writing through a view of a stacked tensor makes inductor copy the whole cache at every layer.
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_slots)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_slots)]

    def slot(self, group: str, index: int, iteration: int = 0) -> int:
        cfg = self.cfg
        if group == "prelude":
            return index
        if group == "core":
            return cfg.n_prelude + index * self.budget + iteration % self.budget
        return cfg.n_prelude + cfg.n_core * self.budget + index

    def core_slot(self, index: int, iteration: int) -> tuple[int, int | None]:
        """Core block `index` at `iteration`: the slot it writes, and the slot holding the iteration before."""
        hold = self.slot("core", index, iteration - 1) if iteration else None
        return self.slot("core", index, iteration), hold

    @staticmethod
    def _rows(ctx) -> torch.Tensor:
        """(B, 1): the cache row of each of the batch's rows."""
        if ctx.rows is not None:
            return ctx.rows[:, None]
        return torch.arange(ctx.positions.size(0), device=ctx.positions.device)[:, None]

    def _index(self, ctx) -> torch.Tensor:
        """(B * H * T,): where each new token's (row, head, position) lies in a slot seen as (rows * H * L, D) rows:
        one index_select / index_copy_ along it moves a pass's keys, cheaper than advanced indexing over two
        non-adjacent dimensions (row and position). Computed once per pass: every slot has the same layout."""
        if ctx.slot_index is None:
            H, L = self.cfg.kv_heads, self.max_len
            heads = torch.arange(H, device=ctx.positions.device)[None, :, None]
            ctx.slot_index = ((self._rows(ctx)[:, :, None] * H + heads) * L + ctx.positions[:, None, :]).reshape(-1)
        return ctx.slot_index

    def _at(self, slot: int, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, H, T, D) keys and values at the new tokens' positions."""
        if ctx.positions is None:
            end = ctx.start + ctx.cos.size(1)
            return self.k[slot][:, :, ctx.start : end], self.v[slot][:, :, ctx.start : end]
        B, T = ctx.positions.shape
        index, shape = self._index(ctx), (B, self.cfg.kv_heads, T, self.cfg.head_dim)
        k, v = (t.view(-1, t.size(-1)).index_select(0, index).view(shape) for t in (self.k[slot], self.v[slot]))
        return k, v

    def _put(self, slot: int, k: torch.Tensor, v: torch.Tensor, ctx):
        if ctx.positions is None:
            end = ctx.start + k.size(2)
            self.k[slot][:, :, ctx.start : end] = k
            self.v[slot][:, :, ctx.start : end] = v
            return
        index, keys, values = self._index(ctx), self.k[slot], self.v[slot]
        keys.view(-1, keys.size(-1)).index_copy_(0, index, k.reshape(-1, k.size(-1)).to(keys.dtype))
        values.view(-1, values.size(-1)).index_copy_(0, index, v.reshape(-1, v.size(-1)).to(values.dtype))

    def update(self, slot: tuple[int, int | None], k: torch.Tensor, v: torch.Tensor, ctx, stopped: Stopped | None):
        """Write the new tokens' (B, H, T, D) keys/values; return every row's keys/values up to ctx.keys.

        Under adaptive exit (`stopped`) a token that has stopped does not write what this iteration computed from its
        frozen state: below its row's cap it copies its previous iteration's K/V (its final one) into this
        iteration's slot, at or above the cap it leaves the slot as it is."""
        write, hold = slot
        if stopped is not None and hold is not None:
            cur_k, cur_v = self._at(write, ctx)
            prev_k, prev_v = self._at(hold, ctx)
            active, skipping = stopped.active[:, None, :, None], stopped.skipping[:, None, :, None]
            k = torch.where(active, k, torch.where(skipping, prev_k, cur_k))
            v = torch.where(active, v, torch.where(skipping, prev_v, cur_v))
        keys, values = self.k[write], self.v[write]
        if ctx.positions is None:  # every row at one position: plain slices (the batch-1 decoding path)
            keys[:, :, ctx.start : ctx.start + k.size(2)] = k
            values[:, :, ctx.start : ctx.start + k.size(2)] = v
        else:
            self._put(write, k, v, ctx)
        if ctx.rows is not None and not self.reads_in_place(ctx):  # some of the cache's rows: theirs only
            return keys[ctx.rows, :, : ctx.keys], values[ctx.rows, :, : ctx.keys]
        return keys[:, :, : ctx.keys], values[:, :, : ctx.keys]

    def reads_in_place(self, ctx) -> bool:
        """Whether attention of one new token on each of some of the cache's rows (`ctx.rows`) reads every row's
        keys in place (`model.attend_rows`) rather than a copy of theirs: the copy writes and reads again what
        attending over the other rows only reads, so it pays only for few rows (measured crossover:
        `benchmarks/depth_batching.py`). Several new tokens (a prompt) would add the other rows' queries' work."""
        return (
            ctx.rows is not None and ctx.positions.size(1) == 1 and len(ctx.rows) >= IN_PLACE_SHARE * self.k[0].size(0)
        )

    def fill_skipped(self, ctx, first: int, r: int, caps: torch.Tensor):
        """Every token stopped before iteration `first`: give the slots of iterations first .. r-1 that are below
        its row's cap its final K/V (one pass over the budget suffices: later iterations reuse those slots). The final
        K/V is read once per block; a row's slot at or above its cap is left as it is."""
        iterations = range(first, min(r, first + self.budget))
        if not iterations:
            return
        every_row_below = int(caps.min()) > iterations[-1]  # the usual case: no slot to keep, no select
        for j in range(self.cfg.n_core):
            final_k, final_v = self._at(self.core_slot(j, first)[1], ctx)
            for it in iterations:
                write = self.slot("core", j, it)
                if every_row_below:
                    self._put(write, final_k, final_v, ctx)
                    continue
                below = (it < caps)[:, None, None, None]
                cur_k, cur_v = self._at(write, ctx)
                self._put(write, torch.where(below, final_k, cur_k), torch.where(below, final_v, cur_v), ctx)

    def select(self, rows: torch.Tensor) -> "KVCache":
        """A cache of the given rows (in that order; repeats allowed: beam search)."""
        out = KVCache.__new__(KVCache)
        out.cfg, out.budget, out.max_len = self.cfg, self.budget, self.max_len
        out.k, out.v = [k[rows] for k in self.k], [v[rows] for v in self.v]
        return out

    def put(self, rows: torch.Tensor, other: "KVCache"):
        """Overwrite the given rows with `other`'s (in order), in place."""
        for mine, theirs in zip(self.k + self.v, other.k + other.v, strict=True):
            mine[rows] = theirs.to(mine.dtype)

    @staticmethod
    def cat(parts: list["KVCache"]) -> "KVCache":
        out = KVCache.__new__(KVCache)
        first = parts[0]
        out.cfg, out.budget, out.max_len = first.cfg, first.budget, first.max_len
        out.k = [torch.cat(slots) for slots in zip(*(p.k for p in parts), strict=True)]
        out.v = [torch.cat(slots) for slots in zip(*(p.v for p in parts), strict=True)]
        return out

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    def core_bytes(self) -> int:
        """Memory held by the core blocks' slots: depends on the budget, never on r."""
        return self.cfg.n_core * self.budget * 2 * self.k[0].nbytes
