import pytest
import torch
from helpers import policy, tiny_model

import recurlm.network.model as network
from recurlm.errors import UserError
from recurlm.inference.engine import Engine
from recurlm.inference.sampling import sample
from recurlm.inference.state import DecodeState

IDX = torch.randint(0, 37, (2, 14), generator=torch.Generator().manual_seed(1))


def cached_logits(engine, idx, pol, prefix=1):
    """Teacher-forced decoding through the cache: logits for positions prefix-1 .. T-1."""
    state, first, _ = engine.start(idx[:, :prefix].tolist(), pol)
    out = [first]
    for t in range(prefix, idx.size(1)):
        state, logits, _ = engine.decode(state, idx[:, t])
        out.append(logits)
    return torch.stack(out, 1)


VARIANTS = {
    "plain": {},
    "gqa": dict(n_kv_head=2),
    "lora": dict(recur_lora_rank=4, recur_lora_count=2),
    "gate": dict(gate=True),
    "nope-logn": dict(rope=False, logn_attention=True),
    "all": dict(n_kv_head=1, recur_lora_rank=4, recur_lora_count=2, gate=True),
}


@pytest.mark.parametrize("r", [1, 3, 4])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_with_budget_r_equals_full_forward(r, variant):
    model = tiny_model(**VARIANTS[variant])
    with torch.no_grad():
        full = model(IDX, r)
    pol = policy(r, kv_budget=r)
    for prefix in (1, 6):
        got = cached_logits(Engine(model), IDX, pol, prefix)
        assert (got - full[:, prefix - 1 :]).abs().max() <= 1e-4
    state, _, _ = Engine(model).start(IDX[:, :6].tolist(), pol)
    _, extended, steps = Engine(model).extend(state, IDX[:, 6:])  # one parallel pass
    assert (extended - full[:, 6:]).abs().max() <= 1e-4 and steps.eq(r).all()
    prompts = IDX[:, :5].tolist()
    cached = Engine(model).generate(prompts, 8, pol)
    uncached = Engine(model).generate(prompts, 8, pol, use_cache=False)
    assert cached.tokens == uncached.tokens and len(cached.tokens[0]) == 8


def test_cache_with_budget_above_r_equals_full_forward():
    """The addition-length policy keeps 16 slots and runs r = 4 by default: slots beyond r stay unused."""
    model = tiny_model(**VARIANTS["nope-logn"])
    with torch.no_grad():
        full = model(IDX, 3)
    got = cached_logits(Engine(model), IDX, policy(3, kv_budget=16), prefix=2)
    assert (got - full[:, 1:]).abs().max() <= 1e-4
    assert (cached_logits(Engine(model), IDX, policy(3, kv_budget=1), prefix=2) - full[:, 1:]).abs().max() > 1e-3


def test_plain_gpt_ignores_warm_start():
    """A plain GPT has no state to carry between tokens: a warm-start policy (a recursive run's, given to its
    plain baseline or an imported model) must decode as the full forward does, not hand a token its predecessor."""
    model = tiny_model(n_core=0)
    with torch.no_grad():
        full = model(IDX, 1)
    got = cached_logits(Engine(model), IDX, policy(1, warm_start=True), prefix=3)
    assert (got - full[:, 2:]).abs().max() <= 1e-4


def test_budget_one_keeps_core_cache_size_independent_of_r():
    model = tiny_model()
    sizes = {}
    for budget, r in [(1, 2), (1, 16), ("r", 2), ("r", 16)]:
        state, _, _ = Engine(model).start(IDX[:, :4].tolist(), policy(r, kv_budget=r if budget == "r" else 1))
        sizes[budget, r] = state.cache.core_bytes()
    assert sizes[1, 2] == sizes[1, 16]
    assert sizes["r", 16] == 8 * sizes["r", 2]


def test_budget_one_exposes_the_final_iteration():
    model = tiny_model()
    r = 4
    one, _, _ = Engine(model).start(IDX.tolist(), policy(r, kv_budget=1))
    full, _, _ = Engine(model).start(IDX.tolist(), policy(r, kv_budget=r))
    for j in range(len(model.core)):
        assert torch.equal(one.cache.k[one.cache.slot("core", j, 0)], full.cache.k[full.cache.slot("core", j, r - 1)])
    # and decoding then attends to those final states, which is not the budget = r computation
    a = Engine(model).decode(one, IDX[:, 0])[1]
    b = Engine(model).decode(full, IDX[:, 0])[1]
    assert not torch.allclose(a, b, atol=1e-4)


def test_warm_start_changes_decoding():
    model = tiny_model()
    cold = cached_logits(Engine(model), IDX, policy(3, kv_budget=3))
    warm = cached_logits(Engine(model), IDX, policy(3, kv_budget=3, warm_start=True))
    assert torch.allclose(cold[:, 0], warm[:, 0])  # the prompt is prefilled the same way
    assert not torch.allclose(cold[:, 1:], warm[:, 1:], atol=1e-4)


@pytest.mark.parametrize("criterion", ["latent", "kl"])
def test_adaptive_exit_extremes(criterion):
    model = tiny_model()
    prompts = IDX[:, :4].tolist()
    never = Engine(model).generate(prompts, 6, policy(5, exit=f"{criterion}:0"))
    assert all(s == [5] * 6 for s in never.steps)
    for min_steps in (1, 3):
        always = Engine(model).generate(prompts, 6, policy(5, exit=f"{criterion}:1e9", min_steps=min_steps))
        # the first token comes from the prefill, which runs the full r
        assert all(s == [5] + [min_steps] * 5 for s in always.steps)


@pytest.mark.parametrize("criterion", ["latent", "kl"])
def test_prompt_exit_ends_the_prompt_pass_when_its_tokens_stop(criterion):
    model, prompts = tiny_model(), IDX[:, :6].tolist()
    engine = Engine(model)
    _, full, steps = engine.start(prompts, policy(5))
    _, never, never_steps = engine.start(prompts, policy(5, exit=f"{criterion}:0", prompt_exit=True))
    assert torch.equal(never, full) and steps.tolist() == never_steps.tolist() == [5, 5]
    _, two, _ = engine.start(prompts, policy(2))
    at_once = policy(5, exit=f"{criterion}:1e9", min_steps=2, prompt_exit=True)
    _, early, early_steps = engine.start(prompts, at_once)
    assert (early - two).abs().max() <= 1e-5 and early_steps.tolist() == [2, 2]
    # the first generated token reports what its (prompt) pass ran
    assert all(s == [2, 2, 2] for s in engine.generate(prompts, 3, at_once).steps)


def test_early_exit_fills_skipped_slots_with_final_kv():
    model = tiny_model()
    state, _, _ = Engine(model).start(IDX[:, :4].tolist(), policy(4, kv_budget=4, exit="latent:1e9", min_steps=2))
    state, _, steps = Engine(model).decode(state, IDX[:, 4])
    assert steps.tolist() == [2, 2]
    cache = state.cache
    for j in range(len(model.core)):
        final = cache.k[cache.slot("core", j, 1)][:, :, 4]
        assert not torch.equal(final, cache.k[cache.slot("core", j, 0)][:, :, 4])
        for i in (2, 3):
            assert torch.equal(cache.k[cache.slot("core", j, i)][:, :, 4], final)
            assert torch.equal(cache.v[cache.slot("core", j, i)][:, :, 4], cache.v[cache.slot("core", j, 1)][:, :, 4])


def test_early_exit_fills_only_the_slots_below_each_rows_cap():
    """Rows at caps 8 and 3 whose tokens both stop after 2 steps: the deep row's slots of iterations 2-7 get its final
    K/V, the shallow row's only iteration 2's (3-7 lie past its cap: it never reads them, they stay untouched)."""
    model = tiny_model()
    deep, shallow = (policy(r, kv_budget=8, exit="latent:1e9", min_steps=2) for r in (8, 3))
    state, _, _ = Engine(model).start(IDX[:, :4].tolist(), [deep, shallow])
    state, _, steps = Engine(model).decode(state, IDX[:, 4])
    assert steps.tolist() == [2, 2]
    cache = state.cache
    for j in range(len(model.core)):
        final = cache.k[cache.slot("core", j, 1)][:, :, 4]
        for i in range(2, 8):
            slot = cache.k[cache.slot("core", j, i)][:, :, 4]
            assert torch.equal(slot[0], final[0])
            assert torch.equal(slot[1], final[1]) == (i < 3)


def varied_exit(model, criterion, prompts, r=8, **policy_fields):
    """A threshold of `criterion` under which the tokens of these prompts stop after different numbers of steps."""
    thresholds = (1, 2, 3) if criterion == "argmax" else (0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001, 1e-4)
    for eps in thresholds:
        out = Engine(model).generate(prompts, 6, policy(r, exit=f"{criterion}:{eps}", **policy_fields))
        if len({s for row in out.steps for s in row[1:]}) > 2:
            return f"{criterion}:{eps}"
    pytest.fail(f"no {criterion} threshold gave different steps per token")


def drive(engine, prompts, policies, n, joins):
    """Greedy decoding of n tokens per prompt: prompt i joins the running batch at step joins[i] and leaves it
    after its n-th token. Returns each prompt's tokens and the recurrences of the pass behind each."""
    out = [([], []) for _ in prompts]
    state, logits, ids, step = None, None, [], 0
    while step <= max(joins) or ids:
        for i, j in enumerate(joins):
            if j == step:
                new, first, _ = engine.start([prompts[i]], policies[i], seeds=[i])
                state = new if state is None else DecodeState.cat([state, new])
                logits = first if logits is None else torch.cat([logits, first])
                ids.append(i)
                out[i][1].append(policies[i].recurrences)
        tokens = logits.argmax(-1)
        for row, i in enumerate(ids):
            out[i][0].append(int(tokens[row]))
        keep = [row for row, i in enumerate(ids) if len(out[i][0]) < n]
        if len(keep) < len(ids):
            state, tokens, ids = state.select(keep), tokens[keep], [ids[row] for row in keep]
        step += 1
        if not ids:
            state = logits = None
            continue
        state, logits, steps = engine.decode(state, tokens)
        for row, i in enumerate(ids):
            out[i][1].append(int(steps[row]))
    return [(tokens, steps[:n]) for tokens, steps in out]


@pytest.mark.parametrize("exit", ["none", "kl", "latent", "entropy", "cosine", "minp", "argmax"])
@pytest.mark.parametrize("budget", [1, "r"])
@pytest.mark.parametrize("warm", [False, True])
def test_rows_joining_and_leaving_a_batch_decode_as_alone(exit, budget, warm):
    model = tiny_model()
    prompts = [IDX[0, :3].tolist(), IDX[1, :9].tolist(), IDX[0, 2:8].tolist(), IDX[1, :2].tolist()]
    r = 8
    spec = exit if exit == "none" else varied_exit(model, exit, prompts, r)
    pol = policy(r, exit=spec, kv_budget=r if budget == "r" else 1, warm_start=warm)
    # and one row at its own depth and exit: rows of a batch need not share a policy
    policies = [pol, pol, pol, policy(5, kv_budget=pol.kv_budget, warm_start=not warm)]
    engine = Engine(model)
    alone = [drive(engine, [p], [q], 7, [0])[0] for p, q in zip(prompts, policies, strict=True)]
    together = drive(engine, prompts, policies, 7, [0, 2, 3, 5])
    assert together == alone
    if exit != "none":
        assert len({s for _, steps in alone for s in steps[1:]}) > 1  # the exits did fire, differently


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("budget", [1, 3])
@pytest.mark.parametrize("exit", ["none", "latent:0.05"])
def test_extend_then_roll_back_equals_the_shorter_extend(warm, budget, exit):
    model = tiny_model()
    engine, pol = Engine(model), policy(3, kv_budget=budget, warm_start=warm, exit=exit)
    prompts, more = IDX[:, :4].tolist(), IDX[:, 4:10]
    k, j = 6, 2
    a, _, _ = engine.start(prompts, pol)
    a, long_logits, long_steps = engine.extend(a, more[:, :k])
    a.rollback(j)
    b, _, _ = engine.start(prompts, pol)
    b, short_logits, short_steps = engine.extend(b, more[:, : k - j])
    assert (long_logits[:, : k - j] - short_logits).abs().max() <= 1e-5
    assert torch.equal(long_steps[:, : k - j], short_steps)
    _, after_a, steps_a = engine.decode(a, more[:, k - j])
    _, after_b, steps_b = engine.decode(b, more[:, k - j])
    assert (after_a - after_b).abs().max() <= 1e-5 and torch.equal(steps_a, steps_b)
    # and extending by k is exactly k single-token steps
    c, _, _ = engine.start(prompts, pol)
    stepwise = []
    for t in range(k):
        c, logits, _ = engine.decode(c, more[:, t])
        stepwise.append(logits)
    assert (torch.stack(stepwise, 1) - long_logits).abs().max() <= 1e-5
    with pytest.raises(UserError, match="roll back"):
        a.rollback(100)


def test_random_initial_state_is_seeded_per_sequence():
    model = tiny_model(state_init="random", inject="add")
    prompts = [IDX[0, :5].tolist(), IDX[1, :3].tolist()]
    pol = policy(3)
    alone = [Engine(model).generate([p], 6, pol, seeds=[b]) for b, p in enumerate(prompts)]
    torch.manual_seed(123)  # the global generator plays no part
    batch = Engine(model).generate(prompts, 6, pol, seeds=[0, 1])
    assert batch.tokens == [g.tokens[0] for g in alone]
    other_seed = Engine(model).start([prompts[0]], pol, seeds=[7])[1]
    assert not torch.allclose(other_seed, Engine(model).start([prompts[0]], pol, seeds=[0])[1])


def test_prompts_of_different_lengths_match_single_rows():
    model = tiny_model()
    prompts = [IDX[0, :3].tolist(), IDX[1, :9].tolist(), IDX[0, 2:8].tolist()]
    for kw in (dict(), dict(use_cache=False)):
        batch = Engine(model).generate(prompts, 6, policy(3), **kw)
        for b, p in enumerate(prompts):
            assert Engine(model).generate([p], 6, policy(3), **kw).tokens[0] == batch.tokens[b]
    single = Engine(model).start([prompts[0]], policy(3))[1]
    padded = Engine(model).start(prompts, policy(3))[1][0:1]
    assert (single - padded).abs().max() < 1e-5


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
    assert all(set(draws[:, b].tolist()) <= set(top3[b].tolist()) for b in range(4))
    assert len(set(draws[:, 0].tolist())) > 1
    for tiny in (1e-38, 1e-300, 5e-324):  # once NaN probabilities (0 / 0 in float32): now greedy in effect
        assert torch.equal(sample(logits * 100, tiny, generator=g()), greedy)
        assert torch.equal(sample(logits.bfloat16(), tiny, top_p=0.5, generator=g()), logits.bfloat16().argmax(-1))


def test_sampled_rows_do_not_depend_on_their_batch():
    model = tiny_model()
    hot = policy(3, temperature=1.5)
    prompts = [IDX[0, :4].tolist(), IDX[1, :6].tolist()]
    batch = Engine(model).generate(prompts, 8, [hot, policy(3)], seeds=[11, 12])
    assert batch.tokens[0] == Engine(model).generate(prompts[:1], 8, hot, seeds=[11]).tokens[0]
    assert batch.tokens[1] == Engine(model).generate(prompts[1:], 8, policy(3)).tokens[0]
    assert batch.tokens[0] != Engine(model).generate(prompts[:1], 8, hot, seeds=[13]).tokens[0]


def test_stop_tokens_streaming_and_context_limit():
    model = tiny_model()
    engine, pol = Engine(model), policy(3)
    first = engine.generate([IDX[0, :4].tolist()], 5, pol).tokens[0]
    assert len(first) == 5
    stopped = engine.generate([IDX[0, :4].tolist()], 5, pol, stop_tokens=[first[2]])
    assert stopped.tokens[0] == first[: first.index(first[2])]
    chunks = list(engine.stream([IDX[0, :4].tolist()], 5, pol))
    assert [tokens[0] for _, tokens, _ in chunks] == first
    near_full = engine.generate([IDX[0].tolist() * 3], 20, pol)  # 42 of 48 tokens: 6 more fit, and a 7th is read
    assert len(near_full.tokens[0]) == 7
    with pytest.raises(UserError, match="longer than the context"):
        engine.start([IDX[0].tolist() * 4], pol)
    with pytest.raises(UserError, match="recurrences"):
        engine.generate([IDX[0].tolist()], 3, policy(3).override(recurrences=0))
    with pytest.raises(UserError, match="cache"):
        engine.generate([IDX[0].tolist()], 3, policy(3, exit="kl:0.1"), use_cache=False)


@pytest.mark.parametrize("shift,operands", [(0, 0), (1, 0), (1, 1)])
def test_abacus_ids_and_cached_decoding(shift, operands):
    from recurlm.text.tokenizer import OPERAND_STRIDE, Tokenizer, significance_ids

    tok = Tokenizer.char("0123456789+=", "pad")
    ids = tok.encode("123+45=") + tok.encode("861")
    # prompt numbers count from their last digit, generated (reversed) numbers from their first
    assert significance_ids(ids, 7, tok.digit_ids) == [3, 2, 1, 0, 2, 1, 0, 1, 2, 3]
    # shifted: digits by k, and the '=' before the units takes k (as training's offsets write them)
    assert significance_ids(ids, 7, tok.digit_ids, 2) == [5, 4, 3, 0, 4, 3, 2, 3, 4, 5]
    # with operands n, the i-th prompt number's digits carry min(i, n) times the stride; nothing else does
    codes = significance_ids(ids + tok.encode("+7"), 7, tok.digit_ids, 2, 2)
    assert [c // OPERAND_STRIDE for c in codes] == [1, 1, 1, 0, 2, 2, 0, 0, 0, 0, 0, 0]
    assert [c % OPERAND_STRIDE for c in codes] == [5, 4, 3, 0, 4, 3, 2, 3, 4, 5, 0, 3]
    assert significance_ids(tok.encode("1+2+3="), 6, tok.digit_ids, 0, 2)[4] == 1 + 2 * OPERAND_STRIDE  # 3rd: 2nd's
    model = tiny_model(vocab_size=13, abacus=5, abacus_shift=shift, abacus_operands=operands)
    digits = tok.digit_ids
    with pytest.raises(UserError, match="digit"):
        Engine(model)
    seq = torch.tensor([tok.encode("123+45=861+7")])
    full = model(seq, 3, digit_pos=torch.tensor([significance_ids(seq[0].tolist(), 7, digits, shift, operands)]))
    got = cached_logits(Engine(model, digits), seq, policy(3, kv_budget=3), prefix=7)
    assert (got - full[:, 6:]).abs().max() <= 1e-4
    state, _, _ = Engine(model, digits).start(seq[:, :7].tolist(), policy(3, kv_budget=3))
    _, extended, _ = Engine(model, digits).extend(state, seq[:, 7:])
    assert (extended - full[:, 7:]).abs().max() <= 1e-4
    prompts = [tok.encode("123+45="), tok.encode("9+9=")]
    cached = Engine(model, digits).generate(prompts, 5, policy(3, kv_budget=3))
    uncached = Engine(model, digits).generate(prompts, 5, policy(3), use_cache=False)
    assert cached.tokens == uncached.tokens
    other = full.clone()
    with torch.no_grad():
        (model.operands if operands else model.abacus).weight[1:].normal_()  # the ids matter
    again = model(seq, 3, digit_pos=torch.tensor([significance_ids(seq[0].tolist(), 7, digits, shift, operands)]))
    assert not torch.allclose(again, other, atol=1e-4)


# batch 1 is the path whose projections are written as multiply-and-sum (model._product)
@pytest.mark.parametrize("warm, budget, batch", [(True, 1, 3), (False, 3, 3), (True, 1, 1)])
def test_compiled_decode_step_matches_eager_without_recompiling(warm, budget, batch):
    model = tiny_model()
    eager, compiled = Engine(model), Engine(model, compile=True)
    pol = policy(3, kv_budget=budget, warm_start=warm)
    prompts = [IDX[0, :3].tolist(), IDX[1, :9].tolist(), IDX[0, 2:8].tolist()][:batch]
    a, b = eager.generate(prompts, 12, pol), compiled.generate(prompts, 12, pol)
    assert a.tokens == b.tokens and a.steps == b.steps
    s1, l1, _ = eager.start(prompts, pol)
    s2, l2, _ = compiled.start(prompts, pol)
    for t in range(4):
        tokens = (IDX[:, t].tolist() + [t])[:batch]
        s1, l1, _ = eager.decode(s1, tokens)
        s2, l2, _ = compiled.decode(s2, tokens)
        assert (l1 - l2).abs().max() <= 1e-5
    # every shape is the cache's: other prompts and positions reuse the compiled step
    with torch._dynamo.config.patch(error_on_recompile=True):
        other = [IDX[1, 4:6].tolist(), IDX[0, :11].tolist(), IDX[1, :1].tolist()][:batch]
        assert compiled.generate(other, 9, pol).tokens == eager.generate(other, 9, pol).tokens


def count_core_rows(model, monkeypatch) -> list[int]:
    """Record the rows of every core call (each runs one recurrence of each row's tokens)."""
    calls, step = [], model.core_step

    def counted(e, s, *args, **kwargs):
        calls.append(e.size(0))
        return step(e, s, *args, **kwargs)

    monkeypatch.setattr(model, "core_step", counted)
    return calls


@pytest.mark.parametrize("budget", [1, 3])
@pytest.mark.parametrize("variant", ["plain", "lora"])
def test_each_row_pays_for_its_own_depth(budget, variant, monkeypatch):
    """A deep row beside shallow ones, and tokens exiting at different steps: the core runs each row's token for
    its own recurrences only (prompt pass and decoding), and every row's tokens and steps are its solo run's."""
    model = tiny_model(**VARIANTS[variant])
    prompts = [IDX[0, :3].tolist(), IDX[1, :9].tolist(), IDX[0, 2:8].tolist(), IDX[1, :2].tolist()]
    exit = varied_exit(model, "latent", prompts, 8, kv_budget=budget)
    monkeypatch.setattr(network, "compacts", lambda live, batch: live < batch)  # the prompt pass always gathers
    policies = [policy(16, kv_budget=budget), policy(2, kv_budget=budget, warm_start=True),
                policy(8, exit=exit, kv_budget=budget), policy(8, exit=exit, kv_budget=budget)]  # fmt: skip
    alone = [Engine(model).generate([p], 6, q) for p, q in zip(prompts, policies, strict=True)]
    calls = count_core_rows(model, monkeypatch)
    together = Engine(model).generate(prompts, [6, 6, 3, 6], policies)
    assert together.tokens == [g.tokens[0][:n] for g, n in zip(alone, [6, 6, 3, 6], strict=True)]
    assert together.steps == [g.steps[0][: len(t)] for g, t in zip(alone, together.steps, strict=True)]
    assert sum(calls) == sum(map(sum, together.steps))  # dense: every call would hold all four rows
    assert len(set(together.steps[2][1:] + together.steps[3][1:])) > 1  # the exits fired at different steps


# latent watches the state; kl the head's output, which the pass's last iteration computes for every token at once;
# argmax carries a streak between checks (its fresh tokens' first watch must not count as one)
@pytest.mark.parametrize("criterion", ["latent", "kl", "argmax"])
def test_a_pass_runs_the_shallowest_fixed_rows_depth(criterion, monkeypatch):
    """Beside a row at r = 16 and one under an exit, a row at r = 3 takes one core pass (one prelude and one coda
    call) per token, not three; the exit row's tokens wait for the pass's end and still equal its solo run's."""
    model = tiny_model()
    prompts = [IDX[0, :3].tolist(), IDX[1, :9].tolist(), IDX[0, 2:8].tolist()]
    exit = varied_exit(model, criterion, prompts, 8)
    policies = [policy(3), policy(16), policy(8, exit=exit)]
    alone = [Engine(model).generate([p], 6, q) for p, q in zip(prompts, policies, strict=True)]
    engine, passes = Engine(model), []
    advance = engine.advance
    monkeypatch.setattr(engine, "advance", lambda state, it=1: passes.append(it) or advance(state, it))
    together = engine.generate(prompts, 6, policies)
    assert together.tokens == [g.tokens[0] for g in alone] and together.steps == [g.steps[0] for g in alone]
    # the r = 3 row's 5 tokens after the prompt's, one pass each, while it lives; then the r = 16 row's alone
    assert passes[:5] == [3] * 5 and set(passes[5:]) <= {3, 16}
    assert len(set(together.steps[2])) > 1  # the exit fired at different steps


def test_a_fresh_tokens_first_watch_shares_the_passs_coda_call(monkeypatch):
    """A token fed under a KL-type exit needs the coda and head on its initial state before its first check. In a
    pass of two recurrences it sits out the first core call and that watch rides on the coda call after it: the
    pass makes two coda calls (that one, then the head that ends it), not three, and the token runs one recurrence."""
    model = tiny_model()
    engine = Engine(model)
    prompts = [IDX[0, :3].tolist(), IDX[1, :5].tolist()]
    state, logits, _ = engine.start(prompts, [policy(2), policy(8, exit="kl:0")])  # kl < 0 never: runs to its cap
    codas, coda_out = [], model.coda_out
    monkeypatch.setattr(model, "coda_out", lambda s, ctx: codas.append(s.size(0)) or coda_out(s, ctx))
    engine.feed(state, [0, 1], logits.argmax(-1))
    done, _, steps = engine.advance(state, 2)
    assert done == [0] and steps.tolist() == [2] and state.flight.done.tolist() == [2, 1]
    assert codas == [1, 2]  # the KL row's initial state; then both rows' heads, its first check among them


def test_prompt_pass_runs_each_row_to_its_own_depth(monkeypatch):
    model = tiny_model()
    prompts = [IDX[0, :5].tolist(), IDX[1, :9].tolist()]
    calls = count_core_rows(model, monkeypatch)
    state, logits, steps = Engine(model).start(prompts, [policy(9), policy(2)])
    assert calls == [2, 2] + [1] * 7 and steps.tolist() == [9, 2]
    for b, (p, r) in enumerate(zip(prompts, (9, 2), strict=True)):
        assert (Engine(model).start([p], policy(r))[1][0] - logits[b]).abs().max() <= 1e-5


@pytest.mark.parametrize("mixed", [False, True])
def test_sequences_joining_take_the_places_of_ended_ones(mixed):
    """A server's loop: sequences end and new ones join between steps. A newcomer takes an ended row's place (the
    batch does not grow, nothing is copied) and decodes exactly as alone — rows of one depth stepping together, or
    of mixed depths and exits by depth batching."""
    from recurlm.inference.generation import GenerationLoop, Sequence

    model = tiny_model()
    prompts = [IDX[0, :3], IDX[1, :9], IDX[0, 2:8], IDX[1, :2], IDX[1, 3:7], IDX[0, 5:12]]
    prompts = [p.tolist() for p in prompts]
    if mixed:
        exit = varied_exit(model, "latent", prompts, 8)
        policies = [policy(6), policy(2), policy(8, exit=exit), policy(3), policy(8, exit=exit), policy(5)]
    else:
        policies = [policy(3)] * 6
    budgets = [2, 7, 7, 7, 7, 6]  # the first ends after 2 tokens; the sixth joins into its place
    alone = [Engine(model).generate([p], n, q).tokens[0] for p, n, q in zip(prompts, budgets, policies, strict=True)]
    seqs = [Sequence(p, n, q) for p, n, q in zip(prompts, budgets, policies, strict=True)]
    loop = GenerationLoop(Engine(model))
    loop.add(seqs[:5])  # one ended row of five stays in the batch (a quarter of it must end before it shrinks)
    widths = []
    while len(loop):
        loop.step()
        widths.append(len(loop.rows))
        if seqs[0].finish and seqs[5].generator is None:
            loop.add([seqs[5]])
            assert len(loop.rows) == 5 and loop.rows[0] is seqs[5]
    assert [s.generated for s in seqs] == alone
    assert max(widths) == 5


def test_depth_batching_is_chosen_where_the_looped_core_outweighs_the_plain_blocks():
    """Rows of different depths decode by depth batching when the core recurrences the shallow rows would idle
    through cost more than the extra prelude and coda calls: on a (1,2,1) model at caps 8 and 2, not on a (3,1,4)
    one (the shipped recursive-nanochat-mini's shape) whose exits may stop a token at 1 of 8; one depth never."""
    from recurlm.inference.generation import GenerationLoop, Sequence

    prompts = [IDX[0, :3].tolist(), IDX[1, :5].tolist()]
    cases = [
        ({}, [policy(8), policy(2)], True),
        ({}, [policy(3), policy(3)], False),
        ({"n_prelude": 3, "n_core": 1, "n_coda": 4}, [policy(8, exit="latent:0.1")] * 2, False),
        ({"n_prelude": 3, "n_core": 1, "n_coda": 4}, [policy(16), policy(2)], True),
    ]
    for shape, policies, depthwise in cases:
        loop = GenerationLoop(Engine(tiny_model(**shape)))
        loop.add([Sequence(p, 4, q) for p, q in zip(prompts, policies, strict=True)])
        assert loop._depthwise() == depthwise, (shape, policies)
        loop.batching = "depth"
        assert loop._depthwise() == (len({q.recurrences for q in policies}) > 1 or policies[0].exit != "none")
