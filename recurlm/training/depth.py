"""How many recurrences a training step runs, and the progressive loss's split of them.

Poisson log-normal (Huginn, recursive nanochat): tau ~ N(log(mean - 1) - sigma^2 / 2, sigma), r = 1 + Poisson(e^tau),
clamped to [1, max]. Since E[e^tau] = mean - 1, E[r] = mean: the public reference centres tau on log(mean) instead
and so trains at a mean of ~5 when it says 4. Uniform: r ~ U{1, 2 mean - 1} (mean `mean`), clamped to max.

Every draw is a pure function of (seed, step), so every data-parallel rank picks the same r without communicating.
"""

import math

import numpy as np

from recurlm.config import RecurrenceConfig


def sample_recurrences(cfg: RecurrenceConfig, seed: int, step: int, size: int | None = None):
    """r for training step `step` (an int), or `size` independent draws from that step's stream (an array)."""
    if cfg.schedule == "fixed":
        r = round(cfg.mean)
        return r if size is None else np.full(size, r, dtype=np.int64)
    rng = np.random.default_rng([seed, step])
    if cfg.schedule == "uniform":
        r = rng.integers(1, 2 * round(cfg.mean), size=size or 1)
    elif cfg.mean == 1:
        r = np.ones(size or 1, dtype=np.int64)
    else:
        mu = math.log(cfg.mean - 1) - cfg.sigma**2 / 2
        r = 1 + rng.poisson(np.exp(rng.normal(mu, cfg.sigma, size=size or 1)))
    r = np.clip(r, 1, cfg.max)
    return int(r[0]) if size is None else r


def sample_progressive(seed: int, step: int, r: int) -> tuple[int, int]:
    """The progressive loss's (n, k) for a step at depth r (Bansal et al. 2022): n ~ U{0, r-1} iterations without
    gradient, then k ~ U{1, r-n} with it, so the loop learns to improve a state it did not make itself."""
    rng = np.random.default_rng([seed, step, 1])  # a stream of its own: r's draws do not change with the switch
    n = int(rng.integers(0, r))
    return n, int(rng.integers(1, r - n + 1))


def progressive_weight(cfg: RecurrenceConfig, seed: int, step: int) -> float:
    """The progressive loss's weight in step `step`: `cfg.progressive`, or with `progressive_sampled` 1 (the
    progressive loss alone) with that probability and else 0 (the full-depth loss alone)."""
    if not cfg.progressive_sampled:
        return cfg.progressive
    return float(np.random.default_rng([seed, step, 2]).random() < cfg.progressive)
