"""When a token stops iterating: adaptive-exit criteria (RR-SLM's convergence check, Huginn's criteria), one small
class each, and `Halting`, which applies them per row of a batch with each row's own cap and thresholds.

A criterion compares what it watches at two successive iterations. `watches` tells the loop what to hand it: the
recurrent state ('state') or the log-probabilities of the coda and head run on that state ('logprobs', which costs
a coda + head pass per iteration).
"""

from dataclasses import dataclass

import torch

from recurlm.config import parse_exit


class LatentChange:
    """The state barely moves: ||s_i - s_{i-1}|| / ||s_i||."""

    watches = "state"

    def measure(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        return (cur - prev).float().norm(dim=-1) / cur.float().norm(dim=-1).clamp_min(1e-12)


class KLDivergence:
    """The next-token distribution barely moves: KL(p_i || p_{i-1})."""

    watches = "logprobs"

    def measure(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        return (cur.exp() * (cur - prev)).sum(dim=-1)


CRITERIA = {"latent": LatentChange(), "kl": KLDivergence()}  # the names config.EXIT_CRITERIA lists


@dataclass
class Halting:
    """Per row b: run at most caps[b] recurrences, and stop earlier once an exit criterion fires after min_steps[b].
    `eps[name][b]` is row b's threshold for criterion `name` (-inf for rows that do not use it)."""

    caps: list[int]
    cap: torch.Tensor  # (B,) long: caps on the model's device
    min_steps: torch.Tensor  # (B,) long
    eps: dict[str, torch.Tensor]  # criterion -> (B,) float

    @classmethod
    def build(cls, rows: list[tuple[int, int, str]], device=None) -> "Halting":
        """From (cap, min_steps, exit spec) per row."""
        eps = {}
        for b, (_, _, spec) in enumerate(rows):
            if (rule := parse_exit(spec)) is not None:
                eps.setdefault(rule[0], torch.full((len(rows),), float("-inf"), device=device))[b] = rule[1]
        caps = [c for c, _, _ in rows]
        min_steps = torch.tensor([m for _, m, _ in rows], dtype=torch.long, device=device)
        return cls(caps, torch.tensor(caps, dtype=torch.long, device=device), min_steps, eps)

    @property
    def max_cap(self) -> int:
        return max(self.caps)

    @property
    def uniform(self) -> bool:
        """Every row runs the same fixed number of recurrences: the loop needs no per-token bookkeeping."""
        return not self.eps and min(self.caps) == self.max_cap

    @property
    def watches(self) -> set[str]:
        return {CRITERIA[name].watches for name in self.eps}

    def stop(self, iteration: int, prev: dict, cur: dict) -> torch.Tensor:
        """(B, T) bool: which tokens stop after running iteration `iteration` (0-based)."""
        n = iteration + 1
        done = (n >= self.cap)[:, None]
        for name, eps in self.eps.items():
            crit = CRITERIA[name]
            fired = crit.measure(prev[crit.watches], cur[crit.watches]) < eps[:, None]
            done = done | (fired & (n >= self.min_steps)[:, None])
        return done

    def select(self, rows: list[int]) -> "Halting":
        index = torch.tensor(rows, dtype=torch.long, device=self.cap.device)
        eps = {k: v[index] for k, v in self.eps.items()}
        return Halting([self.caps[b] for b in rows], self.cap[index], self.min_steps[index], eps)

    @staticmethod
    def cat(parts: list["Halting"]) -> "Halting":
        def never(h):
            return torch.full(h.cap.shape, float("-inf"), device=h.cap.device)

        names = {k for h in parts for k in h.eps}
        eps = {k: torch.cat([h.eps.get(k, never(h)) for h in parts]) for k in names}
        caps = [c for h in parts for c in h.caps]
        return Halting(caps, torch.cat([h.cap for h in parts]), torch.cat([h.min_steps for h in parts]), eps)
