"""How many recurrences a training step runs.

Poisson log-normal (Huginn, recursive nanochat): tau ~ N(log(mean - 1) - sigma^2 / 2, sigma), r = 1 + Poisson(e^tau),
clamped to [1, max]. Since E[e^tau] = mean - 1, E[r] = mean: the public reference centres tau on log(mean) instead
and so trains at a mean of ~5 when it says 4.

The draw is a pure function of (seed, step), so every data-parallel rank picks the same r without communicating.
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
    if cfg.mean == 1:
        rate = np.zeros(size or 1)
    else:
        mu = math.log(cfg.mean - 1) - cfg.sigma**2 / 2
        rate = np.exp(rng.normal(mu, cfg.sigma, size=size or 1))
    r = np.clip(1 + rng.poisson(rate), 1, cfg.max)
    return int(r[0]) if size is None else r
