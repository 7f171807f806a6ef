"""Adaptive-exit criteria (RR-SLM's convergence check, Huginn's criteria), one small class each.

A criterion compares what it watches at two successive iterations and says, per row, whether the token may stop.
`watches` tells the engine what to hand it: the recurrent state ('state') or the log-probabilities of the coda
and head run on that state ('logprobs', which costs a coda + head pass per iteration).
"""

import torch

from recurlm.config import UserError


class LatentChange:
    """Stop when the state barely moves: ||s_i - s_{i-1}|| / ||s_i|| < eps."""

    watches = "state"

    def __init__(self, eps: float):
        self.eps = eps

    def done(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        change = (cur - prev).float().norm(dim=-1) / cur.float().norm(dim=-1).clamp_min(1e-12)
        return change < self.eps


class KLDivergence:
    """Stop when the next-token distribution barely moves: KL(p_i || p_{i-1}) < eps."""

    watches = "logprobs"

    def __init__(self, eps: float):
        self.eps = eps

    def done(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        kl = (cur.exp() * (cur - prev)).sum(dim=-1)
        return kl < self.eps


CRITERIA = {"latent": LatentChange, "kl": KLDivergence}


def parse_exit(spec: str | None):
    """'none' -> None; 'latent:0.03' -> LatentChange(0.03); 'kl:5e-4' -> KLDivergence(5e-4)."""
    if spec is None or spec == "none":
        return None
    name, _, value = spec.partition(":")
    if name not in CRITERIA:
        raise UserError(f"unknown exit criterion {spec!r}: use none, latent:EPS or kl:EPS")
    try:
        eps = float(value)
    except ValueError:
        raise UserError(f"exit criterion {spec!r} needs a number after the colon, e.g. {name}:0.03") from None
    if eps < 0:
        raise UserError(f"exit threshold must be >= 0, got {spec!r}")
    return CRITERIA[name](eps)
