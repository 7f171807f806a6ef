import json
import subprocess
import sys
from pathlib import Path

import pytest

from recurlm.cli import main


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    return exc.value.code, capsys.readouterr()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--preset", "nope", "--prompt", "1"], "unknown preset"),
        (["generate", "--preset", "rrslm-addition", "--set", "model.nope=1", "--prompt", "1"], "unknown config key"),
        (["generate", "--preset", "rrslm-addition", "--recurrences", "0", "--prompt", "1+1="], "recurrences must be"),
        (["generate", "--preset", "rrslm-addition", "--prompt", "1" * 40], "longer than the context"),
        (["generate", "--preset", "rrslm-addition", "--prompt", "1+1=", "--exit", "kl"], "needs a number"),
        (["generate", "--preset", "rrslm-addition", "--prompt", "1+1=", "--exit", "gate:0.5"], "no learned exit gate"),
        (["generate", "--preset", "rrslm-addition", "--prompt", "1+1=", "--no-cache", "--exit", "latent:0.1"], "cache"),
        (["generate", "--checkpoint", "/nonexistent", "--prompt", "x"], "checkpoint directory not found"),
        (["nope"], "invalid choice"),
        (["eval", "--checkpoint", "x", "--task", "addition", "--json", "/nonexistent/out.json"], "no directory"),
        (["eval", "--checkpoint", "x", "--task", "addition", "--samples", "."], "is a directory"),
        (["data", "export", "--task", "addition", "--out", "/nonexistent/x.jsonl"], "no directory"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, message):
    code, out = run_cli(capsys, *argv)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: ")


def test_file_system_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")  # a run directory under a file cannot be made
    code, out = run_cli(capsys, "train", "--preset", "rrslm-addition", "--out", str(tmp_path / "file" / "run"))
    lines = out.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: Not a directory")


def test_no_traceback_from_the_real_command():
    proc = subprocess.run(
        [sys.executable, "-m", "recurlm.cli", "generate", "--preset", "nope", "--prompt", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_presets_json(capsys):
    main(["presets", "--json"])
    rows = {row["preset"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["nanochat-d20"]["unique_params"] == 560_988_160
    assert rows["recursive-nanochat-d20"]["effective_depth"] == 20
    assert rows["recursive-nanochat-d20"]["flops_per_token"] > rows["recursive-nanochat-d20"]["params_per_token"] * 2


def shown_steps(err: str) -> list[str]:
    """--show-steps' table: one line per token (the stop token's last), the recurrences behind it at the end."""
    return [line.split()[-1] for line in err.split("recurrences per token:\n")[1].splitlines() if line[:1] == " "]


GENERATE = ["generate", "--preset", "rrslm-addition", "--seed", "1", "--prompt", "12+34=", "--max-new-tokens", "6"]


def test_generate_from_random_preset(capsys):
    main([*GENERATE, "--show-steps", "--exit", "latent:1e9", "--recurrences", "5"])
    out = capsys.readouterr()
    text = out.out.strip()
    assert 1 <= len(text) <= 6 and set(text) <= set("0123456789+=<|pad>")
    steps = shown_steps(out.err)
    assert steps[0] == "5" and set(steps[1:]) <= {"1"}
    assert len(steps) in (len(text), len(text) + 1)  # a line per token, and the stop token's when it stopped
    if len(text) == 6:  # a random model runs to its budget, and generate says so
        assert "[stopped at the 6-token budget" in out.err
    main([*GENERATE, "--show-steps", "--exit", "latent:1e9", "--recurrences", "5", "--prompt-exit"])
    assert set(shown_steps(capsys.readouterr().err)) == {"1"}  # the prompt pass too
    main([*GENERATE, "--exit", "none", "--kv-budget", "5"])
    again = capsys.readouterr().out
    main([*GENERATE, "--no-cache", "--exit", "none", "--kv-budget", "5"])
    assert capsys.readouterr().out == again  # warm start is off in this preset: kv-budget r equals no cache
    main([*GENERATE, "--exit", "none", "--kv-budget", "5", "--compile"])
    assert capsys.readouterr().out == again
    main([*GENERATE, "--exit", "none", "--kv-budget", "5", "--bf16"])
    assert set(capsys.readouterr().out.strip()) <= set("0123456789+=<|pad>")


def test_preset_default_exit_does_not_forbid_no_cache(capsys):
    """An exit the preset (or checkpoint) chose is a default, not a request: --no-cache just runs without it."""
    with_exit = [*GENERATE, "--set", "inference.exit=kl:0.01", "--kv-budget", "5", "--show-steps"]
    main([*with_exit, "--no-cache"])
    out = capsys.readouterr()
    assert set(shown_steps(out.err)) == {"5"}
    main([*GENERATE, "--kv-budget", "5", "--exit", "none"])
    assert capsys.readouterr().out == out.out
    code, out = run_cli(capsys, *with_exit, "--no-cache", "--exit", "kl:0.01")
    assert code == 2 and "needs the KV cache" in out.err


def test_generate_shows_sums_in_normal_digit_order(run_dir, capsys):
    args = ["generate", "--checkpoint", str(run_dir), "--prompt", "123+456=", "--max-new-tokens", "5"]
    main(args)
    shown = capsys.readouterr().out.strip()
    main([*args, "--raw"])
    raw = capsys.readouterr().out.strip()
    assert raw and shown == raw[::-1]  # the run writes sums least-significant digit first


def test_generate_asks_as_training_did(monkeypatch, capsys):
    """BOS first, as training and eval put it; a reasoning-suite run wraps the question in <INST>...</INST> itself,
    a typed '<INST>' is text (not the special token), --raw keeps the template and --no-template passes the prompt
    through."""
    import recurlm.cli.generate as generate
    from recurlm.checkpoint import build_tokenizer
    from recurlm.config import load_config
    from recurlm.inference.generation import Sequence

    seen = []

    def spy(ids, *args, **kwargs):
        seen.append(ids)
        return Sequence(ids, *args, **kwargs)

    monkeypatch.setattr(generate, "Sequence", spy)
    small = ["--set", "d_model=32", "--set", "n_head=2", "--max-new-tokens", "2"]
    for prompt in ("What is 2 + 2?", "<INST>What is 2 + 2?</INST>"):
        main(["generate", "--preset", "miniaxion-0.9m", *small, "--prompt", prompt])
    main(["generate", "--preset", "miniaxion-0.9m", *small, "--prompt", "What is 2 + 2?", "--raw"])
    main(["generate", "--preset", "miniaxion-0.9m", *small, "--prompt", "What is 2 + 2?", "--no-template"])
    capsys.readouterr()
    tok = build_tokenizer(load_config("miniaxion-0.9m"))
    bos = tok.token_id("<|bos|>")
    head, tail = tok.encode_markup("<INST>"), tok.encode_markup("</INST>")
    assert head == [tok.token_id("<INST>")] and tail == [tok.token_id("</INST>")]
    typed = tok.encode("<INST>What is 2 + 2?</INST>")
    assert tok.token_id("<INST>") not in typed and tok.decode(typed) == "<INST>What is 2 + 2?</INST>"
    question = tok.encode("What is 2 + 2?")
    wrapped = [bos, *head, *question, *tail]
    assert seen == [wrapped, [bos, *head, *typed, *tail], wrapped, [bos, *question]]


def test_ship_checkpoint_in_bf16_halves_the_weights_and_keeps_the_model(tmp_path):
    import torch
    from helpers import tiny_config

    from recurlm.checkpoint import build_tokenizer, load_checkpoint, save_checkpoint
    from recurlm.config import build_configs
    from recurlm.network.model import build_model

    configs = build_configs({"model": {**tiny_config(vocab_size=300).__dict__}})
    torch.manual_seed(0)
    model = build_model(configs.model)
    save_checkpoint(tmp_path / "run" / "checkpoint", model, build_tokenizer(configs), configs, {"x": 1}, {"step": 1})
    script = Path(__file__).parent.parent / "scripts" / "ship_checkpoint.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "ship"), "--bf16"],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    shipped = sorted(p.name for p in (tmp_path / "ship").iterdir())
    assert shipped == ["config.json", "model.safetensors", "tokenizer.json"]  # no optimizer or trainer state
    size = (tmp_path / "ship" / "model.safetensors").stat().st_size
    assert size < 0.55 * (tmp_path / "run" / "checkpoint" / "model.safetensors").stat().st_size
    loaded, _, _ = load_checkpoint(tmp_path / "ship")
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p.to(torch.bfloat16).float()), name
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "nope"), str(tmp_path / "x")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
