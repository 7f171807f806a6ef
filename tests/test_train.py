import itertools
import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from recurlm.checkpoint import build_tokenizer, load_checkpoint
from recurlm.config import load_config
from recurlm.errors import UserError
from recurlm.network.model import build_model
from recurlm.text.tokenizer import Tokenizer
from recurlm.training.data import TaskMixture
from recurlm.training.depth import sample_recurrences
from recurlm.training.optim import lr_factor
from recurlm.training.trainer import train

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


def logged(out: Path, key: str) -> list:
    """`key` of every training step's record in a run's metrics.jsonl (validation records have none)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


def losses(out: Path) -> list[float]:
    return logged(out, "loss")


def test_loss_goes_down_and_resume_is_exact(tmp_path):
    # one attention kernel for both runs: under 'auto' each would time its own (the next test)
    full_model, state = train(tiny("attention=flash"), tmp_path / "full")
    assert state["step"] == 20
    full = losses(tmp_path / "full")
    assert len(full) == 20 and full[-1] < 0.6 * full[0]

    train(tiny("attention=flash"), tmp_path / "split", stop_after=7)  # an interruption between checkpoints
    assert len(losses(tmp_path / "split")) == 7
    resumed_model, _ = train(tiny("attention=flash"), tmp_path / "split", resume=True)
    assert losses(tmp_path / "split") == full  # bit-exact on CPU with fixed seeds
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    saved, _, _ = load_checkpoint(tmp_path / "full")
    assert all(torch.equal(v, full_model.state_dict()[k]) for k, v in saved.state_dict().items())


def test_ema_checkpoints_the_average_leaves_training_alone_and_resumes_exactly(tmp_path):
    from recurlm.checkpoint import load_training_weights

    plain, _ = train(tiny("attention=flash"), tmp_path / "plain")
    averaged, _ = train(tiny("attention=flash", "ema=0.8"), tmp_path / "ema")
    raw = load_training_weights(tmp_path / "ema" / "checkpoint", "cpu")
    # the average only watches: the weights trained are the plain run's, bit for bit
    assert all(torch.equal(raw[k], v) for k, v in plain.state_dict().items())
    saved, _, _ = load_checkpoint(tmp_path / "ema")  # the checkpoint's model is the average, not the last step
    assert all(torch.equal(v, averaged.state_dict()[k]) for k, v in saved.state_dict().items())
    # an average of the last few steps (decay 0.8): near the trained weights, yet not them
    init, _ = train(tiny("attention=flash"), tmp_path / "init", stop_after=0)
    for name, v in raw.items():
        if v.is_floating_point() and v.dim() == 2:
            gap, travelled = (saved.state_dict()[name] - v).norm(), (init.state_dict()[name] - v).norm()
            assert 0 < gap < 0.5 * travelled, name

    train(tiny("attention=flash", "ema=0.8"), tmp_path / "split", stop_after=7)
    resumed, _ = train(tiny("attention=flash", "ema=0.8"), tmp_path / "split", resume=True)
    assert losses(tmp_path / "split") == losses(tmp_path / "ema")
    for (k, a), b in zip(averaged.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # switched off mid-run, training goes on from the trained weights, not from their average
    train(tiny("attention=flash", "ema=0.8"), tmp_path / "off", stop_after=7)
    resumed, _ = train(tiny("attention=flash"), tmp_path / "off", resume=True)
    assert losses(tmp_path / "off") == losses(tmp_path / "plain")
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in resumed.state_dict().items())
    # switched on mid-run there are no trained weights beside the model to go on from
    train(tiny("attention=flash"), tmp_path / "half", stop_after=7)
    with pytest.raises(UserError, match="no training_weights.safetensors"):
        train(tiny("attention=flash", "ema=0.8"), tmp_path / "half", resume=True)


def test_attention_kernel_is_timed_once_and_kept_on_resume(tmp_path, monkeypatch):
    import recurlm.network.model as model
    import recurlm.training.trainer as trainer

    monkeypatch.setattr(model, "_written_out", None)  # restored after the test

    def step():  # the flash kernel takes longer than the written-out form
        calls.append(model._written_out)
        sum(range(200_000 if model._written_out else 2_000_000))

    calls = []
    assert trainer.choose_attention(step, rounds=2) and model._written_out is True
    assert calls == [True, False] * 3  # in turn, a warm-up round first
    timed = []
    monkeypatch.setattr(trainer, "choose_attention", lambda s: timed.append(1) or {"written_out": 2.0, "flash": 1.0})
    monkeypatch.setattr(trainer, "autocast_dtype", lambda *a: torch.bfloat16)  # bf16 on any CPU
    train(tiny(), tmp_path / "run", stop_after=3)
    assert timed == [1]
    assert json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["attention"] == "flash"
    model._written_out = True
    train(tiny(), tmp_path / "run", resume=True)
    assert timed == [1] and model._written_out is False  # the run's own choice, not timed again
    train(tiny("attention=written_out"), tmp_path / "fixed", stop_after=1)
    assert timed == [1] and model._written_out is True


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
    stage = tiny("stage.curriculum.max_difficulty=3").stages["curriculum"]
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
from recurlm.training.trainer import train
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
    assert len(rows) == 6  # one writer: rank 0
    train(load_config("rrslm-addition", overrides=args), tmp_path / "one")  # rank 0's batches, alone
    alone = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [row["tokens"] for row in rows] == [2 * row["tokens"] for row in alone if "loss" in row]


def test_accuracy_curriculum_promotes_exactly_when_the_level_is_mastered(tmp_path):
    def levels(promote_at):
        out = tmp_path / f"p{promote_at}"
        train(tiny("stage.curriculum.curriculum=accuracy", f"stage.curriculum.promote_at={promote_at}"), out)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return rows, [row["level"] for row in rows if "loss" in row]

    rows, always = levels(0.0)
    assert always[:10] == [1] * 10 and set(always[10:]) == {2}  # promoted at the first evaluation (step 10)
    assert [row["train_accuracy_at_level"] for row in rows if "eval" in row][:1]  # decided on training problems
    _, never = levels(1.01)  # no accuracy reaches it
    assert set(never) == {1}
    rows, _ = levels(0.5)
    evals = [row for row in rows if "train_accuracy_at_level" in row]
    steps = [row for row in rows if "loss" in row]
    for ev in evals:  # the next step's level follows the rule on the logged accuracy
        before = next(r["level"] for r in steps if r["step"] == ev["step"])
        after = next((r["level"] for r in steps if r["step"] == ev["step"] + 1), None)
        if after is not None:
            assert after == before + (ev["train_accuracy_at_level"] >= 0.5 and before < 2)


def test_changing_r_does_not_recompile_compiled_blocks():
    from helpers import tiny_model
    from torch._dynamo.utils import counters

    from recurlm.training.trainer import compile_blocks

    torch._dynamo.reset()
    counters.clear()
    plain = tiny_model().train()
    model = tiny_model().train()
    compile_blocks(model)
    idx = torch.randint(0, 37, (2, 12))

    def step(r):
        loss = model(idx, r, bptt_k=2, targets=idx)  # r > 2 runs iterations with and without grad
        loss.backward()
        assert abs(loss.item() - plain(idx, r, bptt_k=2, targets=idx).item()) < 1e-5  # the same mathematics
        return counters["stats"]["unique_graphs"]

    warm = step(3)
    assert warm > 0 and [step(r) for r in (1, 2, 5, 7, 4)] == [warm] * 5


def test_validating_a_compiled_model_compiles_nothing():
    """Periodic validation decodes with the KV cache; through compiled blocks each cache slot would compile a graph
    of its own until dynamo's recompile limit. It runs them eagerly."""
    from torch._dynamo.utils import counters

    from recurlm.training.trainer import Progress, compile_blocks, periodic_eval

    configs = tiny("eval_n=4")
    tok = build_tokenizer(configs)
    model = build_model(configs.model)
    compile_blocks(model)
    torch._dynamo.reset()
    counters.clear()
    mixture = TaskMixture(configs.stages["curriculum"], tok, 0, configs.model.abacus)
    periodic_eval(model, tok, configs, mixture, "curriculum", 2, {"step": 0}, Progress(1, 0, None, False))
    assert counters["stats"]["unique_graphs"] == 0


def test_autocast_dtype_choice():
    from recurlm.training.trainer import autocast_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu, "flags : fpu avx2 avx512f avx512_bf16") == torch.bfloat16
    assert autocast_dtype("auto", cpu, "flags : fpu avx2 amx_bf16 amx_tile") == torch.bfloat16
    assert autocast_dtype("auto", cpu, "flags : fpu avx2 avx512f") is None  # bf16 would be emulated: fp32
    assert autocast_dtype("auto", cuda, "") == torch.bfloat16
    assert autocast_dtype("bf16", cpu, "flags : fpu") == torch.bfloat16
    assert autocast_dtype("fp32", cuda, "avx512_bf16") is None


def test_loss_all_trains_on_the_prompt_too():
    tok = Tokenizer.char("0123456789+=", "pad")
    for loss in ("completion", "all"):
        stage = tiny(f"stage.curriculum.loss={loss}", "stage.curriculum.max_difficulty=1").stages["curriculum"]
        x, y, _ = TaskMixture(stage, tok, seed=0).batch(8, 0, 0, 0, 1)
        # 'A+B=' then the sum and the end token: the prompt's next tokens '+', 'B', '=' are targets with 'all' only
        if loss == "all":
            assert torch.equal(y[:, :3], x[:, 1:4])
        else:
            assert (y[:, :3] == -1).all()
        assert (y[:, 3] >= 0).all()


def test_lr_scale_scales_every_learning_rate(tmp_path):
    train(tiny("stage.curriculum.lr_scale=0.5", "stage.curriculum.steps=6"), tmp_path / "half")
    rows = [json.loads(line) for line in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    assert len(steps) == 6 and all(row["lr"] == pytest.approx(0.01 * 0.5 * row["lr_factor"]) for row in steps)
    init, _ = train(tiny(), tmp_path / "init", stop_after=0)  # the seed's initial weights
    frozen, _ = train(tiny("stage.curriculum.lr_scale=0", "stage.curriculum.steps=3", "optimizer=muon"), tmp_path / "z")
    assert all(torch.equal(a, b) for a, b in zip(init.state_dict().values(), frozen.state_dict().values(), strict=True))


def test_grad_clip_bounds_the_gradient_the_optimizer_sees(tmp_path, monkeypatch):
    seen = []
    real = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    for clip in (0.01, 0.0):
        seen.clear()
        out = tmp_path / f"clip{clip}"
        train(tiny(f"grad_clip={clip}", "optimizer=adamw", "stage.curriculum.steps=4", "eval_every=0"), out)
        logged = [json.loads(line)["grad_norm"] for line in (out / "metrics.jsonl").read_text().splitlines()[:4]]
        assert all(n > 0.01 for n in logged)  # the gradients before clipping
        if clip:
            assert all(n <= clip * 1.0001 for n in seen)
        else:
            assert seen == pytest.approx(logged, rel=1e-5)


def test_resume_is_decided_by_the_architecture_alone(tmp_path):
    train(tiny(), tmp_path / "run", stop_after=3)
    changed = tiny("inference.exit=kl:0.01", "inference.recurrences=8", "recurrence.mean=4", "stage.curriculum.steps=5")
    _, state = train(changed, tmp_path / "run", resume=True)
    assert state["step"] == 5
    assert load_checkpoint(tmp_path / "run", "meta")[2].inference.exit == "kl:0.01"  # recorded for later use
    with pytest.raises(UserError, match="model.n_head"):
        train(tiny("n_head=4"), tmp_path / "run", resume=True)


def test_validation_ignores_the_deployment_exit(tmp_path, monkeypatch):
    """Periodic validation (which drives the curriculum) runs its own explicit policy: no adaptive exit, the
    inference r, budget and warm start."""
    import recurlm.training.trainer as trainer

    used = []
    real = trainer.evaluate

    def spy(model, tok, examples, policy, *args, **kwargs):
        used.append(policy)
        return real(model, tok, examples, policy, *args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", spy)
    train(tiny("inference.exit=latent:1e9", "inference.warm_start=true", "inference.kv_budget=2"), tmp_path / "r")
    assert used and {(p.exit, p.recurrences, p.kv_budget, p.warm_start, p.temperature) for p in used} == {
        ("none", 5, 2, True, 0.0)
    }


def test_checkpoints_from_before_the_policy_split_still_load(tmp_path):
    """config.json used to hold the schedule and the inference policy in [model] (the README's rrslm run)."""
    from recurlm.inference.engine import Engine

    model, _ = train(tiny(), tmp_path / "run", stop_after=2)
    path = tmp_path / "run" / "checkpoint" / "config.json"
    raw = json.loads(path.read_text())
    old = {**raw.pop("model"), "train_recur": "fixed", "recur_mean": 5.0, "recur_sigma": 0.5, "recur_max": 5}
    old |= {"bptt_k": 0, "kv_budget": 1, "warm_start": False, "exit": "latent:0.01", "exit_min_steps": 1}
    raw.pop("recurrence"), raw.pop("inference")
    path.write_text(json.dumps({"model": old, **raw}))
    loaded, tok, configs = load_checkpoint(tmp_path / "run")
    assert configs.recurrence.mean == 5.0 and configs.inference.exit == "latent:0.01"
    assert configs.inference.recurrences == 5
    prompt = [tok.encode("12+34=")]
    engine = Engine(loaded, tok.digit_ids)
    assert torch.equal(
        engine.start(prompt, configs.inference)[1],
        Engine(model, tok.digit_ids).start(prompt, configs.inference)[1],
    )
    _, state = train(tiny("stage.curriculum.steps=4"), tmp_path / "run", resume=True)
    assert state["step"] == 4


def test_stage_tasks_must_be_able_to_generate_training_data(tmp_path, capsys):
    from recurlm.cli import main

    small = ["d_model=32", "n_head=2", "mlp_hidden=64", "batch_size=4", "eval_n=2", "stage.sft.steps=3"]
    (tmp_path / "mmlu.csv").write_text('"2+2=?",3,4,5,6,B\n')
    for task in ("humaneval", f"mmlu:{tmp_path / 'mmlu.csv'}"):
        with pytest.raises(SystemExit):
            main(
                ["train", "--preset", "miniaxion-0.9m", *sum([["--set", s] for s in small], []), "--out"]
                + [str(tmp_path / "bad"), "--set", f"stage.sft.tasks={task}"]
            )
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot generate training data" in err
    gym = load_config("miniaxion-0.9m", overrides=[*small, "stage.sft.tasks=reasoning_gym:basic_arithmetic"])
    _, state = train(gym, tmp_path / "gym")
    assert state["step"] == 3 and all(torch.isfinite(torch.tensor(losses(tmp_path / "gym"))))


def test_length_buckets_cut_padding_and_keep_every_example_as_likely():
    from recurlm.checkpoint import build_tokenizer
    from recurlm.training.data import encode_example

    tok = build_tokenizer(load_config("miniaxion-0.9m"))  # bytes only: enough to measure lengths
    plain = TaskMixture(load_config("miniaxion-0.9m", overrides=["stage.sft.buckets=1"]).stages["sft"], tok, 0)
    bucketed = TaskMixture(load_config("miniaxion-0.9m", overrides=["stage.sft.buckets=4"]).stages["sft"], tok, 0)

    def filled(mix):  # the share of batch positions holding real tokens, not padding
        xs = [mix.batch(16, step, 0, 0, None)[0] for step in range(20)]
        return sum(int((x != tok.eos_id).sum()) for x in xs) / sum(x.numel() for x in xs)

    assert filled(bucketed) > 1.3 * filled(plain)
    x, _, _ = bucketed.batch(16, 3, 0, 0, None)
    assert torch.equal(x, bucketed.batch(16, 3, 0, 0, None)[0])  # deterministic, as exact resume needs
    # the batch is one of the 4 length groups the 64 drawn examples are cut into: the groups partition the draw,
    # so every drawn example is trained on with probability 1/4
    lengths = sorted(len(encode_example(tok, ex)[0]) - 1 for ex in bucketed.examples(64, 3, 0, 0, None))
    got = sorted(int(n) for n in (x != tok.eos_id).sum(dim=1))
    assert got in [lengths[g * 16 : (g + 1) * 16] for g in range(4)]


def test_task_weights_set_each_tasks_share_of_the_mixture():
    from recurlm.checkpoint import build_tokenizer

    configs = load_config("miniaxion-0.9m", overrides=["stage.sft.tasks=even_odd:3,comparison"])
    mix = TaskMixture(configs.stages["sft"], build_tokenizer(configs), seed=0)
    names = [ex.task for step in range(50) for ex in mix.examples(40, step, 0, 0, None)]
    assert 0.72 < names.count("even_odd") / len(names) < 0.78
    for bad in ("even_odd:0", "even_odd:-1"):
        with pytest.raises(UserError, match="task weight"):
            TaskMixture(load_config("miniaxion-0.9m", overrides=[f"stage.sft.tasks={bad}"]).stages["sft"], None, 0)


def test_rows_longer_than_the_context_train_on_their_beginning():
    from recurlm.checkpoint import build_tokenizer

    configs = load_config("miniaxion-0.9m", overrides=["stage.sft.tasks=sorting"])
    tok, stage = build_tokenizer(configs), configs.stages["sft"]
    full_x, full_y, _ = TaskMixture(stage, tok, seed=0).batch(8, 0, 0, 0, None)
    x, y, _ = TaskMixture(stage, tok, seed=0, context=24).batch(8, 0, 0, 0, None)
    assert full_x.size(1) > 24 and x.size(1) == 24
    assert torch.equal(x, full_x[:, :24]) and torch.equal(y, full_y[:, :24])


def test_mixed_lengths_shape_training_data_only():
    from recurlm.tasks.runs import stage_tasks, task_from_configs

    def operand_lengths(configs):
        mixture = TaskMixture(configs.stages["train"], build_tokenizer(configs), 0)
        return [tuple(map(len, ex.prompt[:-1].split("+"))) for ex in mixture.examples(400, 0, 0, 0, None)]

    configs = load_config("addition-length", overrides=["stage.train.mixed_lengths=true"])
    lengths = operand_lengths(configs)
    assert all(max(pair) >= 1 and all(1 <= n <= 10 for n in pair) for pair in lengths)
    assert sum(a != b for a, b in lengths) > 120 and sum(a < b for a, b in lengths) > 50  # either side shorter
    assert sum(a == b for a, b in lengths) > 150  # and half of them of equal lengths, carries into a new digit
    evaluated = task_from_configs("addition", configs)  # evaluation keeps the task's definition: equal lengths
    assert not evaluated.mixed_lengths and stage_tasks(configs.stages["train"], training=True)[0].mixed_lengths
    assert all(len(set(map(len, ex.prompt[:-1].split("+")))) == 1 for ex in evaluated.generate("test", 50))
    lengths = operand_lengths(load_config("addition-length", overrides=["stage.train.mixed_share=0.9"]))
    assert sum(a != b for a, b in lengths) > 210  # 0.9 x 0.71 of them (d = 1 and a shorter operand of d are equal)
    with pytest.raises(UserError, match="mixed_share"):
        load_config("addition-length", overrides=["stage.train.mixed_share=1.5"])
    # mixed_short: stretches where only one operand has digits for 7-9 columns, 4% of the sums (17), grow to 14% (57)
    for short, bar in ((0.0, lambda n: n < 30), (1.0, lambda n: n > 45)):
        configs = load_config("addition-length", overrides=[f"stage.train.mixed_short={short}"])
        assert bar(sum(abs(a - b) >= 7 for a, b in operand_lengths(configs)))
    with pytest.raises(UserError, match="mixed_short"):
        load_config("addition-length", overrides=["stage.train.mixed_short=-0.1"])


def test_abacus_offsets_shift_each_examples_digit_ids_together_within_the_table():
    from recurlm.training.data import offset

    rng = random.Random(0)
    digits = [3, 2, 1, 0, 2, 1, 0, 1, 2, 3, 4]  # '123+45=' then a reversed 4-digit sum
    shifted = [offset(digits, 48, rng, n_prompt=7) for _ in range(200)]
    ks = {s[0] - 3 for s in shifted}
    for s in shifted:
        k = s[0] - 3
        expected = [d + k if d else 0 for d in digits]
        expected[6] = k  # '=' is significance 0, shifted with the rest; '+' stays 0
        assert s == expected and max(s) <= 48  # one k per example
    assert min(ks) == 0 and max(ks) > 40  # ids far past the example's own length are trained
    configs = load_config("rrslm-addition", overrides=["stage.curriculum.abacus_offset=true"])
    stage, tok = configs.stages["curriculum"], build_tokenizer(configs)
    _, _, plain = TaskMixture(configs.stages["curriculum"], tok, 0, abacus=4).batch(8, 0, 0, 0, 3)
    stage.abacus_offset = False
    _, _, fixed = TaskMixture(stage, tok, 0, abacus=4).batch(8, 0, 0, 0, 3)
    assert plain.max() <= 4 and not torch.equal(plain, fixed) and bool((plain[fixed > 0] > 0).all())


def test_operand_ids_ride_with_significance_through_offsets():
    """model.abacus_operands: each prompt digit's id also carries its number's order (times OPERAND_STRIDE); the
    random offset shifts the significance and leaves the order, the answer's digits have none."""
    from recurlm.text.tokenizer import OPERAND_STRIDE

    configs = load_config("addition-length", overrides=["model.abacus_operands=2"])
    stage, tok = configs.stages["train"], build_tokenizer(configs)
    x, _, pos = TaskMixture(stage, tok, 0, 110, operands=2).batch(16, 0, 0, 0, None)
    _, _, plain = TaskMixture(stage, tok, 0, 110).batch(16, 0, 0, 0, None)
    assert torch.equal(pos % OPERAND_STRIDE, plain)  # the same draws and offsets, significance unchanged
    (plus, equals), bos = (tok.encode(c)[-1] for c in "+="), tok.bos_ids[0]
    for row, ids in zip(x.tolist(), (pos // OPERAND_STRIDE).tolist(), strict=True):
        number = 0
        for t, (token, order) in enumerate(zip(row, ids, strict=True)):
            if token == bos:
                number = 1
            elif token == equals:
                number = 0  # the answer, written after '=', is no operand
            elif token == plus:
                number = 2
            want = number if token in tok.digit_ids else 0
            assert order == want, (t, row)
    assert (pos // OPERAND_STRIDE == 1).any() and (pos // OPERAND_STRIDE == 2).any()
    with pytest.raises(UserError, match="abacus_operands needs model.abacus"):
        load_config("rrslm-addition", overrides=["model.abacus=0", "model.abacus_operands=2"])


def test_packed_rows_hold_several_examples_on_id_ranges_of_their_own():
    configs = load_config("addition-length", overrides=["stage.train.pack=3"])
    stage, tok = configs.stages["train"], build_tokenizer(configs)
    bos = tok.bos_ids[0]

    def id_ranges(x, pos):  # per row, the (lowest, highest) digit id of each of its sums
        for row, ids in zip(x, pos, strict=True):
            starts = (row == bos).nonzero().flatten().tolist() + [len(row)]
            yield [(min(s), max(s)) for s in (set(ids[a:b].tolist()) - {0} for a, b in itertools.pairwise(starts))]

    def gaps(x, pos):  # ids between each further sum's range and the nearest range before it in its row
        return [
            min(a - d if d < a else c - b for c, d in ranges[:i])
            for ranges in id_ranges(x, pos)
            for i, (a, b) in enumerate(ranges)
            if i
        ]

    x, y, pos = TaskMixture(stage, tok, 0, abacus=110).batch(64, 5, 0, 0, None)
    per_row = (x == bos).sum(1)
    assert per_row.min() == 1 and per_row.max() == 3 and 1.7 < per_row.float().mean() < 2.3
    assert int((y == tok.eos_id).sum()) == int(per_row.sum())  # every example's answer is trained, to its end
    for ranges in id_ranges(x, pos):
        assert all(b1 < a2 or b2 < a1 for (a1, b1), (a2, b2) in itertools.combinations(ranges, 2))
    assert max(gaps(x, pos)) > 30  # anywhere free: other sums' digits mostly far away
    stage.pack_near = 6
    x, _, pos = TaskMixture(stage, tok, 0, abacus=110).batch(64, 5, 0, 0, None)
    assert 0 < max(gaps(x, pos)) <= 6  # each further sum beside one before it
    with pytest.raises(UserError, match="pack_near"):
        load_config("addition-length", overrides=["stage.train.pack_near=-1"])
    stage.pack = 1
    x, _, _ = TaskMixture(stage, tok, 0, abacus=110).batch(64, 5, 0, 0, None)
    assert bool(((x == bos).sum(1) == 1).all())


def test_loop_objectives_change_training_and_still_learn(tmp_path):
    """recurrence.progressive and supervise_every reach the trainer: other losses (same data, same r; a progressive
    split of n = 0, k = r is the full loss itself), and the loss still falls."""
    short = ["stage.curriculum.steps=12", "eval_every=0"]
    runs = {"plain": [], "prog": ["recurrence.progressive=0.5"], "deep": ["recurrence.supervise_every=1"],
            "sampled": ["recurrence.progressive=0.5", "recurrence.progressive_sampled=true"]}  # fmt: skip
    for name, extra in runs.items():
        train(tiny(*short, *extra), tmp_path / name)
    plain = losses(tmp_path / "plain")
    for name in ("prog", "deep", "sampled"):
        got = losses(tmp_path / name)
        assert sum(a != b for a, b in zip(got, plain, strict=True)) >= 6 and got[-1] < 0.8 * got[0], name


def test_fp32_muon_takes_torchs_muon_step_and_state():
    # the same update as torch's Muon (which orthogonalises in bf16: agreement to bf16 precision), on a wide and a
    # tall matrix over three steps of momentum, and a state dict either optimiser loads
    from recurlm.training.optim import Fp32Muon

    torch.manual_seed(0)
    weights = [torch.randn(16, 40), torch.randn(40, 16)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]
    params = {k: [torch.nn.Parameter(w.clone()) for w in weights] for k in ("torch", "fp32")}
    opts = {"torch": torch.optim.Muon(params["torch"], lr=0.02, weight_decay=0.1),
            "fp32": Fp32Muon(params["fp32"], lr=0.02, weight_decay=0.1)}  # fmt: skip
    for step_grads in grads:
        for k, opt in opts.items():
            for p, g in zip(params[k], step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for ours, theirs, w in zip(params["fp32"], params["torch"], weights, strict=True):
        moved_ours, moved_theirs = (ours - w).detach(), (theirs - w).detach()
        assert torch.nn.functional.cosine_similarity(moved_ours.flatten(), moved_theirs.flatten(), dim=0) > 0.999
        assert torch.allclose(moved_ours, moved_theirs, atol=2e-3, rtol=0.02)
        assert not torch.allclose(moved_ours, torch.zeros_like(w))
    torch.optim.Muon(params["torch"]).load_state_dict(opts["fp32"].state_dict())
    Fp32Muon(params["fp32"]).load_state_dict(opts["torch"].state_dict())


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_core_lr_scale_slows_only_the_shared_parameters(tmp_path, optimizer):
    """train.core_lr_scale multiplies the rate of what every recurrence reuses (core blocks, injection, gate) and of
    nothing else: at a vanishing scale those stay put while the prelude, coda and embeddings learn."""
    init, _ = train(tiny(f"optimizer={optimizer}"), tmp_path / "init", stop_after=0)
    init = {k: v.clone() for k, v in init.state_dict().items()}
    model, _ = train(tiny(f"optimizer={optimizer}", "core_lr_scale=1e-9", "stage.curriculum.steps=4"), tmp_path / "s")
    moved = {k for k, v in model.state_dict().items() if not torch.allclose(v, init[k], atol=1e-6)}
    shared = {k for k in init if k.split(".")[0] in ("core", "inject", "gate", "gate_bias", "decay")}
    assert shared and not moved & shared
    assert {k.split(".")[0] for k in moved} >= {"prelude", "coda", "wte"}
    with pytest.raises(UserError, match="core_lr_scale"):
        tiny("core_lr_scale=0")


def test_a_stage_can_fix_r_and_switch_the_loop_on_late(tmp_path):
    """stage.NAME.recurrences = k runs every step of that stage at r = k; the stages after it draw r as before."""
    configs = tiny("recurrence.schedule=uniform", "recurrence.mean=4", "stage.curriculum.steps=6", "eval_every=0")
    configs.stages = {"early": replace(configs.stages["curriculum"], recurrences=1), **configs.stages}
    train(configs, tmp_path / "late")
    drawn = [sample_recurrences(configs.recurrence, configs.train.seed, step) for step in range(6, 12)]
    assert logged(tmp_path / "late", "r") == [1] * 6 + drawn and len(set(drawn)) > 1
    with pytest.raises(UserError, match="recurrences"):
        tiny("stage.curriculum.recurrences=-1")


def test_data_seed_sets_the_data_and_seed_the_initialisation(tmp_path):
    """train.data_seed draws the batches (and trains the tokenizer) on a stream of its own and leaves the
    initialisation to seed; data_seed = seed is the default's run exactly."""

    def first_loss(*extra):
        out = tmp_path / ("step-" + "-".join(extra))
        train(tiny(*extra), out, stop_after=1)
        return logged(out, "loss")

    def initial_weights(*extra):
        model, _ = train(tiny(*extra), tmp_path / ("init-" + "-".join(extra)), stop_after=0)
        return model.state_dict()

    loss, weights = first_loss("seed=0"), initial_weights("seed=0")
    assert first_loss("seed=0", "data_seed=0") == loss
    assert first_loss("seed=0", "data_seed=1") != loss  # the same weights (below), other batches
    other = initial_weights("seed=0", "data_seed=1")
    assert all(torch.equal(v, other[k]) for k, v in weights.items())
    assert not torch.equal(initial_weights("seed=1", "data_seed=0")["wte.weight"], weights["wte.weight"])
    with pytest.raises(UserError, match="data_seed"):
        tiny("data_seed=-2")


def test_exit_gate_trains_with_the_network_then_alone(tmp_path):
    """model.exit_gate: the expected-loss objective trains every part and the loss goes down; a stage with
    `exit_gate = only` (Ouro's second stage) changes the gate's two parameters and nothing else, one with `off`
    everything but the gate."""
    model, _ = train(tiny("exit_gate=true"), tmp_path / "joint")
    assert losses(tmp_path / "joint")[-1] < 0.6 * losses(tmp_path / "joint")[0]
    init, _ = train(tiny("exit_gate=true"), tmp_path / "init", stop_after=0)
    init = {k: v.clone() for k, v in init.state_dict().items()}
    alone, _ = train(tiny("exit_gate=true", "stage.curriculum.exit_gate=only", "stage.curriculum.steps=4"),
                     tmp_path / "alone")  # fmt: skip
    moved = {k for k, v in alone.state_dict().items() if not torch.equal(v, init[k])}
    assert moved == {"exit_gate.weight", "exit_gate.bias"}
    off, _ = train(tiny("exit_gate=true", "stage.curriculum.exit_gate=off", "stage.curriculum.steps=4"), tmp_path / "o")
    moved = {k for k, v in off.state_dict().items() if not torch.equal(v, init[k])}
    assert "exit_gate.weight" not in moved and {"core.0.attn.c_q.weight", "wte.weight"} <= moved
    for bad, message in ((["stage.curriculum.exit_gate=only"], "exit_gate"),
                         (["stage.curriculum.exit_gate=x"], "joint"),
                         (["exit_gate=true", "supervise_every=1"], "supervise_every"),
                         (["n_core=0", "exit_gate=true"], "looped core")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            tiny(*bad)


def test_fixed_abacus_ids_stay_orthogonal_codes_while_the_rest_learns(tmp_path):
    """model.abacus_fixed: the digit-significance table starts as orthogonal rows of norm sqrt(d) and no optimiser
    moves it; the learned table (the default) moves."""
    for fixed in (True, False):
        init, _ = train(tiny("abacus=8", f"abacus_fixed={fixed}"), tmp_path / f"init{fixed}", stop_after=0)
        start = init.abacus.weight.detach().clone()
        model, _ = train(tiny("abacus=8", f"abacus_fixed={fixed}", "stage.curriculum.steps=6"), tmp_path / f"{fixed}")
        assert torch.equal(model.abacus.weight, start) == fixed
        assert not torch.equal(model.wte.weight, init.wte.weight)
        if fixed:
            assert torch.allclose(start @ start.T, 32 * torch.eye(9), atol=1e-4)  # d_model = 32
