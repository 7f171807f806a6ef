"""Configuration: what the weights mean, how they were trained, how to run them; presets and `--set` overrides.

A config is one dataclass per section of a preset's TOML: `[model]` the architecture (all that decides whether a
checkpoint's weights fit: resume, import and compare check it alone), `[recurrence]` the training-depth schedule,
`[inference]` the default inference policy (a checkpoint records it; CLI flags and API request fields override it
field by field), `[tokenizer]`, `[train]` and one `[stage.NAME]` per training stage.

Defaults live here and only here; a preset overrides some of them, `--config FILE.toml` and `--set key=value`
override the preset. Every field is read by the code (see tests/test_config.py and the model tests).
"""

import dataclasses
import math
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

from recurlm.errors import UserError

# The exit criteria recurlm.network.exits implements (tests/test_engine.py checks the two lists agree): named here
# so that the grammar of an exit spec is checked in one place, whatever reads it (flags, requests, config files).
EXIT_CRITERIA = ("latent", "kl", "entropy", "cosine", "minp", "argmax", "gate")
EXIT_HELP = "none, latent:EPS, kl:EPS, entropy:EPS, cosine:EPS, minp:EPS, argmax:N or gate:Q"


def parse_exit(spec: str | None) -> tuple[str, float] | None:
    """'none' -> None; 'latent:0.03' -> ('latent', 0.03): stop once the measure falls below the threshold
    ('argmax:2' -> ('argmax', 2.0): once the top token has stayed the same for 2 iterations)."""
    if spec is None or spec == "none":
        return None
    if not isinstance(spec, str):
        raise UserError(f"an exit criterion is a string such as latent:0.03, got {spec!r}")
    name, _, value = spec.partition(":")
    if name not in EXIT_CRITERIA:
        raise UserError(f"unknown exit criterion {spec!r}: use {EXIT_HELP}")
    try:
        eps = float(value)
    except ValueError:
        raise UserError(f"exit criterion {spec!r} needs a number after the colon, e.g. {name}:0.03") from None
    if not (math.isfinite(eps) and eps >= 0):
        raise UserError(f"exit threshold must be a finite number >= 0, got {spec!r}")
    if name == "argmax" and not (eps >= 1 and eps == int(eps)):
        raise UserError(f"exit argmax:N needs a whole number N >= 1 (iterations with one top token), got {spec!r}")
    if name == "gate" and not 0 < eps <= 1:
        raise UserError(f"exit gate:Q needs a probability 0 < Q <= 1 (the learned gate's exit mass), got {spec!r}")
    return name, eps


def check_exit_fits(spec: str | None, model: "ModelConfig"):
    """An exit the model can run: `gate:Q` needs a learned exit gate (model.exit_gate)."""
    rule = parse_exit(spec)
    if rule is not None and rule[0] == "gate" and not (model.exit_gate and model.n_core):
        raise UserError(f"exit {spec}: this model has no learned exit gate (train with model.exit_gate = true)")


def _at_least(section: str, obj, minimum: int, names: tuple[str, ...]):
    for name in names:
        if getattr(obj, name) < minimum:
            raise UserError(f"{section}.{name} must be >= {minimum}, got {getattr(obj, name)}")


def _one_of(section: str, obj, name: str, allowed: tuple[str, ...]):
    if getattr(obj, name) not in allowed:
        raise UserError(f"{section}.{name} must be one of {', '.join(allowed)}, got {getattr(obj, name)!r}")


@dataclass
class ModelConfig:
    """The architecture: everything that decides the parameters and what the network computes with them."""

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
    rope: bool = True  # False: no positional encoding (NoPE): order from the causal mask (and Abacus ids) alone
    abacus: int = 0  # digit-significance embeddings (McLeish et al. 2024) for numbers up to this many digits; 0: off
    # the abacus ids as fixed orthogonal codes, not learned: every two different ids are equally far apart, so a
    # lookup that finds no digit of its significance (a shorter operand's missing columns) finds none at any
    # distance, not only at the few distances short training numbers show (tried on addition-length: it moved the
    # errors, did not remove them; README, Length generalisation)
    abacus_fixed: bool = False
    # Abacus ids at inference start at this k, as training shifts each example by a random one (stage.abacus_offset):
    # at k = 0 the '=' that predicts the units takes id 0, every non-digit token's, which training shows in only 1%
    # of examples (addition-length: 0 -> 1 took 30-digit sums 0.88 -> 1.00 and unequal lengths 0.90 -> 0.98, val)
    abacus_shift: int = 0
    # prompt digits also embed which number they belong to (1 = the prompt's first, up to this many; later ones share
    # the last): both operands of a sum share significance ids, and past the shorter one's last digit a model that
    # must tell them apart by its own means read the longer operand's digit twice (addition-length's wrong unequal
    # sums, README); 0: off
    abacus_operands: int = 0
    logn_attention: bool = False  # queries scaled by a learned per-head gain x log(position + 2) (scalable softmax,
    # Nakanishi 2025): QK-norm caps attention logits, so a lookup's weight fades as keys multiply; log n keeps it
    inject: str = "concat_linear"  # 'add': e + s; 'concat_linear': W [e; s] with W initialised to [I | 0]
    # 'contractive' (Parcae): lambda * s + e, lambda = exp(-exp(theta)) per channel, in (0, 1) by construction, so the
    # injected map shrinks the old state and the loop can settle
    contractive_init: float = 0.5  # lambda at initialisation: near 1 the loop starts close to 'add'
    gate: bool = False  # RR-SLM refinement gate: s = g * s_new + (1 - g) * s
    state_init: str = "prelude"  # 'prelude' (s = e), 'zero' or 'random' (truncated normal, Huginn)
    recur_lora_rank: int = 0  # per-iteration LoRA on every core projection (0: off)
    recur_lora_count: int = 0  # adapters; iterations past the last reuse it (0: one per iteration up to recurrence.max)
    # sandwich norm (Ouro, Gemma 2): each sublayer's output is normalised too, with a learned per-channel gain, before
    # it joins the residual stream: x + g * norm(f(norm(x))). What a looped block adds per pass stays bounded
    sandwich_norm: bool = False
    # Ouro's learned exit gate: lambda_t = sigmoid(w . norm(s_t) + b) after each recurrence t, trained through the
    # expected loss over the steps it would exit at (recurrence.gate_beta); inference exits on `gate:Q`
    exit_gate: bool = False

    def __post_init__(self):
        _one_of("model", self, "mlp", ("relu2", "swiglu"))
        _one_of("model", self, "inject", ("add", "concat_linear", "contractive"))
        _one_of("model", self, "state_init", ("prelude", "zero", "random"))
        _at_least("model", self, 1, ("vocab_size", "seq_len", "d_model", "n_head"))
        names = ("n_kv_head", "n_prelude", "n_core", "n_coda", "mlp_hidden", "proj_rank", "abacus", "abacus_shift")
        _at_least("model", self, 0, (*names, "abacus_operands", "recur_lora_rank", "recur_lora_count"))
        if self.d_model % self.n_head or self.head_dim % 2:
            raise UserError(f"model.d_model ({self.d_model}) must be n_head ({self.n_head}) times an even head dim")
        if self.n_head % self.kv_heads:
            raise UserError(f"model.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.abacus_shift and self.abacus_shift >= self.abacus:
            raise UserError(f"model.abacus_shift ({self.abacus_shift}) must be below model.abacus ({self.abacus})")
        if self.abacus_operands and not self.abacus:
            raise UserError("model.abacus_operands needs model.abacus (digit-significance ids)")
        if self.n_prelude + self.n_core + self.n_coda == 0:
            raise UserError("the model needs at least one block (n_prelude + n_core + n_coda >= 1)")
        if self.recur_lora_rank and not self.recur_lora_count:
            raise UserError("model.recur_lora_rank needs model.recur_lora_count (the number of adapters)")
        if not 0 < self.contractive_init < 1:
            raise UserError(f"model.contractive_init ({self.contractive_init}) must lie strictly between 0 and 1")
        if self.exit_gate and not self.n_core:
            raise UserError("model.exit_gate needs a looped core (n_core >= 1): a plain GPT has no steps to exit")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.d_model


@dataclass
class RecurrenceConfig:
    """How many recurrences a training step runs (docs/design.md §1) and how far back gradients flow."""

    schedule: str = "poisson_lognormal"  # 'fixed' (r = mean), 'poisson_lognormal' or 'uniform' (1 to 2 mean - 1)
    mean: float = 4.0
    sigma: float = 0.5
    max: int = 16
    bptt_k: int = 4  # gradients flow through the last k iterations only (0: all)
    # Against overthinking (docs/design.md §1). progressive: the weight of Bansal et al.'s progressive loss, the
    # loss after n iterations without gradient from the initial state and k more with it (n, k drawn per step),
    # mixed with the full-depth loss as (1 - w) full + w progressive.
    progressive: float = 0.0
    # progressive_sampled: each step trains on one of the two losses, the progressive one with probability
    # `progressive` (drawn from the seed and step): the same loss in expectation for one forward a step, where the
    # mix runs both (1.7x the time per step on MiniAxion)
    progressive_sampled: bool = False
    # deep supervision: also the loss after every supervise_every-th iteration (0: off), their mean weighted
    # supervise_weight against the final iteration's
    supervise_every: int = 0
    supervise_weight: float = 0.5
    # model.exit_gate: the entropy bonus of the exit distribution in the expected loss (Ouro's beta: without it the
    # gate collapses onto one step and the others go untrained), and, in a stage with exit_gate = "only", the least
    # loss improvement one more step must bring for the gate to be taught to go on
    gate_beta: float = 0.05
    gate_gamma: float = 0.01

    def __post_init__(self):
        _one_of("recurrence", self, "schedule", ("fixed", "poisson_lognormal", "uniform"))
        _at_least("recurrence", self, 1, ("max",))
        _at_least("recurrence", self, 0, ("bptt_k", "supervise_every", "gate_beta", "gate_gamma"))
        for name in ("progressive", "supervise_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"recurrence.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 1 <= self.mean <= self.max:
            raise UserError(f"recurrence.mean must be in [1, recurrence.max={self.max}], got {self.mean}")


@dataclass
class InferencePolicy:
    """How to run the weights: depth, adaptive exit, cache and sampling. A preset sets it, a checkpoint records it,
    and `override` (CLI flags, API request fields) replaces it field by field."""

    recurrences: int = 0  # r; 0: the training mean (1 for a plain GPT), resolved when the config is built
    exit: str = "none"  # adaptive exit of generated tokens: config.EXIT_HELP's grammar
    min_steps: int = 1  # an exit may fire after this many recurrences
    max_steps: int = 0  # a generated token runs at most this many with an exit (0: r); the prompt runs r
    # the prompt's tokens exit too, each under the same criterion and cap, and the prompt pass ends once all have
    # (its tokens then attend to each other's states at the iteration they stopped): a shorter prompt pass
    prompt_exit: bool = False
    kv_budget: int = 1  # core KV slots per block (docs/design.md §2): r = the uncached forward, 1 = recursive nanochat
    warm_start: bool = True  # a generated token's state starts from the previous token's final state
    temperature: float = 0.0  # sampling defaults (0: greedy)
    top_k: int = 0
    top_p: float = 1.0
    # the context at inference (0: model.seq_len, as trained). Longer works where positions need no trained table:
    # NoPE and Abacus ids have none, RoPE's tables are computed for any length (whether a RoPE model reads them
    # well past its training length is for its evaluation to say)
    context: int = 0

    def __post_init__(self):
        _at_least("inference", self, 0, ("recurrences", "max_steps", "top_k", "context"))
        _at_least("inference", self, 1, ("min_steps", "kv_budget"))
        # `not 0 <= t` rather than `t < 0`: NaN fails every comparison and must not pass
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"inference.temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"inference.top_p must be in (0, 1], got {self.top_p}")
        parse_exit(self.exit)

    def override(self, **values) -> "InferencePolicy":
        """A copy with every value that is not None replaced (and checked). The result runs a model, so its r is
        resolved: at least 1 (0, "the training mean", exists only until `build_configs` resolves it)."""
        out = dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})
        if out.recurrences < 1:
            raise UserError(f"recurrences must be >= 1, got {out.recurrences}")
        return out

    @property
    def steps_cap(self) -> int:
        """The most recurrences a generated token may run: max_steps with an exit, else r."""
        return (self.max_steps or self.recurrences) if self.exit != "none" else self.recurrences


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # 'char' (a fixed alphabet) or 'bpe' (byte-level, trained to model.vocab_size)
    alphabet: str = ""  # for 'char'
    # 'all' project special tokens; 'nanochat': nanochat's chat tokens (tasks become chat turns) and the trace tags;
    # 'pad' only (the 13-symbol RR-SLM vocab)
    specials: str = "all"
    split_digits: bool = False  # bpe: every digit its own token (no merges across or into numbers)

    def __post_init__(self):
        if self.kind not in ("char", "bpe"):
            raise UserError(f"tokenizer.kind must be char or bpe, got {self.kind!r}")
        if self.specials not in ("all", "nanochat", "pad"):
            raise UserError(f"tokenizer.specials must be all, nanochat or pad, got {self.specials!r}")
        if self.kind == "char" and not self.alphabet:
            raise UserError("tokenizer.alphabet must be set for a char tokenizer")


@dataclass
class TrainConfig:
    seed: int = 0  # the initialisation, r's draws and, unless data_seed is set, the data and the tokenizer
    data_seed: int = -1  # the training data's and BPE tokenizer's own seed (-1: seed), as Hugging Face's data_seed
    batch_size: int = 32  # sequences per micro-step and rank
    grad_accum: int = 1
    optimizer: str = "adamw"  # 'adamw', or 'muon' (Muon for block matrices, AdamW for the rest, as nanochat)
    lr: float = 3e-3  # AdamW (embeddings, head, scalars; everything with 'adamw')
    matrix_lr: float = 0.02  # Muon
    # the learning rates of what every recurrence reuses (core blocks, injection, gate) times this: a shared block
    # gets r iterations' gradients, and small-scale practice lowers its rate (e.g. 1 / the mean of r)
    core_lr_scale: float = 1.0
    weight_decay: float = 0.0
    warmup_steps: int = 20
    warmdown_frac: float = 0.3  # the last fraction of each stage decays the lr linearly to final_lr_frac
    final_lr_frac: float = 0.05
    grad_clip: float = 1.0  # 0: off
    # an exponential moving average of the weights with this decay per step (0: off): the checkpoint's model (and
    # periodic validation) is the average; the weights training goes on from are kept beside it for --resume
    ema: float = 0.0
    dtype: str = "auto"  # 'auto' (bf16 on CUDA and on CPUs with AMX or AVX512-BF16), 'bf16' or 'fp32'
    compile: bool = False  # torch.compile each block; the recurrence loop stays eager (no recompile per r)
    # CPU bf16 causal attention: 'auto' times the written-out form and the flash kernel on the first batch (eager
    # only; compiled blocks follow the CPU rule), or fix one: 'written_out', 'flash'
    attention: str = "auto"
    log_every: int = 10
    eval_every: int = 100  # steps; also where curriculum promotion is decided (0: only at the end)
    eval_n: int = 100  # validation examples per difficulty
    ckpt_every: int = 200

    def __post_init__(self):
        if self.optimizer not in ("adamw", "muon"):
            raise UserError(f"train.optimizer must be adamw or muon, got {self.optimizer!r}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise UserError(f"train.dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        if self.attention not in ("auto", "written_out", "flash"):
            raise UserError(f"train.attention must be auto, written_out or flash, got {self.attention!r}")
        for name in ("batch_size", "grad_accum", "log_every", "ckpt_every", "eval_n"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.core_lr_scale) and self.core_lr_scale > 0):
            raise UserError(f"train.core_lr_scale must be a number > 0, got {self.core_lr_scale}")
        _at_least("train", self, -1, ("data_seed",))
        if not 0 <= self.ema < 1:
            raise UserError(f"train.ema must be in [0, 1), got {self.ema}")


@dataclass
class StageConfig:
    """One training stage ([stage.NAME] in a preset): what data, how long, at what learning rate."""

    steps: int = 100  # 0 leaves the stage out (--set stage.NAME.steps=0)
    lr_scale: float = 1.0
    recurrences: int = 0  # > 0: every step of this stage runs that fixed r instead of [recurrence]'s draw (1 for a
    # pretraining stage switches the loop on late: the core runs once, as a plain stack, until a later stage)
    tasks: str = ""  # comma-separated task names, each optionally weighted (name:2); uniform by default
    text: str = ""  # a text corpus (.txt, .jsonl with 'text', .parquet, a directory) instead of tasks
    seq_len: int = 0  # packed row length for text (0: model.seq_len)
    loss: str = "completion"  # 'completion' (SFT: loss on the target only) or 'all' tokens
    max_difficulty: int = 3  # tasks with difficulties (addition digits) go up to this
    reverse_answer: bool = False  # addition: write the sum least-significant digit first
    mixed_lengths: bool = False  # addition, training data: the second operand has 1 to d digits
    mixed_share: float = 0.5  # with mixed_lengths: the share of sums whose other operand has 1 to d digits
    mixed_short: float = 0.0  # of those, the share whose other operand has 1 to d/3 digits (long one-operand stretches)
    wording: str = "fixed"  # the reasoning suite's training questions: 'fixed' (one template), 'varied' (many, with
    # typing slips: recurlm.tasks.wording), 'wide' (twice as many frames, word problems put together from many
    # verbs) or 'crossed' ('wide' and settings two tasks share: only the question tells the task); evaluation asks
    # the canonical wording unless told otherwise
    canonical_share: float = 0.0  # with a wording of many frames: the share of questions still asked canonically
    nonce_share: float = 0.0  # with a wording of many frames: the share of the others with a word that is not a cue
    # made up (or a greeting or thanks around it), so that unseen words are no reason to change the answer
    nonce_verbs: float = 0.0  # with a wording of many frames: the share of word problems whose verb is made up, so
    # that only "more" or "away", or else the question, tell adding from taking away (`recurlm.tasks.wording.story`)
    nonce_frames: float = 0.0  # with a wording of many frames: the share of the questions whose numbers tell the task
    # (an expression, a pattern, a list to sort) with every word but the operators made up, so that a frame of words
    # never trained is read by what its numbers show
    nonce_shapes: float = 0.0  # of those made-up frames of a list (pattern, sorting): the share whose made-up words
    # stand before and after the list in a shape drawn at random, so that where a list stands is no cue to the task
    nonce_comparisons: float = 0.0  # likewise for comparisons, keeping the comparative ("larger", "more"): two numbers
    # in words never trained are compared when a comparative says so, not summed or sorted
    nonce_stories: float = 0.0  # likewise for word problems whose sign a cue word tells ("more", "in all", "away",
    # "left"): every other word made up, so that people, things and verbs never trained do not change the sum
    wide_tasks: str = ""  # comma-separated suite tasks whose training questions take the 'wide' wording, the others
    # keeping `wording`
    geometric_starts: int = 5  # pattern, training data: geometric sequences start at 1 to this (the task's own 5
    # makes ten sequences, which a model learns by heart instead of multiplying)
    check_step: bool = False  # pattern, training traces: the first step checked on the third term before the rule is
    # named ('6 + 3 = 9, not 12: ... multiplied by 2'), where the rule was named from the first two terms alone
    count_down: bool = False  # arithmetic, training traces: a product's counts numbered down to 1 from the larger
    # factor, so that the trace shows where to stop, instead of up to that factor back in the question
    curriculum: str = "none"  # 'none', 'accuracy' (promote when val accuracy >= promote_at) or 'schedule'
    promote_at: float = 0.95
    promote_every: int = 0  # steps per curriculum level with 'schedule'
    review_frac: float = 0.2  # share of each batch drawn from the levels already passed, against forgetting
    buckets: int = 1  # > 1: each batch holds examples of similar length, one of this many length groups
    abacus_offset: bool = False  # shift each example's digit-significance ids by a random k (McLeish et al.), so
    # that ids past the trained lengths (up to model.abacus) are seen in training and longer numbers have their own
    # trained embeddings
    pack: int = 1  # rows of 1 to this many examples one after another (uniformly drawn). With abacus_offset the
    # examples of a row take id ranges that do not overlap: a lookup then learns to pass over digits whose ids lie
    # further away than one example spans, as every digit of a sum longer than trained must
    pack_near: int = 0  # > 0: each further example's id range lies at most this many ids from another's of its row,
    # so that the digits to pass over sit 1 to ~2 sums' lengths away, the distances a long operand's columns are
    # from the end of a short one (0: anywhere free)
    # With model.exit_gate: 'joint' (Ouro's first stage: the expected loss over exit steps trains everything),
    # 'off' (the final iteration's loss as without a gate; the gate does not learn) or 'only' (Ouro's second stage:
    # only the gate learns, everything else frozen, taught to stop where one more recurrence improves a token's loss
    # by less than recurrence.gate_gamma)
    exit_gate: str = "joint"

    def __post_init__(self):
        if self.steps < 0 or self.buckets < 1 or self.pack < 1:
            raise UserError(
                f"stage steps must be >= 0, buckets and pack >= 1, got {self.steps}, {self.buckets} and {self.pack}"
            )
        if self.pack_near < 0:
            raise UserError(f"stage pack_near must be >= 0 (0: anywhere free), got {self.pack_near}")
        if self.recurrences < 0:
            raise UserError(f"stage recurrences must be >= 0 (0: drawn as [recurrence] says), got {self.recurrences}")
        for name in ("mixed_share", "mixed_short"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"stage {name} must lie between 0 and 1, got {getattr(self, name)}")
        if self.loss not in ("completion", "all"):
            raise UserError(f"stage loss must be completion or all, got {self.loss!r}")
        if self.curriculum not in ("none", "accuracy", "schedule"):
            raise UserError(f"stage curriculum must be none, accuracy or schedule, got {self.curriculum!r}")
        if self.curriculum == "schedule" and self.promote_every < 1:
            raise UserError("stage curriculum 'schedule' needs promote_every >= 1")
        if self.tasks and self.text:
            raise UserError("a stage trains on tasks or on text, not both: make two stages")
        if self.wording not in ("fixed", "varied", "wide", "crossed"):  # config sits below tasks: wording's sets
            raise UserError(f"stage wording must be fixed, varied, wide or crossed, got {self.wording!r}")
        if self.geometric_starts < 1:
            raise UserError(f"stage geometric_starts must be >= 1, got {self.geometric_starts}")
        if self.exit_gate not in ("joint", "off", "only"):
            raise UserError(f"stage exit_gate must be joint, off or only, got {self.exit_gate!r}")


# Sections of a config file / preset and the dataclass that holds each; 'stage' holds one table per stage, in order.
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "recurrence": RecurrenceConfig,
    "inference": InferencePolicy,
    "tokenizer": TokenizerConfig,
    "train": TrainConfig,
}
STAGE = "stage"
# Keys that lived in [model] before the architecture, the training depth and the inference policy were separated:
# checkpoints written then are read through this map; config files and --set get a hint instead.
MOVED = {
    "train_recur": ("recurrence", "schedule"),
    "recur_mean": ("recurrence", "mean"),
    "recur_sigma": ("recurrence", "sigma"),
    "recur_max": ("recurrence", "max"),
    "bptt_k": ("recurrence", "bptt_k"),
    "kv_budget": ("inference", "kv_budget"),
    "warm_start": ("inference", "warm_start"),
    "exit": ("inference", "exit"),
    "exit_min_steps": ("inference", "min_steps"),
}


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
            hint = f" (now {'.'.join(MOVED[key])})" if prefix == "model" and key in MOVED else ""
            raise UserError(f"{where}: unknown config key {prefix}.{key}{hint}")
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
                hint = f" (now {'.'.join(MOVED[name])})" if name in MOVED else ""
                raise UserError(f"unknown config key {name!r}{hint}")
            if len(owners) > 1:
                choices = ", ".join(f"{o}.{name}" for o in owners)
                raise UserError(f"ambiguous config key {name!r}: write one of {choices}")
            section = owners[0]
        if section not in SECTIONS or name not in _field_types(section):
            hint = f" (now {'.'.join(MOVED[name])})" if section in ("", "model") and name in MOVED else ""
            raise UserError(f"unknown config key {key.strip()!r}{hint}")
        update.setdefault(section, {})[name] = _parse_value(key, text.strip(), _field_types(section)[name])
    return update


def load_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> "RunConfig":
    """Preset, then config file, then --set overrides."""
    return build_configs(config_values(preset, config_file, overrides))


def config_values(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> dict:
    """The merged {section: {key: value}} of a preset, a config file and --set overrides, checked but not built."""
    values: dict = {}
    if preset:
        values = merge(values, read_preset(preset), f"preset {preset}")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file not found: {config_file}")
        values = merge(values, _read_toml(path.read_text(), config_file), config_file)
    return merge(values, parse_overrides(list(overrides), values.get(STAGE, {})), "--set")


@dataclass
class RunConfig:
    """Everything a run is: its architecture, training depth, default inference policy, tokenizer, training settings
    and stages (in the order they were declared). A checkpoint's config.json is `to_dict()` of it."""

    model: ModelConfig
    recurrence: RecurrenceConfig
    inference: InferencePolicy
    tokenizer: TokenizerConfig
    train: TrainConfig
    stages: dict[str, StageConfig]

    def replace(self, **sections) -> "RunConfig":
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict:
        out = {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}
        out[STAGE] = {name: dataclasses.asdict(c) for name, c in self.stages.items()}
        return out


def build_configs(values: dict) -> RunConfig:
    """The RunConfig of merged values. Defaults that depend on another section are resolved here, so a checkpoint
    records the values it ran with."""
    recurrence = RecurrenceConfig(**values.get("recurrence", {}))
    model = dict(values.get("model", {}))
    if model.get("recur_lora_rank") and not model.get("recur_lora_count"):
        model["recur_lora_count"] = recurrence.max
    model = ModelConfig(**model)
    inference = InferencePolicy(**values.get("inference", {}))
    if not inference.recurrences:
        inference = inference.override(recurrences=round(recurrence.mean) if model.n_core else 1)
    check_exit_fits(inference.exit, model)
    stages = {name: stage for name, v in values.get(STAGE, {}).items() if (stage := StageConfig(**v)).steps}
    if model.exit_gate and recurrence.supervise_every:
        raise UserError("model.exit_gate's expected loss scores every recurrence already: drop supervise_every")
    for name, stage in stages.items():
        if stage.exit_gate == "only" and not model.exit_gate:
            raise UserError(
                f"stage {name} trains only the exit gate (exit_gate = only): set model.exit_gate = true, or leave "
                f"the stage out with --set stage.{name}.steps=0"
            )
    return RunConfig(
        model, recurrence, inference, TokenizerConfig(**values.get("tokenizer", {})),
        TrainConfig(**values.get("train", {})), stages,
    )  # fmt: skip


def migrate(raw: dict) -> dict:
    """A checkpoint's config.json in today's layout: keys that used to live in [model] move to their section."""
    model = dict(raw.get("model", {}))
    if not any(k in model for k in MOVED):
        return raw
    out = {**raw, "model": model}
    for key, (section, name) in MOVED.items():
        if key in model:
            out.setdefault(section, {})
            out[section] = {**out[section], name: model.pop(key)}
    if model.get("recur_lora_rank") and not model.get("recur_lora_count"):
        model["recur_lora_count"] = out["recurrence"].get("max", RecurrenceConfig.max)
    return out
