"""nanochat's checkpoints (the plain GPT and the recursive fork) as recurlm checkpoints.

nanochat writes `model_<step>.pt` (a torch state dict), `meta_<step>.json` (its GPTConfig as `model_config`) and,
two levels up, `tokenizer/tokenizer.pkl` (a pickled tiktoken Encoding). Its blocks are recurlm's (pre-norm RMSNorm
without weights, rotary then QK-norm, relu² MLP, untied head, logits 15·tanh(z/15)), with one difference folded into
the weights: its rotary turns each (first half, second half) pair by −θ. Negating the second half of every query
and key head turns recurlm's +θ into the same attention scores, so the model code needs no switch.

Nothing here runs code from the files: the weights load with `weights_only=True`, and the tokenizer pickle with an
unpickler that builds only a tiktoken Encoding's state (tiktoken itself is not needed).
"""

import io
import json
import pickle
import re
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from recurlm.config import build_configs
from recurlm.errors import UserError
from recurlm.network.model import build_model
from recurlm.text.tokenizer import Tokenizer

SOFTCAP = 15.0  # nanochat's logit soft-cap (a constant in its code, not in its config)
LAYER_GROUPS = {"h": "prelude", "prelude": "prelude", "recur": "core", "coda": "coda"}


# ---- the tokenizer ----


class _EncodingState:
    """Stands in for tiktoken.core.Encoding while unpickling: it only keeps the state the pickle sets."""

    def __setstate__(self, state):
        self.state = state


class _TokenizerUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_tiktoken_pickle(path: Path) -> dict:
    """{name, pat_str, mergeable_ranks: {bytes: rank}, special_tokens: {str: id}} from a pickled tiktoken Encoding,
    refusing anything else the pickle might try to build or call."""
    try:
        obj = _TokenizerUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise UserError(f"{path} is not a tiktoken Encoding pickle: {e}") from None
    state = getattr(obj, "state", None)
    ok = isinstance(state, dict) and isinstance(state.get("pat_str"), str)
    ranks, specials = (state or {}).get("mergeable_ranks"), (state or {}).get("special_tokens")
    ok = ok and isinstance(ranks, dict) and all(isinstance(k, bytes) and type(v) is int for k, v in ranks.items())
    ok = ok and isinstance(specials, dict) and all(isinstance(k, str) and type(v) is int for k, v in specials.items())
    if not ok:
        raise UserError(f"{path} does not hold a tiktoken Encoding's state (pat_str, mergeable_ranks, special_tokens)")
    return state


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which HF's ByteLevel pre-tokenizer and decoder use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens that tiktoken's BPE joins last to make `token`: BPE over its bytes with the lower ranks."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        best, i = min(pairs)
        if best >= rank:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise UserError(f"tokenizer rank {rank} ({token!r}) is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


def tokenizer_from_tiktoken(state: dict) -> Tokenizer:
    """The same ids and splits as tiktoken: byte-level BPE whose merges follow the ranks, the pickle's split
    pattern, and the special tokens at their ids."""
    ranks: dict[bytes, int] = state["mergeable_ranks"]
    if sorted(ranks.values()) != list(range(len(ranks))) or any(bytes([b]) not in ranks for b in range(256)):
        raise UserError("tokenizer ranks must number 0..n-1 and include all 256 bytes")
    chars = _byte_chars()
    spell = lambda token: "".join(chars[b] for b in token)  # noqa: E731
    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = [
        tuple(map(spell, _merge_of(token, rank, ranks)))
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
    ]
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(state["pat_str"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    specials = sorted(state["special_tokens"].items(), key=lambda item: item[1])
    if [i for _, i in specials] != list(range(len(ranks), len(ranks) + len(specials))):
        raise UserError("tokenizer special tokens must be numbered right after the ranks")
    hf.add_special_tokens([name for name, _ in specials])
    return Tokenizer(hf)


# ---- the weights ----


def _checkpoint_files(ckpt_dir: Path, step: int | None) -> tuple[Path, Path, int]:
    if not ckpt_dir.is_dir():
        raise UserError(f"no such checkpoint directory: {ckpt_dir}")
    names = (re.fullmatch(r"model_(\d+)\.pt", p.name) for p in ckpt_dir.glob("model_*.pt"))
    steps = sorted(int(m.group(1)) for m in names if m)
    if not steps:
        raise UserError(f"no nanochat model_<step>.pt in {ckpt_dir}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UserError(f"no step {step} in {ckpt_dir} (steps: {', '.join(map(str, steps))})")
    model, meta = ckpt_dir / f"model_{step:06d}.pt", ckpt_dir / f"meta_{step:06d}.json"
    if not model.exists():  # nanochat pads the step to six digits; accept a file written otherwise
        model = next(p for p in ckpt_dir.glob("model_*.pt") if p.name == f"model_{step}.pt")
        meta = ckpt_dir / f"meta_{step}.json"
    if not meta.is_file():
        raise UserError(f"{model.name} has no {meta.name} beside it")
    return model, meta, step


def recurlm_configs(model_config: dict) -> dict:
    """recurlm's config sections for nanochat's GPTConfig (plain) or the fork's (with n_recur_block)."""
    try:
        g = {k: model_config[k] for k in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")}
    except KeyError as e:
        raise UserError(f"meta's model_config lacks {e.args[0]}") from None
    recursive = "n_recur_block" in model_config
    blocks = (
        (model_config["n_prelude"], model_config["n_recur_block"], model_config["n_coda"])
        if recursive
        else (g["n_layer"], 0, 0)
    )
    model = dict(
        vocab_size=g["vocab_size"],
        seq_len=g["sequence_len"],
        d_model=g["n_embd"],
        n_head=g["n_head"],
        n_kv_head=g["n_kv_head"],
        n_prelude=blocks[0],
        n_core=blocks[1],
        n_coda=blocks[2],
        mlp="relu2",
        tie_embeddings=False,
        logit_softcap=SOFTCAP,
        inject="add" if model_config.get("inject_mode") == "add" else "concat_linear",
    )
    overrides = {"model": model, "tokenizer": {"kind": "bpe"}}
    if recursive:
        mean = float(model_config.get("train_recur_mean", 4.0))
        overrides["recurrence"] = dict(
            schedule="poisson_lognormal",
            mean=mean,
            max=int(model_config.get("train_recur_max", 16)),
            bptt_k=int(model_config.get("bptt_k", 4)),
        )
        overrides["inference"] = dict(
            recurrences=round(mean),
            kv_budget=int(model_config.get("kv_cache_recur_budget", 1)),
            warm_start=bool(model_config.get("recur_warm_start", True)),
        )
    else:
        overrides["recurrence"] = dict(schedule="fixed", mean=1.0, max=1, bptt_k=0)
        overrides["inference"] = dict(recurrences=1, warm_start=False)
    return build_configs(overrides)


def recurlm_state_dict(state: dict, n_head: int, n_kv_head: int) -> dict[str, torch.Tensor]:
    """nanochat's parameter names and rotary convention in recurlm's terms (fp32)."""
    out = {}
    for name, tensor in state.items():
        name = name.removeprefix("_orig_mod.")
        if m := re.fullmatch(r"transformer\.(h|prelude|recur|coda)\.(\d+)\.(.+)", name):
            name = f"{LAYER_GROUPS[m.group(1)]}.{m.group(2)}.{m.group(3)}"
        else:
            name = name.removeprefix("transformer.")
        tensor = tensor.float()
        if name.endswith(("attn.c_q.weight", "attn.c_k.weight")):
            heads = n_head if ".c_q." in name else n_kv_head
            w = tensor.reshape(heads, 2, -1, tensor.size(-1)).clone()
            w[:, 1] = -w[:, 1]  # second half of each head: nanochat's −θ as recurlm's +θ
            tensor = w.reshape_as(tensor)
        out[name] = tensor
    return out


def import_nanochat(ckpt_dir: str | Path, tokenizer_dir: str | Path | None = None, step: int | None = None):
    """(model, tokenizer, configs) from a nanochat checkpoint directory; raises UserError, writing nothing."""
    ckpt_dir = Path(ckpt_dir)
    weights, meta_path, step = _checkpoint_files(ckpt_dir, step)
    tok_path = Path(tokenizer_dir) if tokenizer_dir else ckpt_dir.parent.parent / "tokenizer"  # where nanochat keeps it
    tok_path = tok_path / "tokenizer.pkl"
    if not tok_path.is_file():
        raise UserError(f"no tokenizer at {tok_path}: pass --tokenizer DIR (the directory holding tokenizer.pkl)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is not JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config"), dict):
        raise UserError(f"{meta_path} has no model_config")
    configs = recurlm_configs(meta["model_config"])
    mcfg = configs.model
    tok = tokenizer_from_tiktoken(read_tiktoken_pickle(tok_path))
    if tok.vocab_size > mcfg.vocab_size:
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {mcfg.vocab_size}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # an unsafe or damaged file: torch says which
        raise UserError(f"cannot load {weights} as weights: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise UserError(f"{weights} does not hold a state dict")
    model = build_model(mcfg, "cpu")
    expected = model.state_dict()
    state = recurlm_state_dict(state, mcfg.n_head, mcfg.kv_heads)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        first = (missing and f"missing {missing[0]}") or (unexpected and f"unexpected {unexpected[0]}")
        if not first:
            first = f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, the meta says {tuple(expected[wrong[0]].shape)}"
        raise UserError(f"{weights.name} does not fit {meta_path.name}: {first}")
    model.load_state_dict(state)
    return model.eval(), tok, configs
