import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recurlm.checkpoint import load_checkpoint
from recurlm.config import load_config
from recurlm.data import TaskMixture
from recurlm.errors import UserError
from recurlm.tokenizer import Tokenizer
from recurlm.train import lr_factor, train

TINY = [
    "d_model=32",
    "n_head=2",
    "mlp_hidden=64",
    "batch_size=16",
    "eval_n=8",
    "log_every=1",
    "eval_every=10",
    "ckpt_every=5",
    "warmup_steps=3",
    "lr=0.01",
    "stage.curriculum.max_difficulty=2",
    "stage.curriculum.steps=20",
]


def tiny(*extra):
    return load_config("rrslm-addition", overrides=[*TINY, *extra])


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_loss_goes_down_and_resume_is_exact(tmp_path):
    full_model, state = train(tiny(), tmp_path / "full")
    assert state["step"] == 20
    full = losses(tmp_path / "full")
    assert len(full) == 20 and full[-1] < 0.6 * full[0]

    train(tiny(), tmp_path / "split", stop_after=7)  # an interruption between checkpoints
    assert len(losses(tmp_path / "split")) == 7
    resumed_model, _ = train(tiny(), tmp_path / "split", resume=True)
    assert losses(tmp_path / "split") == full  # bit-exact on CPU with fixed seeds
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    saved, _, _ = load_checkpoint(tmp_path / "full")
    assert all(torch.equal(v, full_model.state_dict()[k]) for k, v in saved.state_dict().items())


def test_output_dir_guards(tmp_path):
    train(tiny(), tmp_path / "run", stop_after=2)
    before = (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny(), tmp_path / "run")
    with pytest.raises(UserError, match="different config"):
        train(tiny("d_model=64"), tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == before


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    import recurlm.checkpoint as ck

    train(tiny(), tmp_path / "run", stop_after=5)
    before = (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(OSError):
        train(tiny(), tmp_path / "run", resume=True, stop_after=5)
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == before
    assert json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 5


def test_muon_and_grad_accum_train(tmp_path):
    _, state = train(tiny("optimizer=muon", "grad_accum=2", "stage.curriculum.steps=15"), tmp_path / "m")
    got = losses(tmp_path / "m")
    assert state["step"] == 15 and got[-1] < 0.6 * got[0]
    assert json.loads((tmp_path / "m" / "metrics.jsonl").read_text().splitlines()[0])["tokens"] > 0


def test_schedule_curriculum_promotes(tmp_path):
    train(
        tiny(
            "stage.curriculum.curriculum=schedule",
            "stage.curriculum.promote_every=8",
            "stage.curriculum.max_difficulty=3",
        ),
        tmp_path / "s",
    )
    rows = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    levels = [row["level"] for row in rows if "loss" in row]
    assert levels[:8] == [1] * 8 and levels[8:16] == [2] * 8 and set(levels[16:]) == {3}


def test_mixture_is_deterministic_sharded_and_curriculum_bound():
    stage = tiny("stage.curriculum.max_difficulty=3")["stage"]["curriculum"]
    tok = Tokenizer.char("0123456789+=", "pad")
    mix = TaskMixture(stage, tok, seed=0)
    a = mix.examples(64, step=3, rank=0, micro=0, level=2)
    assert a == mix.examples(64, step=3, rank=0, micro=0, level=2)
    assert a != mix.examples(64, step=3, rank=1, micro=0, level=2)
    assert {ex.difficulty for ex in a} == {1, 2}
    assert sum(ex.difficulty == 2 for ex in a) > 32  # review_frac 0.25 of the earlier level
    x, y, pos = mix.batch(4, 0, 0, 0, 1)
    assert pos is None
    # loss only on the answer and the end token: 'A+B=' is 4 inputs with no target except the last
    assert (y[:, :3] == -1).all() and (y[:, 3] >= 0).all()


def test_lr_schedule():
    f = [lr_factor(s, 100, 10, 0.3, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0
    assert f[99] < 0.15 and all(a >= b for a, b in zip(f[70:], f[71:], strict=False))


WORKER = """
import os, sys, torch
from recurlm.config import load_config
from recurlm.train import train
configs = load_config("rrslm-addition", overrides=sys.argv[2:])
model, state = train(configs, sys.argv[1])
torch.save(model.state_dict(), f"{sys.argv[1]}/rank{os.environ['RANK']}.pt")
"""


def test_ddp_two_ranks_end_identical(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "ddp"
    args = [*TINY, "stage.curriculum.steps=6", "eval_every=0"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(tmp_path / "worker.py"),
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    w0, w1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    saved, _, _ = load_checkpoint(out)
    assert all(torch.equal(w0[k], v) for k, v in saved.state_dict().items())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert rows[0]["tokens"] == 2 * rows[0]["tokens"] // 2 and len(rows) == 6  # one writer: rank 0
