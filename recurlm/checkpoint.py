"""Checkpoints (docs/design.md §5): a directory with config.json, model.safetensors, tokenizer.json
(and, for resuming, optimizer.pt, trainer_state.json and, when the model saved is a moving average of the weights,
training_weights.safetensors), written to a temporary directory and renamed into place
so that a crash never leaves a half-written checkpoint."""

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from recurlm.config import RunConfig, build_configs, merge, migrate
from recurlm.errors import UserError
from recurlm.network.model import RecurrentGPT, build_model
from recurlm.text.tokenizer import Tokenizer

TRAINING_WEIGHTS = "training_weights.safetensors"  # beside the model when that is a moving average


def build_tokenizer(configs: RunConfig, texts=()) -> Tokenizer:
    """The tokenizer a config asks for: a char alphabet, or BPE trained on `texts` (bytes only when empty)."""
    tcfg, mcfg = configs.tokenizer, configs.model
    if tcfg.kind == "char":
        tok = Tokenizer.char(tcfg.alphabet, tcfg.specials)
    else:
        tok = Tokenizer.bpe(texts, mcfg.vocab_size, tcfg.specials, tcfg.split_digits)
    if tok.vocab_size > mcfg.vocab_size:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens but model.vocab_size is {mcfg.vocab_size}")
    return tok


def save_checkpoint(
    out_dir: str | Path,
    model: RecurrentGPT,
    tokenizer: Tokenizer,
    configs: RunConfig,
    optimizer_state: dict | None = None,
    trainer_state: dict | None = None,
    training_weights: dict | None = None,
):
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "config.json").write_text(json.dumps(configs.to_dict(), indent=2))
    save_file(_cpu(model.state_dict()), tmp / "model.safetensors")
    tokenizer.save(tmp / "tokenizer.json")
    if training_weights is not None:
        save_file(_cpu(training_weights), tmp / TRAINING_WEIGHTS)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    if trainer_state is not None:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)  # the only moment the checkpoint changes: before it the old one is whole, after it the new
    shutil.rmtree(old, ignore_errors=True)


def _cpu(state: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def load_training_weights(ckpt_dir: Path, device) -> dict:
    """The weights a run trains, where the checkpoint's model is their moving average (`train.ema`)."""
    path = ckpt_dir / TRAINING_WEIGHTS
    if not path.is_file():
        raise UserError(f"{ckpt_dir} has no {TRAINING_WEIGHTS}: it was trained without train.ema")
    return read_file(path, lambda p: load_file(p, device=str(device)))


def resolve(ckpt_dir: str | Path) -> Path:
    """A checkpoint directory, or a run directory holding one in checkpoint/."""
    path = Path(ckpt_dir)
    if not path.is_dir():
        raise UserError(f"checkpoint directory not found: {ckpt_dir}")
    if not (path / "config.json").exists() and (path / "checkpoint" / "config.json").exists():
        return path / "checkpoint"
    return path


def read_values(ckpt_dir: str | Path) -> dict:
    """The configuration values a checkpoint records (in today's layout: older checkpoints are migrated)."""
    ckpt_dir = resolve(ckpt_dir)
    path = ckpt_dir / "config.json"
    if not path.is_file():
        raise UserError(f"not a recurlm checkpoint (no config.json): {ckpt_dir}")
    return merge({}, migrate(read_file(path, lambda p: json.loads(p.read_text()))), str(path))


def read_configs(ckpt_dir: str | Path) -> RunConfig:
    return build_configs(read_values(ckpt_dir))


def load_checkpoint(ckpt_dir: str | Path, device="cpu") -> tuple[RecurrentGPT, Tokenizer, RunConfig]:
    ckpt_dir = resolve(ckpt_dir)
    configs = read_configs(ckpt_dir)
    weights = ckpt_dir / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"checkpoint has no model.safetensors: {ckpt_dir}")
    model = build_model(configs.model, device)
    if str(device) == "meta":  # config and tokenizer only
        return model, Tokenizer.load(ckpt_dir / "tokenizer.json"), configs
    state = read_file(weights, lambda p: load_file(p, device=str(device)))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"weights in {weights} do not fit its config.json: {str(e).splitlines()[0]}") from None
    model.set_context(configs.inference.context)
    return model, Tokenizer.load(ckpt_dir / "tokenizer.json"), configs


def read_file(path: Path, load):
    """`load(path)`, with a truncated or corrupt file (a crash mid-copy, a full disk) as one line naming it."""
    try:
        return load(path)
    except Exception as e:  # safetensors, torch and json each raise their own kinds
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is truncated or corrupt ({reason})") from None
