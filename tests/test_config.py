import pytest

from recurlm.config import (
    InferencePolicy,
    ModelConfig,
    RecurrenceConfig,
    StageConfig,
    load_config,
    parse_overrides,
    preset_names,
)
from recurlm.errors import UserError
from recurlm.network.model import build_model


def test_presets_exist():
    assert set(preset_names()) >= {"recursive-nanochat-d20", "nanochat-d20", "rrslm-addition", "miniaxion-0.9m"}


def test_nanochat_param_counts():
    d20 = build_model(load_config("nanochat-d20").model, "meta")
    assert d20.param_groups()["unique"] == 560_988_160
    rec = build_model(load_config("recursive-nanochat-d20").model, "meta")
    # 8 blocks of 12 d^2, untied 65536-token embeddings and head, the 2d -> d concat_linear injection
    assert rec.param_groups()["unique"] == 328_335_360
    assert rec.effective_depth(4) == 20 and d20.effective_depth(1) == 20


def test_small_presets_param_counts():
    mini = build_model(load_config("miniaxion-0.9m").model, "meta")
    assert abs(mini.param_groups()["unique"] - 920_833) / 920_833 < 0.03  # 942,080: see the preset notes
    rr = build_model(load_config("rrslm-addition").model, "meta")
    assert rr.cfg.vocab_size == 13 and rr.cfg.gate
    assert 1.4e6 < rr.param_groups()["unique"] < 1.8e6


def test_flops_grow_with_r_and_match_plain_gpt_at_equal_depth():
    rec = build_model(load_config("recursive-nanochat-d20").model, "meta")
    d20 = build_model(load_config("nanochat-d20").model, "meta")
    assert rec.flops_per_token(8) > rec.flops_per_token(4) > rec.flops_per_token(2)
    # same effective depth (20): FLOPs differ only by the injection matmuls (4 x 2d x d x 2)
    assert rec.flops_per_token(4) - d20.flops_per_token(1) == 2 * 4 * 2 * 1280 * 1280


def test_unknown_preset_and_key():
    with pytest.raises(UserError, match="unknown preset"):
        load_config("nope")
    with pytest.raises(UserError, match="unknown config key"):
        load_config("rrslm-addition", overrides=["model.nope=1"])
    with pytest.raises(UserError, match="expected int"):
        load_config("rrslm-addition", overrides=["d_model=abc"])


def test_overrides_and_config_file(tmp_path):
    assert parse_overrides(["d_model=64", "model.gate=true", "logit_softcap=15"]) == {
        "model": {"d_model": 64, "gate": True, "logit_softcap": 15.0}
    }
    f = tmp_path / "c.toml"
    f.write_text("[model]\nd_model = 64\nn_head = 2\n")
    cfg = load_config("rrslm-addition", str(f), ["n_head=8"]).model
    assert (cfg.d_model, cfg.n_head, cfg.vocab_size) == (64, 8, 13)
    f.write_text('[model]\nd_model = "wide"\n')
    with pytest.raises(UserError, match="expected int"):
        load_config("rrslm-addition", str(f))
    f.write_text("[modle]\nd_model = 3\n")
    with pytest.raises(UserError, match="unknown config section"):
        load_config(None, str(f))


@pytest.mark.parametrize(
    "cls, bad",
    [
        (ModelConfig, dict(mlp="gelu")),
        (ModelConfig, dict(inject="sum")),
        (ModelConfig, dict(d_model=30, n_head=4)),
        (ModelConfig, dict(n_head=4, n_kv_head=3)),
        (ModelConfig, dict(state_init="ones")),
        (ModelConfig, dict(recur_lora_rank=4)),
        (ModelConfig, dict(abacus=4, abacus_shift=4)),
        (ModelConfig, dict(abacus_shift=-1)),
        (StageConfig, dict(pack=0)),
        (RecurrenceConfig, dict(mean=20)),
        (RecurrenceConfig, dict(schedule="geometric")),
        (RecurrenceConfig, dict(progressive=1.5)),
        (RecurrenceConfig, dict(supervise_every=-1)),
        (InferencePolicy, dict(context=-5)),
        (InferencePolicy, dict(exit="foo:1")),
        (InferencePolicy, dict(exit="latent:x")),
        (InferencePolicy, dict(kv_budget=0)),
        (InferencePolicy, dict(top_p=0.0)),
    ],
)
def test_invalid_values(cls, bad):
    with pytest.raises(UserError):
        cls(**bad)


def test_sections_keep_architecture_schedule_and_policy_apart():
    configs = load_config("recursive-nanochat-d20")
    assert configs.recurrence.mean == 4.0 and configs.recurrence.bptt_k == 4
    assert configs.inference.recurrences == 4 and configs.inference.kv_budget == 1
    assert not {"exit", "kv_budget", "bptt_k", "recur_mean"} & set(vars(configs.model))
    # a bare key finds its section; a key that moved says where to
    assert load_config("rrslm-addition", overrides=["kv_budget=5"]).inference.kv_budget == 5
    with pytest.raises(UserError, match=r"now inference\.exit"):
        load_config("rrslm-addition", overrides=["model.exit=kl:0.1"])
    # an unset inference r is the training mean, resolved when the config is built (1 for a plain GPT)
    assert load_config("rrslm-addition", overrides=["inference.recurrences=0"]).inference.recurrences == 5
    assert load_config("nanochat-d20", overrides=["inference.recurrences=0"]).inference.recurrences == 1
    # LoRA adapters default to one per iteration up to the schedule's max
    lora = load_config("rrslm-addition", overrides=["recur_lora_rank=2"]).model
    assert lora.recur_lora_count == 5


def test_policy_overrides_field_by_field():
    base = load_config("recursive-nanochat-d20").inference
    run = base.override(recurrences=8, exit="kl:0.01", warm_start=None, temperature=None)
    assert (run.recurrences, run.exit, run.warm_start, run.temperature) == (8, "kl:0.01", True, 0.6)
    assert run.steps_cap == 8 and run.override(max_steps=3).steps_cap == 3
    assert run.override(exit="none", max_steps=3).steps_cap == 8  # the cap belongs to adaptive exit
    with pytest.raises(UserError, match="exit"):
        base.override(exit="sometimes")


def test_a_stage_of_zero_steps_is_left_out():
    """How a preset's plain baseline drops the exit gate's stage (a plain GPT has no steps to exit)."""
    plain = ["model.n_prelude=8", "model.n_core=0", "model.n_coda=0", "model.exit_gate=false"]
    with pytest.raises(UserError, match="stage gate trains only the exit gate"):
        load_config("recursive-nanochat-mini", overrides=plain)
    configs = load_config("recursive-nanochat-mini", overrides=[*plain, "stage.gate.steps=0"])
    assert list(configs.stages) == ["pretrain", "sft"] and configs.model.n_core == 0
    with pytest.raises(UserError, match="steps must be >= 0"):
        load_config("recursive-nanochat-mini", overrides=["stage.gate.steps=-1"])
