"""When a token stops iterating: adaptive-exit criteria (RR-SLM's convergence check, Huginn's criteria), one small
class each, and `Halting`, which applies them per row of a batch with each row's own cap and thresholds.

A criterion compares what it watches at two successive iterations. `watches` tells the loop what to hand it: the
recurrent state ('state'), the log-probabilities of the coda and head run on that state ('logprobs', which costs
a coda + head pass per iteration), or the learned exit gate's probability ('gate', a dot product).
"""

import functools

import torch

from recurlm.config import parse_exit


class Criterion:
    """Fires for a token when `measure` of two successive iterations falls under its threshold."""

    watches = "state"

    def measure(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fired(self, prev: torch.Tensor, cur: torch.Tensor, eps: torch.Tensor, memory: dict) -> torch.Tensor:
        return self.measure(prev, cur) < eps


class LatentChange(Criterion):
    """The state barely moves: ||s_i - s_{i-1}|| / ||s_i||."""

    def measure(self, prev, cur):
        return (cur - prev).float().norm(dim=-1) / cur.float().norm(dim=-1).clamp_min(1e-12)


class CosineChange(Criterion):
    """The state's direction barely moves: 1 - cos(s_i, s_{i-1}) (Huginn's cosine criterion; blind to scale)."""

    def measure(self, prev, cur):
        return 1 - torch.nn.functional.cosine_similarity(cur.float(), prev.float(), dim=-1, eps=1e-12)


class KLDivergence(Criterion):
    """The next-token distribution barely moves: KL(p_i || p_{i-1})."""

    watches = "logprobs"

    def measure(self, prev, cur):
        return (cur.exp() * (cur - prev)).sum(dim=-1)


class EntropyChange(Criterion):
    """The model's uncertainty barely moves: |H(p_i) - H(p_{i-1})| (Huginn's entropy difference)."""

    watches = "logprobs"

    def measure(self, prev, cur):
        return (entropy(cur) - entropy(prev)).abs()


class MinPKL(Criterion):
    """KL(q_i || q_{i-1}) between min-p filtered distributions (Huginn's min-p KL): tokens under 0.1 x the top
    probability count as 1/V each before renormalising, so the long tail's churn does not delay the exit."""

    watches = "logprobs"
    min_p = 0.1

    def filtered(self, logprobs: torch.Tensor) -> torch.Tensor:
        p = logprobs.exp()
        q = torch.where(p < self.min_p * p.amax(dim=-1, keepdim=True), 1 / p.shape[-1], p)
        return (q / q.sum(dim=-1, keepdim=True)).log()

    def measure(self, prev, cur):
        return KLDivergence().measure(self.filtered(prev), self.filtered(cur))


class ArgmaxStable(Criterion):
    """The top token has stayed the same for N successive iterations (Huginn's argmax stability; eps = N). Counts
    in `memory`, which the halting loop starts empty for every forward pass."""

    watches = "logprobs"

    def fired(self, prev, cur, eps, memory):
        same = prev.argmax(dim=-1) == cur.argmax(dim=-1)
        streak = memory["argmax"] = (memory.get("argmax", 0) + 1) * same
        return (streak >= eps) & eps.isfinite()  # eps = -inf: a row that does not use this criterion


class ExitGate(Criterion):
    """Ouro's learned gate (model.exit_gate): lambda_t, the probability of exiting after iteration t given none
    before; a token stops once its cumulative exit probability 1 - prod_j (1 - lambda_j) reaches Q (eps = Q). The
    cumulative probability is kept in `memory` (0 before the first iteration)."""

    watches = "gate"

    def fired(self, prev, cur, eps, memory):
        mass = memory["gate"] = memory.get("gate", 0) + (1 - memory.get("gate", 0)) * cur
        return (mass >= eps) & eps.isfinite()  # eps = -inf: a row that does not use the gate


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    return -(logprobs.exp() * logprobs).sum(dim=-1)


# the names config.EXIT_CRITERIA lists
CRITERIA = {
    "latent": LatentChange(),
    "kl": KLDivergence(),
    "entropy": EntropyChange(),
    "cosine": CosineChange(),
    "minp": MinPKL(),
    "argmax": ArgmaxStable(),
    "gate": ExitGate(),
}


class Halting:
    """Per row b: run at most caps[b] recurrences, and stop earlier once its exit criterion (rules[b]: name and
    threshold, None for a fixed depth) fires after mins[b]. The per-row facts are Python lists, so selecting rows and
    asking who watches what costs no tensor operation (a depth-batched pass does it several times per token); the
    tensors the loop's arithmetic needs are built once per `Halting`, when first read."""

    def __init__(self, caps: list[int], mins: list[int], rules: list[tuple[str, float] | None], device=None):
        self.caps, self.mins, self.rules, self.device = caps, mins, rules, device

    @classmethod
    def build(cls, rows: list[tuple[int, int, str]], device=None) -> "Halting":
        """From (cap, min_steps, exit spec) per row."""
        return cls([c for c, _, _ in rows], [m for _, m, _ in rows], [parse_exit(spec) for _, _, spec in rows], device)

    @functools.cached_property
    def cap(self) -> torch.Tensor:
        """(B,) long: the caps on the model's device."""
        return torch.tensor(self.caps, dtype=torch.long, device=self.device)

    @functools.cached_property
    def min_steps(self) -> torch.Tensor:
        return torch.tensor(self.mins, dtype=torch.long, device=self.device)

    @functools.cached_property
    def eps(self) -> dict[str, torch.Tensor]:
        """criterion -> (B,) row b's threshold for it (-inf for rows that do not use it)."""
        out = {}
        for b, rule in enumerate(self.rules):
            if rule:
                out.setdefault(rule[0], [float("-inf")] * len(self.rules))[b] = rule[1]
        return {name: torch.tensor(values, device=self.device) for name, values in out.items()}

    @property
    def max_cap(self) -> int:
        return max(self.caps)

    @property
    def uniform(self) -> bool:
        """Every row runs the same fixed number of recurrences: the loop needs no per-token bookkeeping."""
        return not any(self.rules) and min(self.caps) == self.max_cap

    @property
    def spread(self) -> int:
        """How many recurrences a token of the shallowest row may idle through beside the deepest row's: caps
        apart, a row with an exit counting as deep as its min_steps (at least 1) as it may stop there."""
        floors = [max(m, 1) if rule else c for c, m, rule in zip(self.caps, self.mins, self.rules, strict=True)]
        return self.max_cap - min(floors)

    @property
    def shallowest_fixed(self) -> int:
        """The fewest recurrences a row without an exit runs; 1 when every row has an exit."""
        return min((c for c, rule in zip(self.caps, self.rules, strict=True) if not rule), default=1)

    @property
    def watches(self) -> set[str]:
        return {CRITERIA[rule[0]].watches for rule in self.rules if rule}

    def rows_watching(self, kind: str) -> list[int]:
        """The rows whose criterion watches `kind` (the others need not compute it)."""
        return [b for b, rule in enumerate(self.rules) if rule and CRITERIA[rule[0]].watches == kind]

    def stop(self, iteration: int, prev: dict, cur: dict, memory: dict) -> torch.Tensor:
        """(B, T) bool: which tokens stop after running iteration `iteration` (0-based). `memory` is what stateful
        criteria carry from one iteration to the next: the caller passes a new dict per forward pass."""
        n = iteration + 1
        done = (n >= self.cap)[:, None]
        for name, eps in self.eps.items():
            crit = CRITERIA[name]
            fired = crit.fired(prev[crit.watches], cur[crit.watches], eps[:, None], memory)
            done = done | (fired & (n >= self.min_steps)[:, None])
        return done

    def select(self, rows: list[int]) -> "Halting":
        """The given rows' halting (a criterion none of them uses is left out: nothing watches for it)."""
        return Halting(
            [self.caps[b] for b in rows], [self.mins[b] for b in rows], [self.rules[b] for b in rows], self.device
        )

    def put(self, rows: torch.Tensor, other: "Halting") -> "Halting":
        """These rows' halting with the given rows ((n,) long) replaced by `other`'s, in order."""
        caps, mins, rules = list(self.caps), list(self.mins), list(self.rules)
        for b, c, m, rule in zip(rows.tolist(), other.caps, other.mins, other.rules, strict=True):
            caps[b], mins[b], rules[b] = c, m, rule
        return Halting(caps, mins, rules, self.device)

    @staticmethod
    def cat(parts: list["Halting"]) -> "Halting":
        return Halting(
            [c for h in parts for c in h.caps],
            [m for h in parts for m in h.mins],
            [rule for h in parts for rule in h.rules],
            parts[0].device,
        )
