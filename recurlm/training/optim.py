"""Optimisers and the learning-rate schedule: AdamW, or Muon for the blocks' matrices as nanochat trains them."""

import torch


def lr_factor(step: int, steps: int, warmup: int, warmdown_frac: float, final: float) -> float:
    """Linear warm-up, constant, then a linear warm-down to `final` over the last fraction (nanochat)."""
    if step < warmup:
        return (step + 1) / warmup
    warmdown = int(steps * warmdown_frac)
    if warmdown and step >= steps - warmdown:
        return final + (1 - final) * (steps - step) / warmdown
    return 1.0


def build_optimizers(model, tcfg) -> list[torch.optim.Optimizer]:
    """AdamW for everything, or Muon for the 2-D matrices inside the blocks, injection and gate (nanochat), with
    AdamW for embeddings, head, biases and the 3-D LoRA stacks."""
    adam_kw = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=tcfg.weight_decay)
    if tcfg.optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=tcfg.lr, **adam_kw)]
    matrices, rest = [], []
    for name, p in model.named_parameters():
        in_blocks = name.split(".")[0] in ("prelude", "core", "coda", "inject", "gate")
        (matrices if in_blocks and p.ndim == 2 else rest).append(p)
    muon = torch.optim.Muon(matrices, lr=tcfg.matrix_lr, weight_decay=tcfg.weight_decay)
    return [muon, torch.optim.AdamW(rest, lr=tcfg.lr, **adam_kw)]


def base_lrs(optimizers, tcfg):
    return [tcfg.matrix_lr if isinstance(o, torch.optim.Muon) else tcfg.lr for o in optimizers]
