import torch

from recurlm.config import InferencePolicy, ModelConfig
from recurlm.network.model import build_model


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=37, seq_len=48, d_model=32, n_head=4, n_prelude=1, n_core=2, n_coda=1)
    return ModelConfig(**{**base, **overrides})


def tiny_model(seed=0, noise=0.1, **overrides):
    """A small model with every weight perturbed: at init the output projections are zero (blocks are identities),
    which would make most equalities trivially true."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model.eval()


def policy(r: int = 3, **overrides) -> InferencePolicy:
    """An inference policy for tests: r recurrences, cold start, budget 1 unless overridden."""
    return InferencePolicy(**{"recurrences": r, "warm_start": False, **overrides})
