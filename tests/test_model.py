import pytest
import torch
from helpers import tiny_config, tiny_model

from recurlm.errors import UserError
from recurlm.network.model import build_model


def logits(model, idx, r=3):
    with torch.no_grad():
        return model(idx, r)


IDX = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(0))


def test_any_r_including_untrained_and_plain_gpt():
    model = tiny_model()
    for r in (1, 2, 5, 32):
        out = logits(model, IDX, r)
        assert out.shape == (2, 12, 37) and torch.isfinite(out).all()
    assert not torch.allclose(logits(model, IDX, 1), logits(model, IDX, 4))
    with pytest.raises(AssertionError, match="recurrences"):  # a policy refuses r = 0 first (config.py)
        model(IDX, 0)
    plain = tiny_model(n_core=0, n_prelude=2)
    assert torch.equal(logits(plain, IDX, 1), logits(plain, IDX, 7))  # R = 0: r does nothing


def test_causal():
    model = tiny_model()
    a = logits(model, IDX)
    b = IDX.clone()
    b[:, 8:] = (b[:, 8:] + 1) % 37
    assert torch.allclose(a[:, :8], logits(model, b)[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], logits(model, b)[:, 8:])


def test_concat_linear_at_init_ignores_initial_state():
    outs = {}
    for init in ("prelude", "zero", "random"):
        model = tiny_model(state_init=init, inject="concat_linear")
        with torch.no_grad():  # W = [I | 0] again after the test noise
            model.inject.weight.zero_()
            model.inject.weight[:, :32] = torch.eye(32)
        outs[init] = logits(model, IDX)
    assert torch.allclose(outs["prelude"], outs["zero"], atol=1e-6)
    assert torch.allclose(outs["prelude"], outs["random"], atol=1e-6)
    with torch.no_grad():
        model.inject.weight[:, 32:] = 0.1 * torch.randn(32, 32)  # once W reads the state, the init matters
    assert not torch.allclose(logits(model, IDX), outs["prelude"], atol=1e-4)


def test_gate_starts_near_open():
    torch.manual_seed(0)
    model = build_model(tiny_config(gate=True))
    s, u = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    g = torch.sigmoid(model.gate(torch.cat([s, u], -1)) + model.gate_bias)
    assert g.min() > 0.95


def test_lora_at_init_changes_nothing_then_does():
    torch.manual_seed(0)
    lora = build_model(tiny_config(recur_lora_rank=4, recur_lora_count=2))
    base = tiny_model()
    missing, unexpected = lora.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all("lora" in k for k in missing)
    lora.eval()
    assert torch.allclose(logits(lora, IDX, 4), logits(base, IDX, 4), atol=1e-6)
    with torch.no_grad():
        lora.core[0].mlp.c_fc.lora_b[1].normal_()  # adapter 1 serves iterations 1, 2, 3 (the last reused)
    assert torch.allclose(logits(lora, IDX, 1), logits(base, IDX, 1), atol=1e-6)
    assert not torch.allclose(logits(lora, IDX, 4), logits(base, IDX, 4), atol=1e-4)


def saved_bytes(model, idx, r, bptt_k):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(idx, r, bptt_k=bptt_k).logsumexp(-1).mean()
    return total, loss


def test_truncated_bptt_memory_and_gradients():
    model = tiny_model().train()
    b8k2, loss = saved_bytes(model, IDX, 8, bptt_k=2)
    b2k2, _ = saved_bytes(model, IDX, 2, bptt_k=2)
    b8full, _ = saved_bytes(model, IDX, 8, bptt_k=0)
    assert b8k2 == b2k2  # the 6 gradient-free iterations saved nothing
    assert b8full > 2.5 * b8k2
    loss.backward()
    assert model.wte.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prelude.parameters())
    assert all(p.grad is not None for p in model.core.parameters())
    with torch.no_grad():  # truncation changes the gradients, never the forward
        assert torch.equal(model(IDX, 8, bptt_k=2), model(IDX, 8))


def test_low_rank_projection_counts():
    full = build_model(tiny_config(proj_rank=0), "meta")
    low = build_model(tiny_config(proj_rank=4), "meta")
    q = low.core[0].attn.c_q
    assert q.a.shape == (32, 4) and q.b.shape == (4, 32)
    per_block_full = 4 * 32 * 32 + 2 * 32 * 128
    per_block_low = 4 * 4 * (32 + 32) + 2 * 4 * (32 + 128)
    blocks = 4
    assert full.param_groups()["unique"] - low.param_groups()["unique"] == blocks * (per_block_full - per_block_low)


def test_softcap_bounds_logits():
    model = tiny_model(logit_softcap=2.0, noise=1.0)
    assert logits(model, IDX).abs().max() <= 2.0
    assert tiny_model(noise=1.0)(IDX, 3).abs().max() > 2.0


def test_tied_embeddings():
    model = tiny_model(tie_embeddings=True)
    assert model.lm_head is None
    untied = build_model(tiny_config(), "meta")
    assert untied.param_groups()["unique"] - model.param_groups()["unique"] == 37 * 32


@pytest.mark.parametrize(
    "change",
    [
        dict(mlp="swiglu"),
        dict(n_kv_head=2),
        dict(inject="add"),
        dict(gate=True),
        dict(state_init="zero", inject="add"),
        dict(rope_theta=100.0),
        dict(recur_lora_rank=2, recur_lora_count=4),
        dict(logit_softcap=1.0),
    ],
)
def test_every_switch_changes_the_output(change):
    assert not torch.allclose(logits(tiny_model(), IDX), logits(tiny_model(**change), IDX), atol=1e-4)


def test_param_accounting():
    model = tiny_model(recur_lora_rank=2, recur_lora_count=3, gate=True)
    g = model.param_groups()
    assert g["unique"] == sum(p.numel() for p in model.parameters())
    assert model.params_per_token(3) - model.params_per_token(2) == g["core_per_iteration"]
    lora_one = sum(m.lora_params_per_adapter() for m in model.core.modules() if hasattr(m, "lora_a"))
    core_all = sum(p.numel() for p in model.core.parameters())
    assert g["core_per_iteration"] == core_all - 3 * lora_one + lora_one + 2 * (2 * 32 * 32) + 32


def test_nope_drops_rotary_and_nothing_else():
    """`rope = false`: the same weights give other logits, and a one-token sequence (position 0, where rotary is the
    identity) gives the same ones."""
    rope, nope = tiny_model(seed=3), tiny_model(seed=3, rope=False)
    x = torch.randint(0, 37, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(rope(x, 2), nope(x, 2), atol=1e-4)
        assert torch.allclose(rope(x[:, :1], 2), nope(x[:, :1], 2), atol=1e-6)


@pytest.mark.parametrize("kv_heads, autocast", [(4, False), (2, False), (4, True)])
def test_written_out_bf16_attention_matches_sdpa(kv_heads, autocast, monkeypatch):
    import recurlm.network.model as model

    calls = []
    written_out = model.written_out_causal_attention
    monkeypatch.setattr(model, "written_out_causal_attention", lambda *a: calls.append(1) or written_out(*a))
    monkeypatch.setattr(model, "cpu_has_amx", lambda: False)  # the CPUs where it is written out
    monkeypatch.setattr(model, "_written_out", None)  # the CPU rule, not a choice a training in this process made
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 40, 16, generator=g)
    k, v = torch.randn(2, 2, kv_heads, 40, 16, generator=g)
    # under autocast the rotary tables leave queries and keys in fp32 (as in the model)
    bf = [t.bfloat16().float() if autocast else t.bfloat16() for t in (q, k, v)]
    bf = [t.requires_grad_() for t in bf]
    fp = [t.bfloat16().float().requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fast = model.attend(*bf, None, True)
    exact = torch.nn.functional.scaled_dot_product_attention(*fp, is_causal=True, enable_gqa=kv_heads != 4)
    assert calls and fast.dtype == torch.bfloat16
    assert (fast.float() - exact).abs().max() < 2e-2
    assert (fast[:, :, 0].float() - fp[2][:, :, 0].repeat_interleave(4 // kv_heads, 1)).abs().max() < 1e-2  # causal
    fast.float().pow(2).sum().backward()
    exact.pow(2).sum().backward()
    for a, b in zip(bf, fp, strict=True):
        assert (a.grad.float() - b.grad).abs().max() < 0.1 * b.grad.abs().max()
    model.attend(*fp, None, True)  # fp32: the flash kernel
    monkeypatch.setattr(model, "cpu_has_amx", lambda: True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model.attend(*bf, None, True)  # with AMX: the flash kernel too
    assert len(calls) == 1


@pytest.mark.parametrize("rope", [False, True])
def test_context_raised_at_inference_keeps_what_fits_the_trained_one(rope):
    from recurlm.errors import UserError

    model = tiny_model(rope=rope)
    long = torch.randint(0, 37, (1, 80), generator=torch.Generator().manual_seed(2))
    with pytest.raises(UserError, match="longer than the context"):
        logits(model, long)
    short = logits(model, long[:, :48])
    model.set_context(96)
    assert model.cfg.seq_len == 96 and model.cos.size(1) == 96
    out = logits(model, long)
    assert out.shape == (1, 80, 37) and torch.isfinite(out).all()
    assert torch.allclose(out[:, :48], short, atol=1e-5)  # the first 48 positions compute what they did
    model.set_context(0)  # 0: keep what is there
    assert model.cfg.seq_len == 96


def test_policy_context_from_flag_and_checkpoint(tmp_path):
    from recurlm.checkpoint import build_tokenizer, load_checkpoint, save_checkpoint
    from recurlm.cli.common import policy_from
    from recurlm.config import InferencePolicy, load_config

    assert policy_from(type("Args", (), {"context": 300})(), InferencePolicy(recurrences=2)).context == 300
    small = ["d_model=32", "n_head=2", "mlp_hidden=64", "seq_len=128", "inference.context=320"]
    configs = load_config("addition-length", overrides=small)
    save_checkpoint(tmp_path / "ckpt", build_model(configs.model), build_tokenizer(configs), configs)
    loaded, _, saved = load_checkpoint(tmp_path / "ckpt")
    assert saved.model.seq_len == 128 and loaded.cfg.seq_len == 320  # the trained context stays on record


def test_contractive_injection_shrinks_the_state_for_any_parameters():
    model = build_model(tiny_config(inject="contractive"))  # at init the blocks are identities: s <- s / 2 + e
    ctx = model.context(IDX.size(1))
    with torch.no_grad():
        e = model.embed(IDX, ctx)
        s = model.init_state(e)
        assert torch.allclose(model.core_step(e, s, 0, ctx), 0.5 * s + e, atol=1e-6)
        model.decay.copy_(torch.linspace(-8, 8, model.decay.numel()))  # whatever theta learns: lambda in [0, 1)
        lam = torch.exp(-torch.exp(model.decay))
        assert (lam < 1).all() and (lam >= 0).all()
        x, y = torch.randn_like(e), torch.randn_like(e)
        gap = (model.injected(e, x) - model.injected(e, y)).abs()
        assert (gap <= (x - y).abs() + 1e-6).all()  # a contraction of the old state, channel by channel
    added = build_model(tiny_config(inject="add")).param_groups()["core_per_iteration"]
    assert model.param_groups()["core_per_iteration"] == added + model.cfg.d_model  # one theta per channel


def test_contractive_init_sets_lambda_at_the_start_and_is_checked():
    model = build_model(tiny_config(inject="contractive", contractive_init=0.9))
    ctx = model.context(IDX.size(1))
    with torch.no_grad():
        e = model.embed(IDX, ctx)
        s = model.init_state(e)
        assert torch.allclose(model.core_step(e, s, 0, ctx), 0.9 * s + e, atol=1e-5)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(UserError, match="contractive_init"):
            tiny_config(inject="contractive", contractive_init=bad)


def test_sandwich_norm_bounds_what_each_sublayer_adds():
    """model.sandwich_norm: a sublayer's output is normalised (scale-free) and scaled by its learned gain before the
    residual sum; with gains at zero every block is the identity. Without it, a projection's scale shows."""
    ctx = torch.randint(0, 37, (1, 9), generator=torch.Generator().manual_seed(1))
    for sandwich in (True, False):
        model = tiny_model(sandwich_norm=sandwich)
        block, x = model.core[0], torch.randn(1, 9, 32)
        context = model.context(9)
        with torch.no_grad():
            before = block(x, context)
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.mul_(10)
            after = block(x, context)
        assert torch.allclose(before, after, atol=1e-4) == sandwich
    sandwiched = tiny_model(sandwich_norm=True)
    with torch.no_grad():
        for b in [*sandwiched.prelude, *sandwiched.core, *sandwiched.coda]:
            b.attn_gain.zero_()
            b.mlp_gain.zero_()
        x = torch.randn(1, 9, 32)
        assert torch.equal(sandwiched.core[1](x, sandwiched.context(9)), x)
        assert not torch.allclose(logits(sandwiched, ctx), logits(tiny_model(), ctx), atol=1e-4)
    fresh = build_model(tiny_config(sandwich_norm=True))  # output projections start non-zero (a zero would blow up)
    assert fresh.core[0].attn.c_proj.weight.abs().sum() > 0 and fresh.core[0].mlp_gain.eq(1).all()
    assert fresh.param_groups()["unique"] == build_model(tiny_config()).param_groups()["unique"] + 4 * 2 * 32
