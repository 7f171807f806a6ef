"""`recurlm export hf`: a checkpoint as a Hugging Face model directory (`trust_remote_code=True`).

The directory holds config.json (with `auto_map` to the self-contained modeling_recurlm.py beside it), the weights
under the same names as recurlm's, the tokenizer as a PreTrainedTokenizerFast (prompts get the BOS recurlm puts
before them), generation_config.json and a model card. transformers is not needed to export, only to load.
"""

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from recurlm.checkpoint import load_checkpoint
from recurlm.errors import UserError
from recurlm.tasks.runs import task_from_configs, trained_task_names
from recurlm.text.tokenizer import BOS, EOS, PAD

MODELING = Path(__file__).with_name("modeling_recurlm.py")
AUTO_MAP = {
    "AutoConfig": "modeling_recurlm.RecurLMConfig",
    "AutoModelForCausalLM": "modeling_recurlm.RecurLMForCausalLM",
}


def hf_config(configs: dict, digit_ids: set[int]) -> dict:
    """config.json: recurlm's [model] fields, the digits abacus ids need, and the inference depth and exit."""
    model, policy = configs.to_dict()["model"], configs.inference
    return {
        "architectures": ["RecurLMForCausalLM"],
        "model_type": "recurlm",
        "auto_map": AUTO_MAP,
        **model,
        "digit_token_ids": sorted(digit_ids) if model["abacus"] else [],
        "num_steps": policy.recurrences,
        "exit": policy.exit,
        "min_steps": policy.min_steps,
        "kv_budget": policy.kv_budget,
        "warm_start": policy.warm_start,
        "torch_dtype": "float32",
    }


def prompt_format(configs: dict) -> str:
    """How the checkpoint's own tasks put a question (MiniAxion: '<INST>{}</INST>'), for the model card."""
    templates = {task_from_configs(n, configs).prompt_template for n in trained_task_names(configs)}
    return templates.pop() if len(templates) == 1 else "{}"


def model_card(name: str, configs: dict, params: int, template: str) -> str:
    m, p = configs.model, configs.inference
    shape = f"(P, R, C) = ({m.n_prelude}, {m.n_core}, {m.n_coda})" if m.n_core else f"{m.n_prelude} layers"
    example = template.format("What is 47 + 38?") if template != "{}" else "Hello"
    return f"""---
library_name: transformers
tags: [recurlm, recurrent-depth, looped-transformer]
---
# {name}

A recurrent-depth ("looped") language model exported by recurlm (`recurlm export hf`):
{shape}, width {m.d_model}, {m.n_head} heads, vocabulary {m.vocab_size}, context {m.seq_len}, {params:,} parameters.
The core blocks run `num_steps` times per token: effective depth {m.n_prelude} + {m.n_core}·num_steps + {m.n_coda}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)  # the config it reads is remote code too
model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
ids = tok({example!r}, return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=64, do_sample=False, num_steps={p.recurrences})
print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))  # trace tags kept, only BOS/EOS/PAD dropped
```

## Recurrence settings
- `num_steps` (default {p.recurrences}): recurrences of the core. More can help a model trained at several depths.
- `exit` (default `{p.exit}`): per-token adaptive exit, `none`, `latent:EPS` (the state's relative change falls under
  EPS), `cosine:EPS` (1 - the cosine of successive states), `kl:EPS` (the next-token distribution's KL from the
  previous iteration's), `entropy:EPS` (the change of its entropy), `minp:EPS` (KL of min-p filtered distributions)
  , `argmax:N` (the top token unchanged for N iterations) or, for a model trained with an exit gate, `gate:Q` (stop
  once the learned exit probability adds up to Q); `num_steps` is then the cap.
  `min_steps` (default {p.min_steps}): the exit fires after at least this many.
- Each is a field of config.json and an argument of `forward()` and `generate()`; `forward()` returns `steps`, the
  recurrences each token ran.

## What differs from recurlm
- `generate()` decodes through recurlm's KV cache (`RecurLMCache`: `kv_budget` (default {p.kv_budget}) core slots per
  block, warm start ({p.warm_start}), the exit applied to generated tokens): the tokens recurlm's engine gives under the
  same policy. `use_cache=False` recomputes the whole sequence at every token instead (every token under the exit,
  `kv_budget = r`, no warm start). Continuous batching and depth batching are recurlm's engine's alone.
- Batches must not be padded (sequences of equal length).
- Prompt format: `{template}`; the tokenizer adds `{BOS}` in front as recurlm does.
"""


def tokenizer_files(tok, seq_len: int) -> dict[str, str]:
    """tokenizer.json with recurlm's BOS added to every encoded text, and a PreTrainedTokenizerFast config. Only
    BOS, EOS and PAD stay special: the trace tags (`<STEP>`, `<ANS>`, ...) and chat markers are the answer's
    structure, and `decode(skip_special_tokens=True)` (what pipelines do) must keep them."""
    hf = HFTokenizer.from_str(tok.hf.to_str())
    bos = tok.token_id(BOS)
    if bos is not None:  # recurlm starts every prompt with BOS (nanochat's chat turns too)
        hf.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos)])
    eos = hf.id_to_token(tok.eos_id) if tok.eos_id is not None else None
    spec = json.loads(hf.to_str())
    for added in spec["added_tokens"]:
        added["special"] = added["content"] in (BOS, EOS, PAD, eos)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": seq_len,
        "clean_up_tokenization_spaces": False,
        "bos_token": BOS if bos is not None else None,
        "eos_token": eos,
        "pad_token": PAD if tok.token_id(PAD) is not None else eos,
    }
    tokenizer_config = json.dumps(config, indent=2)
    return {"tokenizer.json": json.dumps(spec, ensure_ascii=False), "tokenizer_config.json": tokenizer_config}


def export_hf(checkpoint: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} exists and is not empty: choose another directory, or --force to replace it")
    model, tok, configs = load_checkpoint(checkpoint)
    seq_len = configs.model.seq_len
    files = {
        "config.json": json.dumps(hf_config(configs, tok.digit_ids), indent=2),
        "generation_config.json": json.dumps(
            {"use_cache": True, "do_sample": False, "eos_token_id": tok.stop_ids},
            indent=2,
        ),
        "modeling_recurlm.py": MODELING.read_text(),
        "README.md": model_card(out.name, configs, model.param_groups()["unique"], prompt_format(configs)),
        **tokenizer_files(tok, seq_len),
    }
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # written whole, then moved in place
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, text in files.items():
        (tmp / name).write_text(text)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
