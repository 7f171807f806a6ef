"""The training objectives against overthinking (recurrence.progressive, recurrence.supervise_every): the loss each
computes, checked against the same loss written out from the model's parts, and where its gradient flows."""

import torch
import torch.nn.functional as F
from helpers import tiny_model

from recurlm.network.model import Supervision

IDX = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(0))
TARGETS = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(1))


def loss_after(model, r, start_state=None, n_free=0):
    """Cross-entropy after r iterations, the first n_free without gradient, written out from the model's parts."""
    ctx = model.context(IDX.size(1))
    e = model.embed(IDX, ctx)
    s = model.init_state(e) if start_state is None else start_state
    for i in range(r):
        if i < n_free:
            with torch.no_grad():
                s = model.core_step(e, s, i, ctx)
            s = s.detach()
        else:
            s = model.core_step(e, s, i, ctx)
    logits = model.unembed(model.coda_out(s, ctx))
    return F.cross_entropy(logits.flatten(0, 1), TARGETS.flatten())


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_without_supervision_the_loss_is_the_final_cross_entropy():
    model = tiny_model()
    assert torch.allclose(model(IDX, 3, targets=TARGETS), loss_after(model, 3), atol=1e-6)
    off = Supervision(every=0, progressive=0.0)
    assert torch.allclose(model(IDX, 3, targets=TARGETS, supervision=off), loss_after(model, 3), atol=1e-6)


def test_deep_supervision_mixes_every_jth_iteration():
    model = tiny_model()
    got = model(IDX, 4, targets=TARGETS, supervision=Supervision(every=1, weight=0.25))
    early = torch.stack([loss_after(model, i) for i in (1, 2, 3)]).mean()
    assert torch.allclose(got, 0.75 * loss_after(model, 4) + 0.25 * early, atol=1e-6)
    got = model(IDX, 4, targets=TARGETS, supervision=Supervision(every=2, weight=0.5))
    assert torch.allclose(got, 0.5 * loss_after(model, 4) + 0.5 * loss_after(model, 2), atol=1e-6)


def test_progressive_loss_value_and_its_gradient_skips_the_free_iterations():
    torch.manual_seed(0)
    model = tiny_model()
    sup = Supervision(progressive=0.4, split=(2, 1))
    got = model(IDX, 3, targets=TARGETS, supervision=sup)
    # n = 2 iterations without gradient from the initial state, then k = 1 with it
    assert torch.allclose(got, 0.6 * loss_after(model, 3) + 0.4 * loss_after(model, 3, n_free=2), atol=1e-6)
    # all weight on the progressive term: the gradient is that of the loss whose first two iterations are constant
    only = grads(model, model(IDX, 3, targets=TARGETS, supervision=Supervision(progressive=1.0, split=(2, 1))))
    reference = grads(model, loss_after(model, 3, n_free=2))
    full = grads(model, loss_after(model, 3))
    assert only.keys() == reference.keys()
    assert all(torch.allclose(only[n], reference[n], atol=1e-6) for n in only)
    assert any(not torch.allclose(only[n], full[n], atol=1e-6) for n in only)  # it is another objective


def test_the_progressive_loss_alone_runs_only_its_own_iterations(monkeypatch):
    model = tiny_model()
    sup = Supervision(progressive=1.0, split=(1, 2))
    calls = []
    step = model.core_step
    monkeypatch.setattr(model, "core_step", lambda *a, **k: calls.append(1) or step(*a, **k))
    got = model(IDX, 6, targets=TARGETS, supervision=sup)
    assert len(calls) == 3  # n + k, not the 6 of the full depth as well
    assert torch.allclose(got, loss_after(model, 3, n_free=1), atol=1e-6)


def test_a_plain_gpt_ignores_the_loop_objectives():
    plain = tiny_model(n_core=0, n_prelude=2)
    sup = Supervision(every=1, weight=0.5, progressive=0.5, split=(1, 1))
    assert torch.allclose(plain(IDX, 1, targets=TARGETS, supervision=sup), plain(IDX, 1, targets=TARGETS))


def per_step(model, r):
    """Each iteration's per-token loss (r, B, T) and the exit gate's lambda (r, B, T), written out."""
    ctx = model.context(IDX.size(1))
    e = model.embed(IDX, ctx)
    s, losses, lams = model.init_state(e), [], []
    for i in range(r):
        s = model.core_step(e, s, i, ctx)
        logits = model.unembed(model.coda_out(s, ctx))
        losses.append(F.cross_entropy(logits.flatten(0, 1), TARGETS.flatten(), reduction="none").view(IDX.shape))
        lams.append(torch.sigmoid(model.exit_gate(F.rms_norm(s, (s.size(-1),))))[..., 0])
    return torch.stack(losses), torch.stack(lams)


def test_exit_gate_trains_on_the_expected_loss_over_exit_steps():
    """Ouro's objective: p_t = lambda_t prod_{j<t} (1 - lambda_j), the last step the rest; sum_t p_t L_t minus beta
    times the entropy of p; and every part learns from it (the gate too)."""
    model = tiny_model(exit_gate=True)
    L, lam = per_step(model, 3)
    p = torch.stack([lam[0], (1 - lam[0]) * lam[1], (1 - lam[0]) * (1 - lam[1])])
    assert torch.allclose(p.sum(0), torch.ones_like(p[0]))
    for beta in (0.0, 0.3):
        want = ((p * L).sum(0) + beta * (p * p.log()).sum(0)).mean()
        got = model(IDX, 3, targets=TARGETS, supervision=Supervision(gate_beta=beta))
        assert torch.allclose(got, want, atol=1e-5)
    learned = grads(model, model(IDX, 3, targets=TARGETS, supervision=Supervision(gate_beta=0.05)))
    assert {"exit_gate.weight", "core.0.attn.c_q.weight", "coda.0.mlp.c_fc.weight"} <= learned.keys()


def test_exit_gate_second_stage_teaches_only_the_gate_where_more_steps_stop_paying():
    model = tiny_model(exit_gate=True)
    L, lam = per_step(model, 4)
    stop = (L[:-1] - L[1:] < 0.01).float()
    assert 0 < stop.mean() < 1  # some tokens gain from one more step, some do not
    want = F.binary_cross_entropy(lam[:-1], stop)
    sup = Supervision(gate="only", gate_gamma=0.01)
    got = model(IDX, 4, targets=TARGETS, supervision=sup)
    assert torch.allclose(got, want, atol=1e-5)
    assert set(grads(model, got)) == {"exit_gate.weight", "exit_gate.bias"}  # the network itself stays as it is
