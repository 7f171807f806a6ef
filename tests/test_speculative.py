from pathlib import Path

import pytest
from helpers import policy, tiny_model

from recurlm.errors import UserError
from recurlm.inference.engine import Engine, extends_in_parallel
from recurlm.inference.speculative import speculate

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9]]


@pytest.mark.parametrize(
    "budget,warm,exit,draft_tokens",
    [
        (4, False, "none", 3),
        (4, False, "none", 1),
        (4, False, "kl:0.01", 8),
        (1, True, "none", 3),
        (4, True, "kl:0.01", 3),
        (1, False, "kl:0.01", 3),
    ],
)
def test_speculation_gives_the_targets_greedy_tokens_and_steps(budget, warm, exit, draft_tokens):
    engine = Engine(tiny_model(noise=0.15))
    target = policy(4, kv_budget=budget, warm_start=warm, exit=exit)
    alone = [engine.generate([p], 30, target, stop_tokens=[0]) for p in PROMPTS]
    got = speculate(engine, PROMPTS, 30, target, draft_recurrences=2, draft_tokens=draft_tokens, stop_tokens=[0])
    assert got.generation.tokens == [g.tokens[0] for g in alone]
    assert got.generation.steps == [g.steps[0] for g in alone]
    assert 0 < got.accepted < got.drafted  # both branches ran: drafts kept and drafts thrown away


def test_speculation_stops_at_a_stop_token_its_budget_and_the_context():
    engine = Engine(tiny_model(noise=0.15))
    target = policy(4, kv_budget=4)
    full = engine.generate(PROMPTS[:1], 30, target).tokens[0]
    stop = full[5]  # a token the target writes: generation must end at its first occurrence
    got = speculate(engine, PROMPTS[:1], 30, target, 2, 4, stop_tokens=[stop]).generation
    assert got.tokens[0] == full[: full.index(stop)] and len(got.steps[0]) == full.index(stop) + 1
    assert speculate(engine, PROMPTS[:1], 7, target, 2, 4).generation.tokens[0] == full[:7]
    long = engine.generate(PROMPTS[:1], 100, target).tokens[0]  # 48-token context: ends when it is full
    assert speculate(engine, PROMPTS[:1], 100, target, 2, 4).generation.tokens[0] == long


def test_abacus_model_speculates_exactly():
    from recurlm.text.tokenizer import Tokenizer

    tok = Tokenizer.char("0123456789+=", "pad")
    engine = Engine(tiny_model(noise=0.15, vocab_size=13, abacus=8), tok.digit_ids)
    prompts = [tok.encode("123+45="), tok.encode("9+9=")]
    target = policy(4, kv_budget=4)
    assert speculate(engine, prompts, 12, target, 1, 3).generation.tokens == engine.generate(prompts, 12, target).tokens


def test_parallel_check_and_bad_settings():
    assert extends_in_parallel(policy(8, kv_budget=8)) and not extends_in_parallel(policy(8, kv_budget=1))
    assert not extends_in_parallel(policy(8, kv_budget=8, warm_start=True))
    engine = Engine(tiny_model())
    with pytest.raises(UserError, match="fewer recurrences"):
        speculate(engine, PROMPTS, 5, policy(4), draft_recurrences=4)
    with pytest.raises(UserError, match=">= 1"):
        speculate(engine, PROMPTS, 5, policy(4), draft_recurrences=2, draft_tokens=0)


MINIAXION = Path(__file__).resolve().parent.parent / "checkpoints" / "miniaxion-0.9m"


@pytest.mark.skipif(not MINIAXION.exists(), reason="no shipped MiniAxion checkpoint")
def test_trained_model_accepts_most_drafts():
    from recurlm.checkpoint import load_checkpoint
    from recurlm.tasks import get_task
    from recurlm.text.prompting import example_ids

    model, tok, configs = load_checkpoint(MINIAXION)
    engine = Engine(model, tok.digit_ids)
    examples = get_task("arithmetic").generate("test", 2, seed=0)
    prompts = [example_ids(tok, ex.prompt) for ex in examples]
    target = configs.inference.override(recurrences=4, kv_budget=4, warm_start=False, exit="none")
    ref = engine.generate(prompts, 60, target, stop_tokens=tok.stop_ids).tokens
    got = speculate(engine, prompts, 60, target, 2, 4, stop_tokens=tok.stop_ids)
    assert got.generation.tokens == ref and got.acceptance > 0.5, got.acceptance
