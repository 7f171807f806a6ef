"""Settle-or-drift traces: exact values where the recurrence is known, and the default depths."""

import pytest
import torch
from helpers import tiny_model

from recurlm.evaluation.dynamics import default_depths, settle_or_drift
from recurlm.evaluation.scoring import EvalSet
from recurlm.tasks import Example


class CharTokenizer:
    """Just what settle_or_drift reads of a tokenizer: ids of a task prompt."""

    bos_ids, chat_format, digit_ids = [1], None, []

    def encode_markup(self, text):
        return [2 + ord(c) % 30 for c in text]


def sets(*prompts):
    return [EvalSet("t", 1, [Example(p, "0") for p in prompts], 4)]


def test_an_identity_core_with_additive_injection_drifts_as_one_over_i():
    # fresh blocks are identities, so s_i = s_{i-1} + e from s_0 = e: s_i = (i + 1) e, relative change 1 / (i + 1),
    # and the next-token distribution keeps moving with the state's scale
    torch.manual_seed(0)
    model = tiny_model(noise=0.0, inject="add", state_init="prelude", gate=False)
    rows = settle_or_drift(model, CharTokenizer(), sets("12+3", "7"), 6)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["state_change"] for r in rows] == pytest.approx([1 / (i + 1) for i in range(1, 7)], rel=1e-4)


def test_a_perturbed_model_is_traced_per_task_with_padding_left_out():
    model, tok = tiny_model(), CharTokenizer()
    both = settle_or_drift(model, tok, sets("12+3", "7"), 3)
    alone = settle_or_drift(model, tok, sets("12+3"), 3)
    short = settle_or_drift(model, tok, sets("7"), 3)
    n_long, n_short = 5, 2  # BOS + prompt tokens: the mean is over real tokens, not the padding
    for b, a, s in zip(both, alone, short, strict=True):
        assert b["state_change"] == pytest.approx((n_long * a["state_change"] + n_short * s["state_change"]) / 7)
        assert b["distribution_change"] > 0


def test_default_depths_reach_four_times_the_trained_r():
    assert default_depths(2) == [1, 2, 4, 8]
    assert default_depths(5) == [1, 2, 4, 5, 8, 10, 16, 20]
    assert default_depths(1) == [1, 2, 4]
