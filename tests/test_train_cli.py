"""`recurlm train` keeps your work: --resume continues the run as it was started, a directory without a checkpoint
is never overwritten, SIGTERM checkpoints as Ctrl-C does, and damaged checkpoint files are one line naming them."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import run_cli
from test_train import TINY

from recurlm.cli import main

START = ["train", "--preset", "rrslm-addition", *[a for kv in TINY for a in ("--set", kv)]]


def trainer_state(out: Path) -> dict:
    return json.loads((out / "checkpoint" / "trainer_state.json").read_text())


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 6-step run stopped after 3 (copy it before use)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    main([*START, "--set", "stage.curriculum.steps=6", "--out", str(out), "--stop-after", "3"])
    return out


def test_resume_continues_the_runs_own_settings_and_says_where(interrupted, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    capsys.readouterr()
    main(["train", "--out", str(out), "--resume"])  # no preset, no --set: the run's own 6 steps, not the preset's
    err = capsys.readouterr().err
    assert f"resuming {out} from step 3" in err and "done: 6 steps" in err
    assert trainer_state(out)["step"] == 6
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["model"]["d_model"] == 32 and saved["train"]["batch_size"] == 16  # the --set values it started with


def test_resume_with_set_changes_only_that(interrupted, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    main(["train", "--out", str(out), "--resume", "--set", "stage.curriculum.steps=8"])
    err = capsys.readouterr().err
    assert "resuming with stage.curriculum.steps=8 changed" in err and "done: 8 steps" in err
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["train"]["batch_size"] == 16 and saved["model"]["d_model"] == 32


def test_resume_refuses_a_directory_without_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    code, err = run_cli(capsys, *START, "--out", str(out), "--resume")
    assert code == 2 and "holds no checkpoint to resume" in err.err and len(err.err.strip().splitlines()) == 1
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'  # nothing deleted
    code, err = run_cli(capsys, *START, "--out", str(out))  # nor does a new run replace its log
    assert code == 2 and "no checkpoint" in err.err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'


@pytest.mark.parametrize(
    "name, damage",
    [
        ("model.safetensors", lambda b: b[: len(b) // 2]),  # truncated
        ("model.safetensors", lambda b: b"\xff" * 64 + b[64:]),  # a corrupt header
        ("config.json", lambda b: b[:-10]),
        ("tokenizer.json", lambda b: b[: len(b) // 3]),
    ],
)
def test_damaged_checkpoint_files_are_one_line_naming_the_file(run_dir, tmp_path, capsys, name, damage):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run_dir / "checkpoint", ckpt)
    (ckpt / name).write_bytes(damage((ckpt / name).read_bytes()))
    code, out = run_cli(capsys, "generate", "--checkpoint", str(ckpt), "--prompt", "1+1=")
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(ckpt / name) in lines[0], out.err


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_resuming_from_a_damaged_checkpoint_is_one_line_naming_the_file(interrupted, tmp_path, capsys, name):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    path = out / "checkpoint" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, err = run_cli(capsys, "train", "--out", str(out), "--resume")
    lines = err.err.strip().splitlines()
    assert code == 2 and str(path) in lines[-1] and lines[-1].startswith("error: "), err.err
    assert "Traceback" not in err.err


def test_sigterm_checkpoints_like_ctrl_c(tmp_path):
    out = tmp_path / "run"
    argv = [*START, "--set", "stage.curriculum.steps=100000", "--set", "ckpt_every=100000", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "recurlm.cli", *argv], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # until a few steps are logged
            metrics = out / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    step = trainer_state(out)["step"]
    assert step >= 3 and f"interrupted at step {step}: checkpoint saved" in err
    assert err.count("interrupted") == 1 and "Traceback" not in err


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_moves_from_the_first_step_below_an_intact_start_line(tmp_path, monkeypatch):
    import recurlm.training.trainer as trainer

    moved = []
    advance = trainer.Progress.advance
    monkeypatch.setattr(trainer.Progress, "advance", lambda self, step: moved.append(step) or advance(self, step))
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    main([*START, "--set", "log_every=10", "--set", "stage.curriculum.steps=12", "--out", str(tmp_path / "run")])
    assert moved == list(range(1, 13))  # every step, not every log_every
    first, *_ = screen.getvalue().split("\n")
    assert first.startswith("training ") and "for 12 steps" in first and "\r" not in first  # not drawn over
    assert "12/12" in screen.getvalue()
