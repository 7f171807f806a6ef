"""The recurrent-depth GPT (docs/design.md §1): prelude, a core of blocks looped r times, coda.

nanochat-style blocks: pre-norm RMSNorm without weights, RoPE, QK-norm, optional GQA, relu² or SwiGLU MLP, no
biases. A plain GPT is the case n_core = 0.
"""

import dataclasses
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recurlm.config import ModelConfig
from recurlm.errors import UserError
from recurlm.machine import cpu_has_amx
from recurlm.network.cache import KVCache, Stopped
from recurlm.network.exits import Halting
from recurlm.text.tokenizer import OPERAND_STRIDE


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def gained_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """RMS norm with a learned gain (the sandwich norm's), the gain in x's dtype: a bf16 x beside an fp32 gain falls
    back from the fused kernel, with a warning at every step."""
    return F.rms_norm(x, (x.size(-1),), gain.to(x.dtype))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary in x's dtype: bf16 queries and keys (bf16 autocast, bf16 weights) stay bf16, as every op after them,
    instead of fp32 tables upcasting them (and a cast back for each matmul: 1.2x the time of a bf16 training step
    on an AMX Xeon, `benchmarks/against_fork.py`)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x W^T. One row under torch.compile (a batch-1 decoding step) is written as multiply-and-sum: inductor makes it
    a vectorised reduction split across the cores, while aten's matrix-vector product runs on one core at a third of
    the memory bandwidth that bounds batch-1 decoding."""
    if torch.compiler.is_compiling() and x.numel() == x.size(-1):
        return (x.unsqueeze(-2) * w).sum(-1)
    return F.linear(x, w)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Scaled dot-product attention of (B, H, T, D) queries over (B, H_kv, S, D) keys and values: SDPA, or written out
    where `writes_out_attention` says so."""
    if causal and writes_out_attention(q):
        return written_out_causal_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=k.size(1) != q.size(1))


def attend_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: "Context") -> torch.Tensor:
    """Attention of some of the cache's rows (`ctx.rows`, distinct) over the keys and values of every row, read in
    place: the queries go to their rows of a batch as large as the cache, the other rows' outputs are dropped
    (`KVCache.reads_in_place` says when this is cheaper than gathering the rows' keys and values)."""
    if ctx.spread_mask is None:  # the same for every layer of the call
        mask = ctx.mask.expand(len(ctx.rows), *ctx.mask.shape[1:])
        ctx.spread_mask = mask.new_ones((k.size(0), *mask.shape[1:])).index_copy_(0, ctx.rows, mask)
    spread = q.new_zeros((k.size(0), *q.shape[1:])).index_copy_(0, ctx.rows, q)
    return attend(spread, k, v, ctx.spread_mask, False).index_select(0, ctx.rows)


# The CPU bf16 attention kernel measured faster in the model being trained (`trainer.choose_attention`); None: the
# CPU rule.
_written_out: bool | None = None


def writes_out_attention(q: torch.Tensor) -> bool:
    """bf16 causal attention over at most 256 positions on the CPU: written out, or the flash kernel (SDPA). Which is
    faster depends on the CPU and the model, so eager training measures both (`trainer.choose_attention`). Without that
    measurement, and in compiled blocks (where inductor fuses the written-out middle), the rule is by CPU: written out
    without AMX (a compiled bf16 step of the reference setting 874 against 961 ms on a 2-core AMD EPYC), flash with AMX
    (1.1x a bf16 step on a 2-core Xeon). On GPUs, in fp32 and at longer contexts flash is as fast or faster."""
    if not (q.device.type == "cpu" and q.size(-2) <= 256 and _computes_in_bf16(q)):
        return False
    if _written_out is not None and not torch.compiler.is_compiling():
        return _written_out
    return not cpu_has_amx()


def set_attention(written_out: bool | None) -> None:
    """Fixes the CPU bf16 attention kernel (True: written out, False: flash), or returns to the CPU rule (None)."""
    global _written_out
    _written_out = written_out


def _computes_in_bf16(q: torch.Tensor) -> bool:
    """bf16 tensors, or bf16 autocast (whose fp32 rotary tables leave queries and keys in fp32)."""
    device = q.device.type
    return q.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
    )


def written_out_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention as scores, mask, softmax (in fp32) and mix; in a compiled block inductor fuses the middle."""
    if k.size(1) != q.size(1):  # grouped-query attention: each key/value head serves a group of query heads
        k, v = k.repeat_interleave(q.size(1) // k.size(1), 1), v.repeat_interleave(q.size(1) // v.size(1), 1)
    T = q.size(-2)
    scores = (q @ k.transpose(-1, -2)).float() * q.size(-1) ** -0.5
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1).to(v.dtype) @ v


class Linear(nn.Module):
    """y = W x without bias. W is full, or A @ B of rank `rank` (MiniAxion's factorised projections); with
    `lora_count` adapters, adapter i adds B_i A_i x (Relaxed Recursive Transformers; the model passes
    i = min(iteration, count - 1)), B_i zero-initialised so that the adapters change nothing at init."""

    def __init__(self, d_in, d_out, rank=0, lora_rank=0, lora_count=0, zero_init=False):
        super().__init__()
        self.d_in, self.d_out, self.rank, self.zero_init = d_in, d_out, rank, zero_init
        if rank:
            self.a = nn.Parameter(torch.empty(d_out, rank))
            self.b = nn.Parameter(torch.empty(rank, d_in))
        else:
            self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.lora_a = self.lora_b = None
        if lora_rank and lora_count:
            self.lora_a = nn.Parameter(torch.empty(lora_count, lora_rank, d_in))
            self.lora_b = nn.Parameter(torch.empty(lora_count, d_out, lora_rank))

    @torch.no_grad()
    def reset_parameters(self):
        bound = 3**0.5 * self.d_in**-0.5  # uniform with std 1/sqrt(d_in), as nanochat
        if self.rank:
            # the product A @ B gets std 1/sqrt(d_in); output projections start at zero through A
            self.b.uniform_(-bound, bound)
            self.a.zero_() if self.zero_init else self.a.uniform_(-((3 / self.rank) ** 0.5), (3 / self.rank) ** 0.5)
        else:
            self.weight.zero_() if self.zero_init else self.weight.uniform_(-bound, bound)
        if self.lora_a is not None:
            self.lora_a.uniform_(-bound, bound)
            self.lora_b.zero_()

    def forward(self, x, adapter: int | None = None):
        y = _product(_product(x, self.b), self.a) if self.rank else _product(x, self.weight)
        if self.lora_a is not None and adapter is not None:
            y = y + F.linear(F.linear(x, self.lora_a[adapter]), self.lora_b[adapter])
        return y

    def lora_params_per_adapter(self) -> int:
        return 0 if self.lora_a is None else (self.lora_a[0].numel() + self.lora_b[0].numel())


@dataclass
class Context:
    """What attention needs besides its input: rotary tables for these positions, the mask, the cache and where the
    tokens go in it. Rows start at one shared position (`start`) or each at its own (`positions`)."""

    cos: torch.Tensor  # (B or 1, T, 1, head_dim / 2)
    sin: torch.Tensor
    mask: torch.Tensor | None  # (B or 1, 1, T, keys) bool, or None when `causal` (or one query) says it all
    causal: bool
    cache: KVCache | None = None
    start: int = 0  # the first new token's position, when every row has the same
    positions: torch.Tensor | None = None  # (B, T) each new token's position, when rows differ
    logn: torch.Tensor | None = None  # (B or 1, 1, T, 1) log(position + 2), the query scale of logn_attention
    keys: int = 0  # how many cached positions attention reads
    rows: torch.Tensor | None = None  # (B,) the cache rows the batch's rows are (None: the same, 0 .. B-1)
    slot_index: torch.Tensor | None = None  # where the new tokens lie in a cache slot (KVCache._index), once known
    spread_mask: torch.Tensor | None = None  # `mask` over every cache row (`attend_rows`), once known

    def select(self, index: torch.Tensor) -> "Context":
        """The context of a subset of the batch's rows (`index`, (B',) long): what the recurrence loop runs when
        only some rows still iterate. With a cache, the subset's rows address their own cache rows (`rows`) and
        attention reads them under a mask by position."""

        def pick(t):
            return t if t is None or t.size(0) == 1 else t[index]

        rows = index if self.rows is None else self.rows[index]
        if self.cache is None:  # attention runs over the pass's own tokens: rows are independent
            return dataclasses.replace(
                self, cos=pick(self.cos), sin=pick(self.sin), mask=pick(self.mask), logn=pick(self.logn), rows=None
            )
        if self.positions is not None:
            positions, mask = self.positions[index], pick(self.mask)
        else:  # every row at `start`: the same positions for the subset
            T = self.cos.size(1)
            positions = (self.start + torch.arange(T, device=index.device))[None].expand(len(index), T)
            mask = self.mask
        if mask is None:  # plain causal attention, or one query that sees every cached key
            mask = (torch.arange(self.keys, device=index.device)[None, None, :] <= positions[:, :, None])[:, None]
        return dataclasses.replace(
            self, cos=pick(self.cos), sin=pick(self.sin), mask=mask, causal=False, positions=positions,
            logn=pick(self.logn), rows=rows, slot_index=None, spread_mask=None,
        )  # fmt: skip


@dataclass
class Supervision:
    """What a training step's loss reads besides the final iteration's output (recurrence config, docs/design.md
    §1): every `every`-th iteration's output, weighted `weight` against the final one (deep supervision); with
    weight `progressive`, the output after `split` = (n, k) iterations, n of them without gradient (Bansal et al.'s
    progressive loss); and with an exit gate, the gate's objectives (`RecurrentGPT.gate_loss`)."""

    every: int = 0
    weight: float = 0.5
    progressive: float = 0.0
    split: tuple[int, int] = (0, 1)
    gate_beta: float = 0.05  # model.exit_gate: the entropy bonus of the expected loss (recurrence.gate_beta)
    gate: str = "joint"  # with an exit gate: its objective ('joint', 'off' or 'only': stage.exit_gate)
    gate_gamma: float = 0.01


@dataclass
class Recurrence:
    """What the recurrence loop computed under a `Halting`: the final state, the iterations each token ran (B, T),
    and the logits of the final state when the exit check already computed them (a KL criterion), else None."""

    state: torch.Tensor
    steps: torch.Tensor
    logits: torch.Tensor | None = None


# logn_attention's initial gain: a query's scale starts at 1 at position 32, about the end of a 10-digit sum
LOGN_GAIN = 1 / math.log(34)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, lora: tuple[int, int]):
        super().__init__()
        self.n_head, self.n_kv, self.hd, self.rope = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.rope
        d, r = cfg.d_model, cfg.proj_rank
        self.c_q = Linear(d, self.n_head * self.hd, r, *lora)
        self.c_k = Linear(d, self.n_kv * self.hd, r, *lora)
        self.c_v = Linear(d, self.n_kv * self.hd, r, *lora)
        # a sandwich norm would blow a zero output up to unit scale: then the projection starts like the others
        self.c_proj = Linear(self.n_head * self.hd, d, r, *lora, zero_init=not cfg.sandwich_norm)
        self.logn_gain = nn.Parameter(torch.full((self.n_head,), LOGN_GAIN)) if cfg.logn_attention else None

    def forward(self, x, ctx: Context, slot, adapter: int | None, stopped: Stopped | None = None):
        B, T, _ = x.shape
        q = self.c_q(x, adapter).view(B, T, self.n_head, self.hd)
        k = self.c_k(x, adapter).view(B, T, self.n_kv, self.hd)
        v = self.c_v(x, adapter).view(B, T, self.n_kv, self.hd)
        if self.rope:
            q, k = apply_rotary(q, ctx.cos, ctx.sin), apply_rotary(k, ctx.cos, ctx.sin)
        q, k = norm(q), norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.logn_gain is not None:
            q = q * (self.logn_gain[:, None, None] * ctx.logn).to(q.dtype)
        if ctx.cache is not None:
            k, v = ctx.cache.update(slot, k, v, ctx, stopped)
        if ctx.cache is not None and ctx.cache.reads_in_place(ctx):
            y = attend_rows(q, k, v, ctx)
        else:
            y = attend(q, k, v, ctx.mask, ctx.causal)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1), adapter)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, lora: tuple[int, int]):
        super().__init__()
        d, h, r = cfg.d_model, cfg.hidden, cfg.proj_rank
        self.swiglu = cfg.mlp == "swiglu"
        self.c_fc = Linear(d, h, r, *lora)
        self.c_gate = Linear(d, h, r, *lora) if self.swiglu else None
        self.c_proj = Linear(h, d, r, *lora, zero_init=not cfg.sandwich_norm)

    def forward(self, x, adapter):
        h = self.c_fc(x, adapter)
        h = F.silu(self.c_gate(x, adapter)) * h if self.swiglu else F.relu(h).square()
        return self.c_proj(h, adapter)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, lora: tuple[int, int] = (0, 0)):
        super().__init__()
        self.attn = Attention(cfg, lora)
        self.mlp = MLP(cfg, lora)
        d = cfg.d_model
        self.attn_gain = nn.Parameter(torch.ones(d)) if cfg.sandwich_norm else None  # model.sandwich_norm
        self.mlp_gain = nn.Parameter(torch.ones(d)) if cfg.sandwich_norm else None

    def forward(self, x, ctx: Context, slot=None, adapter: int | None = None, stopped: Stopped | None = None):
        a = self.attn(norm(x), ctx, slot, adapter, stopped)
        x = x + (a if self.attn_gain is None else gained_norm(a, self.attn_gain))
        m = self.mlp(norm(x), adapter)
        return x + (m if self.mlp_gain is None else gained_norm(m, self.mlp_gain))


class RecurrentGPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        lora = (cfg.recur_lora_rank, cfg.recur_lora_count) if cfg.recur_lora_rank else (0, 0)
        self.wte = nn.Embedding(cfg.vocab_size, d)
        self.abacus = nn.Embedding(cfg.abacus + 1, d) if cfg.abacus else None  # id 0: not a digit
        self.operands = nn.Embedding(cfg.abacus_operands + 1, d) if cfg.abacus_operands else None  # 0: none
        if self.abacus is not None and cfg.abacus_fixed:
            self.abacus.weight.requires_grad_(False)
        self.prelude = nn.ModuleList(Block(cfg) for _ in range(cfg.n_prelude))
        self.core = nn.ModuleList(Block(cfg, lora) for _ in range(cfg.n_core))
        self.coda = nn.ModuleList(Block(cfg) for _ in range(cfg.n_coda))
        has_core = cfg.n_core > 0
        # The injection stays full rank even with proj_rank: a rank-k matrix cannot start as the identity.
        self.inject = Linear(2 * d, d) if has_core and cfg.inject == "concat_linear" else None
        self.decay = nn.Parameter(torch.empty(d)) if has_core and cfg.inject == "contractive" else None
        self.gate = Linear(2 * d, d) if has_core and cfg.gate else None
        self.gate_bias = nn.Parameter(torch.empty(d)) if self.gate is not None else None
        # model.exit_gate, built without drawing random numbers: the rest initialises as it would without a gate
        self.exit_gate = torch.nn.utils.skip_init(nn.Linear, d, 1) if has_core and cfg.exit_gate else None
        self.lm_head = None if cfg.tie_embeddings else Linear(d, cfg.vocab_size)
        cos, sin = self._rotary_tables(cfg.seq_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    def set_context(self, n: int):
        """Run with a context of n tokens (0: keep the trained one), e.g. longer than trained (inference.context):
        the rotary tables are recomputed; nothing else in the network depends on the length."""
        if n and n != self.cfg.seq_len:
            self.cfg = dataclasses.replace(self.cfg, seq_len=n)
            cos, sin = self._rotary_tables(n)
            self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)

    def _rotary_tables(self, T: int):
        hd = self.cfg.head_dim
        inv_freq = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, hd/2)

    @torch.no_grad()
    def reset_parameters(self):
        if self.wte.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, Linear):
                m.reset_parameters()
            if isinstance(m, Attention) and m.logn_gain is not None:
                m.logn_gain.fill_(LOGN_GAIN)
            if isinstance(m, Block) and m.attn_gain is not None:
                m.attn_gain.fill_(1.0)
                m.mlp_gain.fill_(1.0)
        # Tied weights also produce the logits, so they start small; an untied input table does not matter in
        # scale (it is normalised) and a nearly-zero head starts at the uniform distribution (nanochat).
        self.wte.weight.normal_(0.0, 0.02 if self.cfg.tie_embeddings else 1.0)
        if self.abacus is not None and self.cfg.abacus_fixed:  # rows of the same norm as N(0, 1) ones
            nn.init.orthogonal_(self.abacus.weight, gain=self.cfg.d_model**0.5)
        elif self.abacus is not None:
            self.abacus.weight.normal_(0.0, 1.0)
        if self.operands is not None:
            self.operands.weight.normal_(0.0, 1.0)
        if self.lm_head is not None:
            self.lm_head.weight.normal_(0.0, 0.001)
        if self.inject is not None:  # W [e; s] starts as e: the loop begins as a plain deep network
            d = self.cfg.d_model
            self.inject.weight.zero_()
            self.inject.weight[:, :d].copy_(torch.eye(d))
        if self.decay is not None:  # lambda = exp(-exp(theta)) starts at model.contractive_init
            self.decay.fill_(math.log(-math.log(self.cfg.contractive_init)))
        if self.gate is not None:  # g = sigmoid(4) ~ 0.98: the gate starts (almost) open
            self.gate.weight.zero_()
            self.gate_bias.fill_(4.0)
        if self.exit_gate is not None:  # lambda = sigmoid(-2) ~ 0.12 per step: most of the mass on the last step
            self.exit_gate.weight.zero_()
            self.exit_gate.bias.fill_(-2.0)

    # ---- the three stages, used by forward() for training and by the engine for cached decoding ----

    def context(self, T: int, starts: list[int] | None = None, cache: KVCache | None = None) -> Context:
        """For T new tokens per row, row b's first at position starts[b] (default: all at 0)."""
        starts = starts or [0]
        end = max(starts) + T
        if end > self.cfg.seq_len:
            raise UserError(f"sequence of {end} tokens is longer than the context ({self.cfg.seq_len})")
        first = starts[0]
        if all(p == first for p in starts):
            cos, sin = self.cos[:, first : first + T], self.sin[:, first : first + T]
            logn = self._logn(torch.arange(first, end, device=cos.device)[None]) if self.cfg.logn_attention else None
            if first == 0 or T == 1:  # plain causal attention, or one query that sees every cached key
                return Context(cos, sin, None, T > 1, cache, first, keys=end, logn=logn)
            q = torch.arange(first, end, device=cos.device)
            mask = torch.arange(end, device=cos.device)[None, :] <= q[:, None]
            return Context(cos, sin, mask[None, None], False, cache, first, keys=end, logn=logn)
        pos = torch.tensor(starts, device=self.cos.device)[:, None] + torch.arange(T, device=self.cos.device)
        return self.context_at(pos, cache, end)

    def context_at(
        self, pos: torch.Tensor, cache: KVCache | None, keys: int, rows: torch.Tensor | None = None
    ) -> Context:
        """For new tokens at (B, T) positions `pos` (of cache rows `rows`, default 0 .. B-1), attending to the first
        `keys` cached positions under a mask. With keys = the cache's length every shape is fixed, whatever the
        positions: a compiled decode step (`Engine(compile=True)`) then serves every position without recompiling."""
        mask = torch.arange(keys, device=pos.device)[None, None, :] <= pos[:, :, None]  # (B, T, keys)
        return Context(
            self.cos[0, pos],
            self.sin[0, pos],
            mask[:, None],
            False,
            cache,
            positions=pos,
            keys=keys,
            logn=self._logn(pos) if self.cfg.logn_attention else None,
            rows=rows,
        )

    @staticmethod
    def _logn(positions: torch.Tensor) -> torch.Tensor:
        """(B or 1, 1, T, 1) log(position + 2): logn_attention's query scale."""
        return torch.log(positions.float() + 2)[:, None, :, None]

    def _slot(self, ctx: Context, group: str, index: int):
        return None if ctx.cache is None else (ctx.cache.slot(group, index), None)

    def embed(self, idx: torch.Tensor, ctx: Context, digit_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Token embedding (plus digit significance with `abacus`) and prelude: e, injected at every iteration."""
        x = self.wte(idx)
        if self.abacus is not None:
            assert digit_pos is not None, "an abacus model needs digit_pos (see tokenizer.significance_ids)"
            x = x + self.abacus((digit_pos % OPERAND_STRIDE).clamp(max=self.cfg.abacus))
            if self.operands is not None:
                x = x + self.operands(digit_pos // OPERAND_STRIDE)
        x = norm(x)
        for i, block in enumerate(self.prelude):
            x = block(x, ctx, self._slot(ctx, "prelude", i))
        return x

    def init_state(self, e: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The loop's starting state. 'random' uses `noise` when given (the engine seeds it per sequence, so a row's
        result does not depend on its batch) and draws from the global generator otherwise (training)."""
        kind = self.cfg.state_init
        if kind == "prelude":
            return e
        if kind == "zero":
            return torch.zeros_like(e)
        if noise is not None:
            return noise.to(e.dtype)
        return nn.init.trunc_normal_(torch.empty_like(e), std=1.0, a=-3.0, b=3.0)  # Huginn's random state

    def core_step(
        self, e: torch.Tensor, s: torch.Tensor, iteration: int, ctx: Context, stopped: Stopped | None = None
    ) -> torch.Tensor:
        """One recurrence: inject the prelude output into the state, run the core blocks, optionally gate. `stopped`
        tells the cache which tokens no longer iterate (their K/V must not be overwritten with this iteration's)."""
        # The LoRA adapter index, clamped, and None without LoRA: a compiled block then sees at most lora_count
        # distinct values instead of one per iteration, and does not recompile for every new r.
        adapter = min(iteration, self.cfg.recur_lora_count - 1) if self.cfg.recur_lora_rank else None
        u = self.injected(e, s)
        for j, block in enumerate(self.core):
            slot = None if ctx.cache is None else ctx.cache.core_slot(j, iteration)
            u = block(u, ctx, slot, adapter, stopped)
        if self.gate is None:
            return u
        g = torch.sigmoid(self.gate(torch.cat([s, u], dim=-1)) + self.gate_bias)
        return g * u + (1 - g) * s

    def injected(self, e: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The core's input from the prelude output e and the state s (model.inject)."""
        if self.inject is not None:
            return self.inject(torch.cat([e, s], dim=-1))
        if self.decay is not None:  # the state's coefficient has spectral radius < 1 whatever theta learns
            return torch.exp(-torch.exp(self.decay)).to(s.dtype) * s + e
        return e + s

    def head(self, s: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Coda blocks, final norm, unembedding and optional soft-cap: the logits."""
        return self.unembed(self.coda_out(s, ctx))

    def coda_out(self, s: torch.Tensor, ctx: Context) -> torch.Tensor:
        for i, block in enumerate(self.coda):
            s = block(s, ctx, self._slot(ctx, "coda", i))
        return s

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        h = norm(h)
        logits = self.lm_head(h) if self.lm_head is not None else F.linear(h, self.wte.weight)
        c = self.cfg.logit_softcap
        return c * torch.tanh(logits / c) if c else logits

    def recur(
        self, e: torch.Tensor, s: torch.Tensor, r: int, ctx: Context, bptt_k: int = 0, start: int = 0
    ) -> torch.Tensor:
        """r recurrences from state s (iterations numbered from `start`): the final state. The recurrence loop of
        training, of the prompt pass and of every fixed-depth decoding step (`recur_until` adds per-token exits)."""
        assert r >= 1, f"recurrences must be >= 1, got {r}"  # policies are checked when built (config.py)
        final = s  # a plain GPT's state passes through
        for final in self.iterate(e, s, r, ctx, bptt_k, start):  # noqa: B007 (only the last state is wanted)
            pass
        return final

    def iterate(self, e: torch.Tensor, s: torch.Tensor, r: int, ctx: Context, bptt_k: int = 0, start: int = 0):
        """The state after each of r recurrences from state s (none for a plain GPT), iterations numbered from
        `start`.

        Under autograd only the last bptt_k iterations build a graph (truncated BPTT): the earlier ones run under
        no_grad, so memory does not grow with r, while gradients still reach the prelude through the injection.
        """
        if not self.core:
            return
        n_free = max(r - bptt_k, 0) if bptt_k and torch.is_grad_enabled() else 0
        for i in range(start, start + r):
            with torch.no_grad() if i - start < n_free else nullcontext():
                s = self.core_step(e, s, i, ctx)
            yield s

    def recur_until(self, e: torch.Tensor, s: torch.Tensor, halt: Halting, ctx: Context) -> Recurrence:
        """Row b runs at most halt.cap[b] iterations and each token stops once its exit criterion fires; a stopped
        token keeps its state, and its K/V in the slots of the iterations it skips is its final one (docs/design.md
        §2). A model without a core runs none."""
        B, T = s.shape[:2]
        if not self.core:
            return Recurrence(s, torch.zeros(B, T, dtype=torch.long, device=s.device))
        r = halt.max_cap
        if halt.uniform:
            return Recurrence(self.recur(e, s, r, ctx), torch.full((B, T), r, dtype=torch.long, device=s.device))
        cap = halt.cap[:, None]
        active = torch.ones(B, T, dtype=torch.bool, device=s.device)
        steps = torch.zeros(B, T, dtype=torch.long, device=s.device)
        prev, memory = self.watch_rows(s, ctx, halt), {}
        live = torch.ones(B, dtype=torch.bool, device=s.device)  # rows with a token still iterating
        for i in range(r):
            if compacts(int(live.sum()), B):  # only the rows still iterating run, gathered into a smaller batch
                index = live.nonzero()[:, 0]
                sub = ctx.select(index)
                s_sub = self._step_active(e[index], s[index], i, sub, active[index], i < cap[index])
                s = s.index_copy(0, index, s_sub)
                watched = self.watch_rows(s_sub, sub, halt.select(index.tolist()))
                cur = prev | {k: prev[k].index_copy(0, index, v) for k, v in watched.items()}
            else:
                s = self._step_active(e, s, i, ctx, active, i < cap)
                cur = self.watch_rows(s, ctx, halt)
            steps += active
            active = active & ~halt.stop(i, prev, cur, memory)
            prev = cur
            done, live = live & ~active.any(1), active.any(1)
            if ctx.cache is not None and ctx.cache.budget > 1 and bool(done.any()):
                # a row whose tokens all stopped: the slots of the iterations it skips get its final K/V now
                index = done.nonzero()[:, 0]
                sub = ctx if len(index) == B else ctx.select(index)  # every row: plain slices of the cache
                ctx.cache.fill_skipped(sub, i + 1, r, halt.cap[index])
            if not bool(live.any()):
                break
        every_row = "logits" in prev and len(halt.rows_watching("logprobs")) == B  # else some rows hold zeros there
        return Recurrence(s, steps, prev["logits"] if every_row else None)

    def _step_active(
        self, e: torch.Tensor, s: torch.Tensor, i: int, ctx: Context, active: torch.Tensor, below_cap: torch.Tensor
    ) -> torch.Tensor:
        """Recurrence i of the tokens still `active` (B, T): a stopped token keeps its state and its K/V (the cache
        holds it, or copies it into a slot below its cap). With every token active nothing needs a mask."""
        if bool(active.all()):
            return self.core_step(e, s, i, ctx)
        stopped = Stopped(active, ~active & below_cap)
        return torch.where(active[..., None], self.core_step(e, s, i, ctx, stopped), s)

    def watch(
        self, s: torch.Tensor, ctx: Context, watches: set[str], logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """What exit criteria compare between iterations (`Halting.watches`): the state, and the coda and head's
        logits and log-probabilities on it (`logits`: those, when the caller has them already)."""
        out = {"state": s} if "state" in watches else {}
        if "logprobs" in watches:
            out["logits"] = self.head(s, ctx) if logits is None else logits
            out["logprobs"] = F.log_softmax(out["logits"].float(), dim=-1)
        if "gate" in watches:
            out["gate"] = self.exit_probability(s)
        return out

    def watch_rows(
        self, s: torch.Tensor, ctx: Context, halt: Halting, logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """`watch` for a batch of rows under their own exits: each kind computed for the rows whose criterion
        watches it only (the coda and head of a KL exit are not run for a row at a fixed r beside it); the other
        rows hold zeros there, which their criteria never read. `logits`: the head's on every row's s, if known."""
        out = {}
        for kind in halt.watches:
            rows = halt.rows_watching(kind)
            if len(rows) == len(s):
                out |= self.watch(s, ctx, {kind}, logits)
                continue
            index = torch.tensor(rows, device=s.device)
            known = None if logits is None else logits[index]
            for name, value in self.watch(s[index], ctx.select(index), {kind}, known).items():
                out[name] = value.new_zeros((len(s), *value.shape[1:])).index_copy(0, index, value)
        return out

    def exit_probability(self, s: torch.Tensor) -> torch.Tensor:
        """(B, T) the learned gate's lambda: the probability of exiting with state s, given no exit before."""
        return torch.sigmoid(self.exit_gate(norm(s)).float())[..., 0]

    def forward(
        self,
        idx: torch.Tensor,
        recurrences: int,
        digit_pos: torch.Tensor | None = None,
        bptt_k: int = 0,
        targets: torch.Tensor | None = None,
        supervision: Supervision | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) of the full sequence with r recurrences, all positions in parallel (training); with
        (B, T) `targets`, the training loss against them instead (-1: ignored): the mean cross-entropy of the final
        iteration's output, mixed with the losses `supervision` asks for."""
        ctx = self.context(idx.size(1))
        e = self.embed(idx, ctx, digit_pos)
        s0 = self.init_state(e)
        if targets is None:
            return self.unembed(self.coda_out(self.recur(e, s0, recurrences, ctx, bptt_k), ctx))
        sup = supervision or Supervision()
        gated = self.exit_gate is not None and sup.gate != "off"
        if sup.progressive == 1 and self.core and not gated:  # (a gate's parameters must stay in DDP's graph)
            return self.progressive_loss(e, s0, ctx, bptt_k, targets, sup.split)  # the full depth's weight is 0
        if gated:
            loss = self.gate_loss(e, s0, recurrences, ctx, bptt_k, targets, sup)
            if sup.gate == "only":
                return loss
        else:
            s, early = s0, []
            for i, s in enumerate(self.iterate(e, s0, recurrences, ctx, bptt_k), 1):
                if sup.every and i % sup.every == 0 and i < recurrences:
                    early.append(self.loss(self.coda_out(s, ctx), targets))
            loss = self.loss(self.coda_out(s, ctx), targets)
            if early:  # deep supervision: the loop's intermediate outputs are answers too
                loss = (1 - sup.weight) * loss + sup.weight * torch.stack(early).mean()
        if sup.progressive and self.core:
            progressive = self.progressive_loss(e, s0, ctx, bptt_k, targets, sup.split)
            loss = (1 - sup.progressive) * loss + sup.progressive * progressive
        return loss

    def progressive_loss(self, e, s0, ctx: Context, bptt_k: int, targets: torch.Tensor, split: tuple[int, int]):
        """The loss after n iterations without gradient from the initial state, then k with it: (n, k) = split."""
        n, k = split
        with torch.no_grad():  # a state the loop did not make under gradient: it learns to improve any state
            s = self.recur(e, s0, n, ctx) if n else s0
        s = self.recur(e, s.detach(), k, ctx, bptt_k, start=n)
        return self.loss(self.coda_out(s, ctx), targets)

    def gate_loss(self, e, s0, r: int, ctx: Context, bptt_k: int, targets: torch.Tensor, sup: Supervision):
        """The exit gate's objectives (Ouro), from each recurrence's per-token loss L_t (coda and head after every
        step) and the gate's lambda_t. Exit probabilities p_t = lambda_t prod_{j<t} (1 - lambda_j), the last step
        taking the mass left; the loss is the expected loss sum_t p_t L_t minus gate_beta times the entropy of p,
        averaged over the scored tokens (it stands for the final loss: the progressive loss mixes in). `gate = only`
        (the second stage): every network output is fixed and only the gate learns, by binary cross-entropy against
        "stop here": one more step improves the token's loss by less than gate_gamma."""
        scored = (targets != -1).float()
        frozen = sup.gate == "only" or not torch.is_grad_enabled()
        losses, states = [], []
        with torch.no_grad() if frozen else nullcontext():
            for s in self.iterate(e, s0, r, ctx, bptt_k):
                logits = self.unembed(self.coda_out(s, ctx)).float()
                losses.append(F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-1, reduction="none"))
                states.append(s)
        L = torch.stack(losses)  # (r, B, T)
        lam = torch.stack([self.exit_probability(s) for s in states])
        if sup.gate == "only":
            if r == 1:  # nothing to decide: one step is all there is
                return 0 * lam.sum()
            stop = (L[:-1] - L[1:] < sup.gate_gamma).float()
            bce = F.binary_cross_entropy(lam[:-1], stop, reduction="none").mean(0)
            return (bce * scored).sum() / scored.sum().clamp_min(1)
        before = torch.cumprod(torch.cat([torch.ones_like(lam[:1]), 1 - lam[:-1]]), 0)  # no exit before step t
        p = torch.cat([(lam * before)[:-1], before[-1:]])  # the last step takes the mass left
        objective = (p * L).sum(0) + sup.gate_beta * (p * p.clamp_min(1e-12).log()).sum(0)
        return (objective * scored).sum() / scored.sum().clamp_min(1)

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the coda's output against targets: one function, so that `train.compile_blocks` fuses the
        unembedding, soft-cap, fp32 cast and log-softmax over the vocabulary, which eager runs as separate passes."""
        return F.cross_entropy(self.unembed(h).float().flatten(0, 1), targets.flatten(), ignore_index=-1)

    # ---- accounting ----

    def param_groups(self) -> dict[str, int]:
        """Parameters per stage; 'core_per_iteration' is what one recurrence uses (base + one LoRA adapter)."""

        def count(modules):
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        linears = [m for m in self.core.modules() if isinstance(m, Linear)]
        lora_total = sum(p.numel() for m in linears for p in (m.lora_a, m.lora_b) if p is not None)
        lora_one = sum(m.lora_params_per_adapter() for m in linears)
        core_per_iter = count([self.core, self.inject, self.gate]) - lora_total + lora_one
        core_per_iter += sum(p.numel() for p in (self.gate_bias, self.decay) if p is not None)
        return {
            "unique": sum(p.numel() for p in self.parameters()),
            "embedding": self.wte.weight.numel(),
            "prelude": count(self.prelude),
            "core_per_iteration": core_per_iter if self.core else 0,
            "coda": count(self.coda),
            "head": self.wte.weight.numel() if self.lm_head is None else self.lm_head.weight.numel(),
        }

    def params_per_token(self, r: int) -> int:
        """Matmul parameters applied to each token at r recurrences (shared ones counted once per use)."""
        g = self.param_groups()
        return g["prelude"] + r * g["core_per_iteration"] + g["coda"] + g["head"]

    def effective_depth(self, r: int) -> int:
        cfg = self.cfg
        return cfg.n_prelude + cfg.n_core * r + cfg.n_coda

    def flops_per_token(self, r: int, seq_len: int | None = None) -> int:
        """Forward FLOPs per token at r: 2 per matmul parameter use, plus attention scores and mixing over a causal
        context of seq_len tokens (on average (T + 1) / 2 keys per query)."""
        T = seq_len or self.cfg.seq_len
        attn = 4 * self.cfg.n_head * self.cfg.head_dim * (T + 1) / 2
        return int(2 * self.params_per_token(r) + self.effective_depth(r) * attn)


def compacts(live: int, batch: int) -> bool:
    """Whether the recurrence loop gathers the `live` rows still iterating into a smaller batch rather than running
    all `batch` rows and keeping the stopped ones' states (docs/design.md §2). Gathering pays once at most two rows
    in three still iterate (`benchmarks/depth_batching.py`, 16 prompts of 64 tokens: 2.4x faster with 1 row of 16
    deep, 1.26x with 8, 0.95x with 12)."""
    return 3 * live <= 2 * batch


def build_model(cfg: ModelConfig, device="cpu") -> RecurrentGPT:
    with torch.device(device):
        return RecurrentGPT(cfg)
