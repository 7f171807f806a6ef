"""A recurlm recurrent-depth GPT for Hugging Face transformers (written by `recurlm export hf`; needs torch and
transformers only).

Prelude blocks run once, the core blocks `num_steps` times, then the coda: the same mathematics as recurlm's model.
`generate` decodes through `RecurLMCache`, recurlm's KV cache across recurrences (`kv_budget` core slots per block,
warm start, exits of generated tokens), so it gives the tokens recurlm's engine gives under the same policy; a
forward without a cache recomputes the whole sequence (what recurlm computes with `kv_budget = r`), every token
under the exit rule. `num_steps`, `exit` ('none', 'latent:EPS', 'kl:EPS', 'entropy:EPS', 'cosine:EPS',
'minp:EPS', 'argmax:N' or, with a learned exit gate, 'gate:Q'), `min_steps`, `warm_start` and `kv_budget` are
config fields and per-call arguments of `generate` (all but `kv_budget` of `forward` too).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast


class RecurLMConfig(PretrainedConfig):
    model_type = "recurlm"

    def __init__(
        self,
        vocab_size=256, seq_len=256, d_model=256, n_head=4, n_kv_head=0, n_prelude=2, n_core=4, n_coda=2,
        mlp="relu2", mlp_hidden=0, tie_embeddings=False, logit_softcap=0.0, proj_rank=0, rope_theta=10000.0, rope=True,
        abacus=0, abacus_shift=0, abacus_operands=0, digit_token_ids=(), inject="concat_linear", gate=False,
        state_init="prelude", recur_lora_rank=0, recur_lora_count=0, num_steps=1, exit="none", min_steps=1,
        logn_attention=False, sandwich_norm=False, exit_gate=False, kv_budget=1, warm_start=False, **kwargs,
    ):  # fmt: skip
        self.vocab_size, self.seq_len, self.d_model, self.n_head = vocab_size, seq_len, d_model, n_head
        self.n_kv_head, self.n_prelude, self.n_core, self.n_coda = n_kv_head or n_head, n_prelude, n_core, n_coda
        self.mlp, self.mlp_hidden, self.logit_softcap = mlp, mlp_hidden or 4 * d_model, logit_softcap
        self.tie_embeddings, self.proj_rank, self.rope_theta, self.rope = tie_embeddings, proj_rank, rope_theta, rope
        self.abacus, self.digit_token_ids, self.logn_attention = abacus, list(digit_token_ids), logn_attention
        self.abacus_shift, self.abacus_operands = abacus_shift, abacus_operands
        self.sandwich_norm, self.exit_gate = sandwich_norm, exit_gate
        self.kv_budget, self.warm_start = kv_budget, warm_start  # the cache generate() decodes with
        self.inject, self.gate, self.state_init = inject, gate, state_init
        self.recur_lora_rank, self.recur_lora_count = recur_lora_rank, recur_lora_count
        self.num_steps, self.exit, self.min_steps = num_steps, exit, min_steps
        self.max_position_embeddings, self.hidden_size, self.num_attention_heads = seq_len, d_model, n_head
        self.num_hidden_layers = n_prelude + n_core * num_steps + n_coda
        super().__init__(tie_word_embeddings=False, **kwargs)  # a tied head reads wte directly: nothing to tie


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Linear(nn.Module):
    """W x, W full or A @ B of rank `rank`; with LoRA adapters, adapter i adds B_i A_i x."""

    def __init__(self, d_in, d_out, rank=0, lora_rank=0, lora_count=0):
        super().__init__()
        self.rank = rank
        if rank:
            self.a, self.b = nn.Parameter(torch.empty(d_out, rank)), nn.Parameter(torch.empty(rank, d_in))
        else:
            self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.lora_a = self.lora_b = None
        if lora_rank and lora_count:
            self.lora_a = nn.Parameter(torch.empty(lora_count, lora_rank, d_in))
            self.lora_b = nn.Parameter(torch.empty(lora_count, d_out, lora_rank))

    def forward(self, x, adapter=None):
        y = F.linear(F.linear(x, self.b), self.a) if self.rank else F.linear(x, self.weight)
        if self.lora_a is not None and adapter is not None:
            y = y + F.linear(F.linear(x, self.lora_a[adapter]), self.lora_b[adapter])
        return y


class Block(nn.Module):
    def __init__(self, c: RecurLMConfig, lora=(0, 0)):
        super().__init__()
        self.attn, self.mlp = nn.Module(), nn.Module()
        self.n_head, self.n_kv, self.hd, self.rope = c.n_head, c.n_kv_head, c.d_model // c.n_head, c.rope
        d, h, r = c.d_model, c.mlp_hidden, c.proj_rank
        self.attn.c_q = Linear(d, self.n_head * self.hd, r, *lora)
        self.attn.c_k = Linear(d, self.n_kv * self.hd, r, *lora)
        self.attn.c_v = Linear(d, self.n_kv * self.hd, r, *lora)
        self.attn.c_proj = Linear(self.n_head * self.hd, d, r, *lora)
        self.attn.logn_gain = nn.Parameter(torch.ones(self.n_head)) if c.logn_attention else None
        self.swiglu = c.mlp == "swiglu"
        self.mlp.c_fc = Linear(d, h, r, *lora)
        if self.swiglu:
            self.mlp.c_gate = Linear(d, h, r, *lora)
        self.mlp.c_proj = Linear(h, d, r, *lora)
        # sandwich norm: each sublayer's output normalised with a learned gain before the residual sum
        self.attn_gain = nn.Parameter(torch.ones(d)) if c.sandwich_norm else None
        self.mlp_gain = nn.Parameter(torch.ones(d)) if c.sandwich_norm else None

    def forward(self, x, cos, sin, adapter=None, kv=None):
        """kv: (cache, slot, hold, keep) to read and write a `RecurLMCache` slot at the cache's length; else the
        sequence attends to itself (no cache)."""
        B, T, _ = x.shape
        a, h = self.attn, norm(x)
        q = a.c_q(h, adapter).view(B, T, self.n_head, self.hd)
        k = a.c_k(h, adapter).view(B, T, self.n_kv, self.hd)
        v = a.c_v(h, adapter).view(B, T, self.n_kv, self.hd)
        if self.rope:
            q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        q, k, v = norm(q).transpose(1, 2), norm(k).transpose(1, 2), v.transpose(1, 2)
        start = 0 if kv is None else kv[0].length
        if a.logn_gain is not None:  # query scale: gain x log(position + 2)
            logn = torch.log(torch.arange(start, start + T, device=x.device, dtype=torch.float32) + 2)[:, None]
            q = q * (a.logn_gain[:, None, None] * logn).to(q.dtype)
        if kv is not None:
            k, v = kv[0].write(*kv[1:], k, v)
        # T new tokens see every cached position and each other causally (T > 1 only for a prompt from position 0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=self.n_kv != self.n_head)
        y = a.c_proj(y.transpose(1, 2).reshape(B, T, -1), adapter)
        x = x + (y if self.attn_gain is None else F.rms_norm(y, (y.size(-1),), self.attn_gain))
        h = norm(x)
        u = self.mlp.c_fc(h, adapter)
        u = self.mlp.c_proj(F.silu(self.mlp.c_gate(h, adapter)) * u if self.swiglu else F.relu(u).square(), adapter)
        return x + (u if self.mlp_gain is None else F.rms_norm(u, (u.size(-1),), self.mlp_gain))


def parse_exit(spec):
    if spec in (None, "none"):
        return None
    name, _, eps = str(spec).partition(":")
    if name not in ("latent", "kl", "entropy", "cosine", "minp", "argmax", "gate"):
        raise ValueError(f"unknown exit {spec!r}: use none, latent, kl, entropy, cosine, minp:EPS, argmax:N or gate:Q")
    return name, float(eps)


def kl(prev, cur):
    return (cur.exp() * (cur - prev)).sum(dim=-1)


def min_p_filtered(logprobs, min_p=0.1):
    p = logprobs.exp()
    q = torch.where(p < min_p * p.amax(dim=-1, keepdim=True), 1 / p.shape[-1], p)
    return (q / q.sum(dim=-1, keepdim=True)).log()


def entropy(logprobs):
    return -(logprobs.exp() * logprobs).sum(dim=-1)


def exit_fired(name, eps, prev, cur, memory):
    """recurlm.network.exits' criteria: does each token's measure of two successive iterations fire?"""
    if name == "argmax":  # the top token unchanged for eps successive iterations
        memory["streak"] = (memory.get("streak", 0) + 1) * (prev.argmax(-1) == cur.argmax(-1))
        return memory["streak"] >= eps
    if name == "gate":  # the learned gate's cumulative exit probability reaches eps
        memory["mass"] = memory.get("mass", 0) + (1 - memory.get("mass", 0)) * cur
        return memory["mass"] >= eps
    if name == "latent":
        measure = (cur - prev).float().norm(dim=-1) / cur.float().norm(dim=-1).clamp_min(1e-12)
    elif name == "cosine":
        measure = 1 - F.cosine_similarity(cur.float(), prev.float(), dim=-1, eps=1e-12)
    elif name == "kl":
        measure = kl(prev, cur)
    elif name == "entropy":
        measure = (entropy(cur) - entropy(prev)).abs()
    else:
        measure = kl(min_p_filtered(prev), min_p_filtered(cur))
    return measure < eps


OPERAND_STRIDE = 1 << 16  # an id carries its prompt number's order times this (abacus_operands)


def significance_ids(ids, n_prompt, digits, shift=0, operands=0):
    """Abacus ids (recurlm.text.tokenizer.significance_ids): prompt numbers count from their last digit, generated
    (reversed) numbers from their first; digits shifted by `shift`, which the prompt's last token takes when it is
    not a digit; with `operands` n, the i-th prompt number's digits also carry min(i, n) * OPERAND_STRIDE."""
    out, i, number = [0] * len(ids), 0, 0
    while i < n_prompt:
        j = i
        while j < n_prompt and ids[j] in digits:
            j += 1
        number += j > i
        for k in range(i, j):
            out[k] = j - k + OPERAND_STRIDE * min(number, operands)
        i = j + 1 if j == i else j
    run = 0
    for k in range(n_prompt, len(ids)):
        run = run + 1 if ids[k] in digits else 0
        out[k] = run
    if shift:
        out = [d + shift if d else 0 for d in out]
        if 0 < n_prompt <= len(out) and not out[n_prompt - 1]:
            out[n_prompt - 1] = shift
    return out


class RecurLMCache(Cache):
    """recurlm's KV cache across recurrences: one slot per prelude and coda block, `kv_budget` slots per core block.
    Iteration i of a token writes core slot i mod budget, so past tokens expose their latest iteration congruent
    to it (budget = num_steps: the uncached forward exactly; budget 1: every iteration attends to the past tokens'
    final one, and memory does not grow with num_steps); a token that stops early (an exit) keeps its final K/V
    in the slots of the iterations it skips. It also keeps each row's last final state (warm start: the next
    token's recurrence starts there) and digit-run counter (abacus models)."""

    is_compileable = False

    def __init__(self, config, batch, budget, device, dtype):
        super().__init__(layers=[])
        self.config, self.budget, self.length = config, budget, 0
        slots = config.n_prelude + config.n_core * budget + config.n_coda
        shape = (batch, config.n_kv_head, config.seq_len, config.d_model // config.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(slots)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(slots)]
        self.final = None  # (B, 1, d): the last token's final state
        self.runs = torch.zeros(batch, dtype=torch.long, device=device)

    def get_seq_length(self, layer_idx=0):
        return self.length

    def slot(self, group, index, iteration=0):
        c = self.config
        if group == "prelude":
            return index
        if group == "core":
            return c.n_prelude + index * self.budget + iteration % self.budget
        return c.n_prelude + c.n_core * self.budget + index

    def write(self, slot, hold, keep, k, v):
        """Put the new tokens' (B, H, T, D) keys and values at the cache's length; rows not in `keep` (tokens that
        stopped) keep their final K/V there, from slot `hold` (their last iteration's). Returns every key and value
        up to the new tokens."""
        p, T = self.length, k.size(2)
        if keep is not None:
            keep = keep[:, None, None, None]
            k = torch.where(keep, k, self.k[hold][:, :, p : p + T])
            v = torch.where(keep, v, self.v[hold][:, :, p : p + T])
        self.k[slot][:, :, p : p + T], self.v[slot][:, :, p : p + T] = k, v
        return self.k[slot][:, :, : p + T], self.v[slot][:, :, : p + T]


class RecurLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = RecurLMConfig
    base_model_prefix = "recurlm"
    _supports_sdpa = True

    def __init__(self, config: RecurLMConfig):
        super().__init__(config)
        c, d = config, config.d_model
        lora = (c.recur_lora_rank, c.recur_lora_count) if c.recur_lora_rank else (0, 0)
        self.wte = nn.Embedding(c.vocab_size, d)
        self.abacus = nn.Embedding(c.abacus + 1, d) if c.abacus else None
        self.operands = nn.Embedding(c.abacus_operands + 1, d) if c.abacus_operands else None
        self.prelude = nn.ModuleList(Block(c) for _ in range(c.n_prelude))
        self.core = nn.ModuleList(Block(c, lora) for _ in range(c.n_core))
        self.coda = nn.ModuleList(Block(c) for _ in range(c.n_coda))
        self.inject = Linear(2 * d, d) if c.n_core and c.inject == "concat_linear" else None
        self.decay = nn.Parameter(torch.empty(d)) if c.n_core and c.inject == "contractive" else None
        self.gate = Linear(2 * d, d) if c.n_core and c.gate else None
        self.gate_bias = nn.Parameter(torch.empty(d)) if self.gate is not None else None
        self.exit_gate = nn.Linear(d, 1) if c.n_core and c.exit_gate else None  # Ouro's learned exit gate
        self.lm_head = None if c.tie_embeddings else Linear(d, c.vocab_size)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # recurlm's own cache (`RecurLMCache`), made in prepare_inputs_for_generation

    def get_input_embeddings(self):
        return self.wte

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint

    def _rotary(self, T, device):
        if T > self.config.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than the context ({self.config.seq_len})")
        hd = self.config.d_model // self.config.n_head
        inv = 1.0 / (self.config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
        f = torch.outer(torch.arange(T, dtype=torch.float32, device=device), inv)
        return f.cos()[None, :, None, :], f.sin()[None, :, None, :]

    def _step(self, e, s, i, cos, sin, cache=None, keep=None):
        """One recurrence; with a cache, iteration i's core slots, and rows not in `keep` (stopped tokens) leave
        their final K/V there."""
        c = self.config
        adapter = min(i, c.recur_lora_count - 1) if c.recur_lora_rank else None
        if self.inject is not None:
            u = self.inject(torch.cat([e, s], dim=-1))
        elif self.decay is not None:  # contractive: lambda = exp(-exp(theta)) in (0, 1)
            u = torch.exp(-torch.exp(self.decay)).to(s.dtype) * s + e
        else:
            u = e + s
        for j, block in enumerate(self.core):
            kv = None
            if cache is not None:
                kv = (cache, cache.slot("core", j, i), cache.slot("core", j, i - 1) if keep is not None else None, keep)
            u = block(u, cos, sin, adapter, kv)
        if self.gate is None:
            return u
        g = torch.sigmoid(self.gate(torch.cat([s, u], dim=-1)) + self.gate_bias)
        return g * u + (1 - g) * s

    def _head(self, s, cos, sin, cache=None):
        for j, block in enumerate(self.coda):
            s = block(s, cos, sin, kv=None if cache is None else (cache, cache.slot("coda", j), None, None))
        h = norm(s)
        logits = self.lm_head(h) if self.lm_head is not None else F.linear(h, self.wte.weight)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def _watch(self, name, s, cos, sin, cache=None):
        if name == "gate":  # lambda: the probability of exiting here, given no exit before
            return torch.sigmoid(self.exit_gate(norm(s)).float())[..., 0]
        return s if name in ("latent", "cosine") else F.log_softmax(self._head(s, cos, sin, cache).float(), dim=-1)

    def _prelude(self, input_ids, digit_pos, n_prompt, cos, sin, cache=None):
        """Embedding (with abacus ids: `digit_pos`, else counted from the ids, the first `n_prompt` being the
        prompt's) and the prelude blocks; with a cache, each writes its slot."""
        x = self.wte(input_ids)
        if self.abacus is not None:
            c = self.config
            if digit_pos is None:
                digits, rows = set(c.digit_token_ids), input_ids.tolist()
                ids = [significance_ids(row, n_prompt, digits, c.abacus_shift, c.abacus_operands) for row in rows]
                digit_pos = torch.tensor(ids)
            digit_pos = digit_pos.to(input_ids.device)
            x = x + self.abacus((digit_pos % OPERAND_STRIDE).clamp(max=c.abacus))
            if self.operands is not None:
                x = x + self.operands(digit_pos // OPERAND_STRIDE)
        e = norm(x)
        for j, block in enumerate(self.prelude):
            e = block(e, cos, sin, kv=None if cache is None else (cache, cache.slot("prelude", j), None, None))
        return e

    def _initial(self, e):
        kind = self.config.state_init
        if kind == "prelude":
            return e
        if kind == "zero":
            return torch.zeros_like(e)
        return nn.init.trunc_normal_(torch.empty_like(e), std=1.0, a=-3.0, b=3.0)

    def _recur(self, e, s, r, rule, least, cos, sin, cache=None):
        """r recurrences, or under an exit rule each token until its measure fires (a stopped token keeps its
        state, and with a cache its final K/V); returns the final states and the recurrences per token."""
        B, T = e.shape[:2]
        if not self.core:
            return s, torch.zeros(B, T, dtype=torch.long, device=e.device)
        if rule is None:
            for i in range(r):
                s = self._step(e, s, i, cos, sin, cache)
            return s, torch.full((B, T), r, dtype=torch.long, device=e.device)
        name, eps = rule
        active, steps = torch.ones(B, T, dtype=torch.bool, device=e.device), torch.zeros(B, T, dtype=torch.long)
        prev, memory = self._watch(name, s, cos, sin, cache), {}
        for i in range(r):
            keep = active[:, 0] if cache is not None and i and not bool(active.all()) else None
            s = torch.where(active[..., None], self._step(e, s, i, cos, sin, cache, keep), s)
            steps += active
            cur = self._watch(name, s, cos, sin, cache)
            active = active & ~(exit_fired(name, eps, prev, cur, memory) & (i + 1 >= least)) & (i + 1 < r)
            prev = cur
            if not bool(active.any()):
                if cache is not None:  # the slots of the iterations every token skipped: its final K/V
                    p = cache.length
                    for it in range(i + 1, min(r, i + 1 + cache.budget)):
                        for j in range(len(self.core)):
                            write, hold = cache.slot("core", j, it), cache.slot("core", j, it - 1)
                            cache.k[write][:, :, p] = cache.k[hold][:, :, p]
                            cache.v[write][:, :, p] = cache.v[hold][:, :, p]
                break
        return s, steps

    def _cached(self, input_ids, cache, r, rule, least, warm_start):
        """New tokens through the cache, as recurlm's engine runs them: a prompt (from position 0) in parallel at
        r recurrences, then one token at a time, each from the previous token's final state (warm start) and
        under the exit rule. Returns the logits and the recurrences per token."""
        T = input_ids.shape[1]
        if T > 1 and cache.length:  # several tokens after the prompt: one at a time (the engine's rule)
            parts = [self._cached(input_ids[:, t : t + 1], cache, r, rule, least, warm_start) for t in range(T)]
            return torch.cat([lg for lg, _ in parts], 1), torch.cat([st for _, st in parts], 1)
        c, start = self.config, cache.length
        cos, sin = self._rotary(start + T, input_ids.device)
        cos, sin = cos[:, start:], sin[:, start:]
        digit_pos = None
        if self.abacus is not None and start:  # a generated number counts its digits from the first
            digits = set(c.digit_token_ids)
            is_digit = torch.tensor([t in digits for t in input_ids[:, 0].tolist()], device=input_ids.device)
            cache.runs = torch.where(is_digit, cache.runs + 1, 0)
            digit_pos = (cache.runs + c.abacus_shift * (cache.runs > 0))[:, None]
        e = self._prelude(input_ids, digit_pos, T, cos, sin, cache)
        s = cache.final if start and warm_start and self.core else self._initial(e)
        s, steps = self._recur(e, s, r, None if start == 0 else rule, least, cos, sin, cache)
        logits = self._head(s, cos, sin, cache)
        cache.final, cache.length = s[:, -1:], start + T
        return logits, steps

    def forward(
        self, input_ids=None, attention_mask=None, labels=None, num_steps=None, exit=None, min_steps=None,
        warm_start=None, prompt_length=None, digit_pos=None, cache=None, use_cache=None, return_dict=None,
        kv_budget=None, **kwargs,
    ):  # fmt: skip
        """Without `cache`: the whole sequence in parallel, every token under the exit rule. With a `RecurLMCache`
        (what `generate` makes, with `kv_budget` slots per core block): the new tokens only, as recurlm's engine
        decodes."""
        c = self.config
        r = c.num_steps if num_steps is None else int(num_steps)
        rule = parse_exit(c.exit if exit is None else exit)
        least = c.min_steps if min_steps is None else int(min_steps)
        if r < 1:
            raise ValueError(f"num_steps must be >= 1, got {r}")
        if rule is not None and rule[0] == "gate" and self.exit_gate is None:
            raise ValueError("exit gate:Q needs a model trained with an exit gate; this one has none")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("padded batches are not supported: pass sequences of equal length (no padding)")
        if cache is not None:
            if cache.length + input_ids.shape[1] > c.seq_len:
                raise ValueError(f"sequence of {cache.length + input_ids.shape[1]} tokens is longer than the context "
                                 f"({c.seq_len})")  # fmt: skip
            logits, steps = self._cached(input_ids, cache, r, rule, least, c.warm_start if warm_start is None
                                         else warm_start)  # fmt: skip
        else:
            T = input_ids.shape[1]
            cos, sin = self._rotary(T, input_ids.device)
            e = self._prelude(input_ids, digit_pos, T if prompt_length is None else int(prompt_length), cos, sin)
            s, steps = self._recur(e, self._initial(e), r, rule, least, cos, sin)
            logits = self._head(s, cos, sin)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
        out["steps"] = steps  # recurrences each token ran (an extra field; clients may ignore it)
        return out

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, **kwargs):
        """With the cache (the default): a `RecurLMCache` made at the first step (its KV budget: `kv_budget`, else
        the config's) and only the tokens it does not hold yet; without (`use_cache=False`): the whole sequence
        every step. The recurrence arguments pass through."""
        keep = ("num_steps", "exit", "min_steps", "warm_start", "prompt_length")
        inputs = {k: kwargs[k] for k in keep if kwargs.get(k) is not None}
        if not kwargs.get("use_cache", True):
            return {"input_ids": input_ids, **inputs}
        if cache is None:
            budget = int(kwargs.get("kv_budget") or self.config.kv_budget)
            cache = RecurLMCache(self.config, input_ids.shape[0], budget, input_ids.device, self.wte.weight.dtype)
        return {"input_ids": input_ids[:, cache.length :], "cache": cache, **inputs}

    def generate(self, input_ids=None, **kwargs):
        if input_ids is not None:  # abacus ids count the generated digits from where the prompt ends
            kwargs.setdefault("prompt_length", input_ids.shape[1])
        return super().generate(input_ids, **kwargs)
