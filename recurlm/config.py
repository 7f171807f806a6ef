"""Configuration: the model dataclass, presets (TOML files shipped in the package) and `--set` overrides.

Defaults live here and only here; a preset overrides some of them, `--config FILE.toml` and `--set key=value`
override the preset. Every field is read by the code (see tests/test_config.py and the model tests).
"""

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: the CLI prints it as one line on stderr and exits non-zero."""


@dataclass
class ModelConfig:
    vocab_size: int = 256
    seq_len: int = 256  # context length: RoPE tables and the KV cache are sized for it
    d_model: int = 256
    n_head: int = 4
    n_kv_head: int = 0  # 0: same as n_head; fewer: grouped-query attention
    n_prelude: int = 2  # P: unique blocks run once before the loop
    n_core: int = 4  # R: unique blocks run r times (0 = plain GPT)
    n_coda: int = 2  # C: unique blocks run once after the loop
    mlp: str = "relu2"  # 'relu2' (nanochat) or 'swiglu'
    mlp_hidden: int = 0  # 0: 4 * d_model
    tie_embeddings: bool = False
    logit_softcap: float = 0.0  # 0: off; else logits = c * tanh(logits / c)
    proj_rank: int = 0  # 0: full projections; k: every projection is W = A @ B of rank k (MiniAxion)
    rope_theta: float = 10000.0
    abacus: int = 0  # digit-significance embeddings (McLeish et al. 2024) for numbers up to this many digits; 0: off
    inject: str = "concat_linear"  # 'add': e + s; 'concat_linear': W [e; s] with W initialised to [I | 0]
    gate: bool = False  # RR-SLM refinement gate: s = g * s_new + (1 - g) * s
    state_init: str = "prelude"  # 'prelude' (s = e), 'zero' or 'random' (truncated normal, Huginn)
    recur_lora_rank: int = 0  # per-iteration LoRA on every core projection (0: off)
    recur_lora_count: int = 0  # number of adapters; iterations past the last reuse it (0: recur_max)
    train_recur: str = "poisson_lognormal"  # 'fixed' (r = recur_mean) or 'poisson_lognormal'
    recur_mean: float = 4.0
    recur_sigma: float = 0.5
    recur_max: int = 16
    bptt_k: int = 4  # gradients flow through the last k iterations only (0: all)
    kv_budget: int = 1  # core KV slots per block at inference (DESIGN §2); 1 = recursive nanochat
    warm_start: bool = True  # a decoded token's state starts from the previous token's final state
    exit: str = "none"  # adaptive exit at inference: 'none', 'latent:EPS' or 'kl:EPS'
    exit_min_steps: int = 1

    def __post_init__(self):
        choices = {
            "mlp": ("relu2", "swiglu"),
            "inject": ("add", "concat_linear"),
            "state_init": ("prelude", "zero", "random"),
            "train_recur": ("fixed", "poisson_lognormal"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"model.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("vocab_size", "seq_len", "d_model", "n_head", "recur_max", "kv_budget", "exit_min_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "n_kv_head",
            "n_prelude",
            "n_core",
            "n_coda",
            "mlp_hidden",
            "proj_rank",
            "recur_lora_rank",
            "recur_lora_count",
            "bptt_k",
            "abacus",
        ):
            if getattr(self, name) < 0:
                raise UserError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if self.d_model % self.n_head or self.head_dim % 2:
            raise UserError(f"model.d_model ({self.d_model}) must be n_head ({self.n_head}) times an even head dim")
        if self.n_head % self.kv_heads:
            raise UserError(f"model.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if not 1 <= self.recur_mean <= self.recur_max:
            raise UserError(f"model.recur_mean must be in [1, recur_max={self.recur_max}], got {self.recur_mean}")
        if self.n_prelude + self.n_core + self.n_coda == 0:
            raise UserError("the model needs at least one block (n_prelude + n_core + n_coda >= 1)")
        from recurlm.exits import parse_exit  # late import: exits imports nothing from here but UserError

        parse_exit(self.exit)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.d_model

    @property
    def lora_count(self) -> int:
        return self.recur_lora_count or self.recur_max

    @property
    def default_recurrences(self) -> int:
        """The r used at inference unless asked otherwise: the training mean (1 for a plain GPT)."""
        return round(self.recur_mean) if self.n_core else 1


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # 'char' (a fixed alphabet) or 'bpe' (byte-level, trained to model.vocab_size)
    alphabet: str = ""  # for 'char'
    specials: str = "all"  # 'all' project special tokens, or 'pad' only (the 13-symbol RR-SLM vocab)

    def __post_init__(self):
        if self.kind not in ("char", "bpe"):
            raise UserError(f"tokenizer.kind must be char or bpe, got {self.kind!r}")
        if self.specials not in ("all", "pad"):
            raise UserError(f"tokenizer.specials must be all or pad, got {self.specials!r}")
        if self.kind == "char" and not self.alphabet:
            raise UserError("tokenizer.alphabet must be set for a char tokenizer")


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 32  # sequences per micro-step and rank
    grad_accum: int = 1
    optimizer: str = "adamw"  # 'adamw', or 'muon' (Muon for block matrices, AdamW for the rest, as nanochat)
    lr: float = 3e-3  # AdamW (embeddings, head, scalars; everything with 'adamw')
    matrix_lr: float = 0.02  # Muon
    weight_decay: float = 0.0
    warmup_steps: int = 20
    warmdown_frac: float = 0.3  # the last fraction of each stage decays the lr linearly to final_lr_frac
    final_lr_frac: float = 0.05
    grad_clip: float = 1.0  # 0: off
    dtype: str = "auto"  # 'auto' (bf16 on CUDA and on CPUs with AMX), 'bf16' or 'fp32'
    compile: bool = False  # torch.compile each block; the recurrence loop stays eager (no recompile per r)
    log_every: int = 10
    eval_every: int = 100  # steps; also where curriculum promotion is decided (0: only at the end)
    eval_n: int = 100  # validation examples per difficulty
    ckpt_every: int = 200

    def __post_init__(self):
        if self.optimizer not in ("adamw", "muon"):
            raise UserError(f"train.optimizer must be adamw or muon, got {self.optimizer!r}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise UserError(f"train.dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        for name in ("batch_size", "grad_accum", "log_every", "ckpt_every", "eval_n"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class StageConfig:
    """One training stage ([stage.NAME] in a preset): what data, how long, at what learning rate."""

    steps: int = 100
    lr_scale: float = 1.0
    tasks: str = ""  # comma-separated task names, mixed uniformly
    text: str = ""  # a text corpus (.txt, .jsonl with 'text', .parquet, a directory) instead of tasks
    seq_len: int = 0  # packed row length for text (0: model.seq_len)
    loss: str = "completion"  # 'completion' (SFT: loss on the target only) or 'all' tokens
    max_difficulty: int = 3  # tasks with difficulties (addition digits) go up to this
    reverse_answer: bool = False  # addition: write the sum least-significant digit first
    curriculum: str = "none"  # 'none', 'accuracy' (promote when val accuracy >= promote_at) or 'schedule'
    promote_at: float = 0.95
    promote_every: int = 0  # steps per curriculum level with 'schedule'
    review_frac: float = 0.2  # share of each batch drawn from the levels already passed, against forgetting

    def __post_init__(self):
        if self.steps < 1:
            raise UserError(f"stage steps must be >= 1, got {self.steps}")
        if self.loss not in ("completion", "all"):
            raise UserError(f"stage loss must be completion or all, got {self.loss!r}")
        if self.curriculum not in ("none", "accuracy", "schedule"):
            raise UserError(f"stage curriculum must be none, accuracy or schedule, got {self.curriculum!r}")
        if self.curriculum == "schedule" and self.promote_every < 1:
            raise UserError("stage curriculum 'schedule' needs promote_every >= 1")
        if self.tasks and self.text:
            raise UserError("a stage trains on tasks or on text, not both: make two stages")


# Sections of a config file / preset and the dataclass that holds each; 'stage' holds one table per stage, in order.
SECTIONS: dict[str, type] = {"model": ModelConfig, "tokenizer": TokenizerConfig, "train": TrainConfig}
STAGE = "stage"


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml") for p in resources.files("recurlm.presets").iterdir() if p.name.endswith(".toml")
    )


def _read_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: invalid TOML: {e}") from None


def read_preset(name: str) -> dict:
    if name not in preset_names():
        raise UserError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return _read_toml(resources.files("recurlm.presets").joinpath(f"{name}.toml").read_text(), f"preset {name}")


def _parse_value(key: str, text: str, typ: type):
    if typ is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{key}: expected true or false, got {text!r}")
    try:
        return typ(text)
    except ValueError:
        raise UserError(f"{key}: expected {typ.__name__}, got {text!r}") from None


def _field_types(section: str) -> dict[str, type]:
    return {f.name: f.type for f in fields(SECTIONS[section])}


def _check_value(key: str, value, typ: type):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UserError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


def _merge_table(out: dict, values: dict, cls: type, prefix: str, where: str):
    types = {f.name: f.type for f in fields(cls)}
    if not isinstance(values, dict):
        raise UserError(f"{where}: {prefix} must be a table")
    for key, value in values.items():
        if key not in types:
            raise UserError(f"{where}: unknown config key {prefix}.{key}")
        out[key] = _check_value(f"{prefix}.{key}", value, types[key])


def merge(base: dict, update: dict, where: str) -> dict:
    """Overlay `update` ({section: {key: value}}, and {'stage': {name: {key: value}}}) on `base`, rejecting unknown
    sections, keys and wrong types."""
    out = {s: dict(base.get(s, {})) for s in SECTIONS}
    out[STAGE] = {name: dict(v) for name, v in base.get(STAGE, {}).items()}
    for section, values in update.items():
        if section == "description":
            continue
        if section == STAGE and isinstance(values, dict):
            for name, table in values.items():
                _merge_table(out[STAGE].setdefault(name, {}), table, StageConfig, f"stage.{name}", where)
            continue
        if section not in SECTIONS:
            known = ", ".join([*SECTIONS, STAGE])
            raise UserError(f"{where}: unknown config section {section!r} (known: {known})")
        _merge_table(out[section], values, SECTIONS[section], section, where)
    return out


def parse_overrides(pairs: list[str], stages: dict | None = None) -> dict:
    """`--set model.d_model=128` (or just `d_model=128` when the key is in one section only),
    `--set stage.NAME.steps=500` for a stage of the preset."""
    update: dict[str, dict] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UserError(f"--set expects key=value, got {pair!r}")
        parts = key.strip().split(".")
        if parts[0] == STAGE:
            types = {f.name: f.type for f in fields(StageConfig)}
            if len(parts) != 3 or parts[2] not in types:
                raise UserError(f"unknown config key {key.strip()!r} (stages take stage.NAME.KEY)")
            if stages is not None and parts[1] not in stages:
                raise UserError(f"unknown stage {parts[1]!r}; this config has: {', '.join(stages) or 'none'}")
            value = _parse_value(key, text.strip(), types[parts[2]])
            update.setdefault(STAGE, {}).setdefault(parts[1], {})[parts[2]] = value
            continue
        section, dot, name = key.strip().rpartition(".")
        if not dot:
            owners = [s for s in SECTIONS if name in _field_types(s)]
            if not owners:
                raise UserError(f"unknown config key {name!r}")
            if len(owners) > 1:
                choices = ", ".join(f"{o}.{name}" for o in owners)
                raise UserError(f"ambiguous config key {name!r}: write one of {choices}")
            section = owners[0]
        if section not in SECTIONS or name not in _field_types(section):
            raise UserError(f"unknown config key {key.strip()!r}")
        update.setdefault(section, {})[name] = _parse_value(key, text.strip(), _field_types(section)[name])
    return update


def load_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> dict:
    """Preset, then config file, then --set overrides; returns {section: dataclass instance}."""
    values: dict = {}
    if preset:
        values = merge(values, read_preset(preset), f"preset {preset}")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file not found: {config_file}")
        values = merge(values, _read_toml(path.read_text(), config_file), config_file)
    values = merge(values, parse_overrides(list(overrides), values.get(STAGE, {})), "--set")
    return build_configs(values)


def build_configs(values: dict) -> dict:
    """{section: dataclass} plus 'stage': {name: StageConfig}, in the order the stages were declared."""
    configs = {s: SECTIONS[s](**values.get(s, {})) for s in SECTIONS}
    configs[STAGE] = {name: StageConfig(**v) for name, v in values.get(STAGE, {}).items()}
    return configs


def configs_to_dict(configs: dict) -> dict:
    out = {s: dataclasses.asdict(configs[s]) for s in SECTIONS}
    out[STAGE] = {name: dataclasses.asdict(c) for name, c in configs.get(STAGE, {}).items()}
    return out
