import numpy as np

from recurlm.config import RecurrenceConfig
from recurlm.training.depth import progressive_weight, sample_progressive, sample_recurrences


def test_poisson_lognormal_mean_and_bounds():
    cfg = RecurrenceConfig(mean=4, sigma=0.5, max=16)
    r = sample_recurrences(cfg, seed=0, step=0, size=100_000)
    assert abs(r.mean() - 4) / 4 < 0.02  # the reference's formula lands near 5
    assert r.min() >= 1 and r.max() <= 16
    assert r.std() > 1  # a real distribution, not a constant


def test_same_draw_for_same_seed_and_step():
    cfg = RecurrenceConfig()
    a = [sample_recurrences(cfg, 7, step) for step in range(200)]
    b = [sample_recurrences(cfg, 7, step) for step in range(200)]
    c = [sample_recurrences(cfg, 8, step) for step in range(200)]
    assert a == b and a != c
    assert len(set(a)) > 3


def test_fixed_and_mean_one():
    assert sample_recurrences(RecurrenceConfig(schedule="fixed", mean=5, max=5), 0, 3) == 5
    assert np.all(sample_recurrences(RecurrenceConfig(mean=1), 0, 0, size=100) == 1)


def test_uniform_mean_and_bounds():
    r = sample_recurrences(RecurrenceConfig(schedule="uniform", mean=4, max=16), 0, 0, size=100_000)
    assert set(np.unique(r)) == set(range(1, 8))  # U{1, 2 mean - 1}
    assert abs(r.mean() - 4) < 0.05
    assert sample_recurrences(RecurrenceConfig(schedule="uniform", mean=4, max=5), 0, 0, size=1000).max() == 5


def test_progressive_split_covers_every_start_and_stays_within_r():
    splits = {sample_progressive(0, step, 4) for step in range(2000)}
    assert splits == {(n, k) for n in range(4) for k in range(1, 5 - n)}  # n < r, 1 <= k <= r - n
    assert sample_progressive(3, 11, 6) == sample_progressive(3, 11, 6)


def test_a_sampled_progressive_step_takes_one_loss_at_the_weights_rate():
    mixed = RecurrenceConfig(progressive=0.3)
    assert {progressive_weight(mixed, 0, step) for step in range(50)} == {0.3}
    sampled = RecurrenceConfig(progressive=0.3, progressive_sampled=True)
    weights = [progressive_weight(sampled, 0, step) for step in range(4000)]
    assert set(weights) == {0.0, 1.0} and abs(np.mean(weights) - 0.3) < 0.03
    assert weights[:50] == [progressive_weight(sampled, 0, step) for step in range(50)]  # a function of (seed, step)
    assert weights[:50] != [progressive_weight(sampled, 1, step) for step in range(50)]
