"""Optimisers and the learning-rate schedule: AdamW, or Muon for the blocks' matrices as nanochat trains them."""

import math

import torch

from recurlm.machine import cpu_has_bf16


class Fp32Muon(torch.optim.Muon):
    """torch's Muon (same hyperparameters, state and update) with the Newton-Schulz orthogonalisation in fp32.
    torch runs it in bf16, which a CPU without AMX or AVX512-BF16 emulates: on a 2-core AMD EPYC it took 9.6 s of a
    10 s addition-length step (cProfile), the whole of the trainer's 7x gap to the README's machine."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            assert group["adjust_lr_fn"] in (None, "original"), "only Muon's original lr adjustment is written here"
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault(
                    "momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format)
                )
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = orthogonalised(update.float(), group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"] * math.sqrt(max(1, p.shape[0] / p.shape[1])))
        return loss


def orthogonalised(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration towards U V^T of g = U S V^T (torch.optim.Muon's, in g's dtype)."""
    a, b, c = coefficients
    tall = g.size(0) > g.size(1)
    x = g.T if tall else g
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def lr_factor(step: int, steps: int, warmup: int, warmdown_frac: float, final: float) -> float:
    """Linear warm-up, constant, then a linear warm-down to `final` over the last fraction (nanochat)."""
    if step < warmup:
        return (step + 1) / warmup
    warmdown = int(steps * warmdown_frac)
    if warmdown and step >= steps - warmdown:
        return final + (1 - final) * (steps - step) / warmdown
    return 1.0


# What every recurrence reuses: train.core_lr_scale applies to these parameters
SHARED = ("core", "inject", "gate", "gate_bias", "decay")


def build_optimizers(model, tcfg) -> list[torch.optim.Optimizer]:
    """AdamW for everything, or Muon for the 2-D matrices inside the blocks, injection and gate (nanochat), with
    AdamW for embeddings, head, biases and the 3-D LoRA stacks. Each optimiser has a param group of the shared
    (looped) parameters, marked `shared`, and one of the rest (`group_lr` sets their rates)."""
    adam_kw = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=tcfg.weight_decay)
    matrices, rest = {False: [], True: []}, {False: [], True: []}
    for name, p in model.named_parameters():
        if not p.requires_grad:  # fixed by design (model.abacus_fixed)
            continue
        top = name.split(".")[0]
        muon = tcfg.optimizer == "muon" and top in ("prelude", "core", "coda", "inject", "gate") and p.ndim == 2
        (matrices if muon else rest)[top in SHARED].append(p)

    def groups(params):
        return [{"params": ps, "shared": shared} for shared, ps in params.items() if ps]

    optimizers = []
    if any(matrices.values()):
        native = any(p.device.type != "cpu" for ps in matrices.values() for p in ps) or cpu_has_bf16()
        muon = torch.optim.Muon if native else Fp32Muon
        optimizers.append(muon(groups(matrices), lr=tcfg.matrix_lr, weight_decay=tcfg.weight_decay))
    optimizers.append(torch.optim.AdamW(groups(rest), lr=tcfg.lr, **adam_kw))
    return optimizers


def group_lr(optimizer, group: dict, tcfg) -> float:
    """A param group's base rate: Muon's or AdamW's, times core_lr_scale for the shared parameters (a group saved
    before groups were split has no mark and counts as unshared)."""
    lr = tcfg.matrix_lr if isinstance(optimizer, torch.optim.Muon) else tcfg.lr
    return lr * (tcfg.core_lr_scale if group.get("shared") else 1.0)
