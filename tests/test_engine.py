import pytest
import torch
from helpers import tiny_model

from recurlm.config import UserError
from recurlm.engine import Engine, sample

IDX = torch.randint(0, 37, (2, 14), generator=torch.Generator().manual_seed(1))


def cached_logits(engine, idx, r, prefix=1):
    """Teacher-forced decoding through the cache: logits for positions prefix-1 .. T-1."""
    out = [engine.prefill(idx[:, :prefix].tolist(), r)]
    for t in range(prefix, idx.size(1)):
        out.append(engine.decode(idx[:, t], r)[0])
    return torch.stack(out, 1)


VARIANTS = {
    "plain": {},
    "gqa": dict(n_kv_head=2),
    "lora": dict(recur_lora_rank=4, recur_lora_count=2),
    "gate": dict(gate=True),
    "all": dict(n_kv_head=1, recur_lora_rank=4, recur_lora_count=2, gate=True),
}


@pytest.mark.parametrize("r", [1, 3, 4])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_with_budget_r_equals_full_forward(r, variant):
    model = tiny_model(**VARIANTS[variant])
    with torch.no_grad():
        full = model(IDX, r)
    for prefix in (1, 6):
        got = cached_logits(Engine(model, kv_budget=r, warm_start=False, exit="none"), IDX, r, prefix)
        assert (got - full[:, prefix - 1 :]).abs().max() <= 1e-4
    prompts = IDX[:, :5].tolist()
    cached = Engine(model, kv_budget=r, warm_start=False, exit="none").generate(prompts, 8, recurrences=r)
    uncached = Engine(model, use_cache=False).generate(prompts, 8, recurrences=r)
    assert cached.tokens == uncached.tokens and len(cached.tokens[0]) == 8


def test_budget_one_keeps_core_cache_size_independent_of_r():
    model = tiny_model()
    sizes = {}
    for budget, r in [(1, 2), (1, 16), ("r", 2), ("r", 16)]:
        engine = Engine(model, kv_budget=r if budget == "r" else 1, exit="none")
        engine.prefill(IDX[:, :4].tolist(), r)
        sizes[budget, r] = engine.cache.core_bytes()
    assert sizes[1, 2] == sizes[1, 16]
    assert sizes["r", 16] == 8 * sizes["r", 2]


def test_budget_one_exposes_the_final_iteration():
    model = tiny_model()
    r = 4
    one, full = Engine(model, kv_budget=1, exit="none"), Engine(model, kv_budget=r, exit="none")
    one.prefill(IDX.tolist(), r)
    full.prefill(IDX.tolist(), r)
    for j in range(len(model.core)):
        assert torch.equal(one.cache.k[one.cache.slot("core", j, 0)], full.cache.k[full.cache.slot("core", j, r - 1)])
    # and decoding then attends to those final states, which is not the budget = r computation
    a = one.decode(IDX[:, 0], r)[0]
    b = full.decode(IDX[:, 0], r)[0]
    assert not torch.allclose(a, b, atol=1e-4)


def test_warm_start_changes_decoding():
    model = tiny_model()
    cold = cached_logits(Engine(model, kv_budget=3, warm_start=False, exit="none"), IDX, 3)
    warm = cached_logits(Engine(model, kv_budget=3, warm_start=True, exit="none"), IDX, 3)
    assert torch.allclose(cold[:, 0], warm[:, 0])  # the prompt is prefilled the same way
    assert not torch.allclose(cold[:, 1:], warm[:, 1:], atol=1e-4)


@pytest.mark.parametrize("criterion", ["latent", "kl"])
def test_adaptive_exit_extremes(criterion):
    model = tiny_model()
    prompts = IDX[:, :4].tolist()
    never = Engine(model, exit=f"{criterion}:0").generate(prompts, 6, recurrences=5)
    assert all(s == [5] * 6 for s in never.steps)
    for min_steps in (1, 3):
        always = Engine(model, exit=f"{criterion}:1e9", min_steps=min_steps).generate(prompts, 6, recurrences=5)
        # the first token comes from the prefill, which runs the full r
        assert all(s == [5] + [min_steps] * 5 for s in always.steps)


def test_early_exit_fills_skipped_slots_with_final_kv():
    model = tiny_model()
    engine = Engine(model, kv_budget=4, exit="latent:1e9", min_steps=2)
    engine.prefill(IDX[:, :4].tolist(), 4)
    _, steps = engine.decode(IDX[:, 4], 4)
    assert steps.tolist() == [2, 2]
    cache = engine.cache
    for j in range(len(model.core)):
        final = cache.k[cache.slot("core", j, 1), :, :, 4]
        assert not torch.equal(final, cache.k[cache.slot("core", j, 0), :, :, 4])
        for i in (2, 3):
            assert torch.equal(cache.k[cache.slot("core", j, i), :, :, 4], final)
            assert torch.equal(cache.v[cache.slot("core", j, i), :, :, 4], cache.v[cache.slot("core", j, 1), :, :, 4])


def test_adaptive_exit_is_per_row():
    model = tiny_model(recur_max=16)
    prompts = torch.randint(0, 37, (6, 5), generator=torch.Generator().manual_seed(3)).tolist()
    for eps in (0.2, 0.1, 0.05, 0.02, 0.01):
        batch = Engine(model, exit=f"latent:{eps}").generate(prompts, 5, recurrences=12)
        if len({s for row in batch.steps for s in row[1:]}) > 1:
            break
    else:
        pytest.fail("no threshold gave different steps per token")
    for b, p in enumerate(prompts):
        single = Engine(model, exit=f"latent:{eps}").generate([p], 5, recurrences=12)
        assert single.tokens[0] == batch.tokens[b] and single.steps[0] == batch.steps[b]


def test_left_padded_batch_matches_single_rows():
    model = tiny_model()
    prompts = [IDX[0, :3].tolist(), IDX[1, :9].tolist(), IDX[0, 2:8].tolist()]
    for kw in (dict(), dict(use_cache=False)):
        batch = Engine(model, **kw).generate(prompts, 6, recurrences=3)
        for b, p in enumerate(prompts):
            assert Engine(model, **kw).generate([p], 6, recurrences=3).tokens[0] == batch.tokens[b]
    single = Engine(model).prefill([prompts[0]], 3)
    padded = Engine(model).prefill(prompts, 3)[0:1]
    assert (single - padded).abs().max() < 1e-4


def test_sampling():
    logits = torch.randn(4, 37, generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1)
    assert torch.equal(sample(logits), greedy)
    assert torch.equal(sample(logits, 1.0, top_k=1), greedy)
    assert torch.equal(sample(logits, 1.0, top_p=1e-6), greedy)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(sample(logits, 1.0, generator=g()), sample(logits, 1.0, generator=g()))
    draws = torch.stack([sample(logits, 1.0, top_k=3) for _ in range(200)])
    top3 = logits.topk(3).indices
    assert all(draws[:, b].unique().tolist() and set(draws[:, b].tolist()) <= set(top3[b].tolist()) for b in range(4))
    assert len(set(draws[:, 0].tolist())) > 1


def test_stop_tokens_streaming_and_context_limit():
    model = tiny_model()
    engine = Engine(model)
    first = engine.generate([IDX[0, :4].tolist()], 5).tokens[0]
    assert len(first) == 5
    stopped = engine.generate([IDX[0, :4].tolist()], 5, stop_tokens=[first[2]])
    assert stopped.tokens[0] == first[: first.index(first[2])]
    chunks = list(engine.stream([IDX[0, :4].tolist()], 5))
    assert [t.item() for t, _ in chunks] == first
    near_full = engine.generate([IDX[0].tolist() * 3], 20)  # 42 of 48 tokens: room for 7 more
    assert len(near_full.tokens[0]) == 7
    with pytest.raises(UserError, match="longer than the context"):
        engine.prefill([IDX[0].tolist() * 4], 3)
    with pytest.raises(UserError, match="recurrences"):
        engine.generate([IDX[0].tolist()], 3, recurrences=0)


def test_abacus_ids_and_cached_decoding():
    from recurlm.tokenizer import Tokenizer, significance_ids

    tok = Tokenizer.char("0123456789+=", "pad")
    ids = tok.encode("123+45=") + tok.encode("861")
    # prompt numbers count from their last digit, generated (reversed) numbers from their first
    assert significance_ids(ids, 7, tok.digit_ids) == [3, 2, 1, 0, 2, 1, 0, 1, 2, 3]
    model = tiny_model(vocab_size=13, abacus=4)
    digits = tok.digit_ids
    with pytest.raises(UserError, match="digit"):
        Engine(model)
    seq = torch.tensor([tok.encode("123+45=861+7")])
    full = model(seq, 3, digit_pos=torch.tensor([significance_ids(seq[0].tolist(), 7, digits)]))
    engine = Engine(model, kv_budget=3, warm_start=False, exit="none", digit_ids=digits)
    got = cached_logits(engine, seq, 3, prefix=7)
    assert (got - full[:, 6:]).abs().max() <= 1e-4
    prompts = [tok.encode("123+45="), tok.encode("9+9=")]
    cached = Engine(model, kv_budget=3, warm_start=False, exit="none", digit_ids=digits).generate(prompts, 5)
    uncached = Engine(model, use_cache=False, digit_ids=digits).generate(prompts, 5)
    assert cached.tokens == uncached.tokens
    other = full.clone()
    with torch.no_grad():
        model.abacus.weight[1:].normal_()  # the ids matter
    assert not torch.allclose(
        model(seq, 3, digit_pos=torch.tensor([significance_ids(seq[0].tolist(), 7, digits)])), other, atol=1e-4
    )
