"""KV cache across recurrences (DESIGN §2).

One slot per prelude block, `budget` slots per core block, one per coda block. Iteration i of a token reads and
writes core slot i mod budget, so a past token exposes in slot j its latest iteration congruent to j:
budget = r reproduces the uncached forward exactly; budget = 1 (recursive nanochat) makes every iteration of a new
token attend to the past tokens' final iteration and keeps core memory independent of r.
"""

import torch

from recurlm.config import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, budget: int, device=None, dtype=torch.float32):
        assert budget >= 1
        self.cfg, self.budget, self.max_len = cfg, budget, max_len
        n_slots = cfg.n_prelude + cfg.n_core * budget + cfg.n_coda
        shape = (n_slots, batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)  # False on left padding
        self.padded = False
        self.pos = 0  # tokens written so far (the same for every row: prompts are left-padded)

    def slot(self, group: str, index: int, iteration: int = 0) -> int:
        cfg = self.cfg
        if group == "prelude":
            return index
        if group == "core":
            return cfg.n_prelude + index * self.budget + iteration % self.budget
        return cfg.n_prelude + cfg.n_core * self.budget + index

    def update(self, slot: int, k: torch.Tensor, v: torch.Tensor, pos: int):
        """Write (B, H, T, D) keys/values at positions pos..pos+T-1; return all keys/values up to there."""
        end = pos + k.size(2)
        self.k[slot, :, :, pos:end] = k
        self.v[slot, :, :, pos:end] = v
        return self.k[slot, :, :, :end], self.v[slot, :, :, :end]

    def core_bytes(self) -> int:
        """Memory held by the core blocks' slots: depends on the budget, never on r."""
        per_slot = self.k[0].numel() * self.k.element_size() * 2
        return self.cfg.n_core * self.budget * per_slot
