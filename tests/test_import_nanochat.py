"""`recurlm import nanochat` against checkpoints written by nanochat's own code and what that code computed with
them (../shared/reference/nanochat, described in its README)."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from recurlm.checkpoint import load_checkpoint
from recurlm.cli import main
from recurlm.errors import UserError
from recurlm.importers.nanochat import import_nanochat
from recurlm.inference.engine import Engine

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "nanochat"
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason="no nanochat reference checkpoints beside the project")
CHECKPOINTS = {"plain": "plain/chatsft_checkpoints/d3", "recursive": "recursive/chatsft_checkpoints/d4"}
KEYS = {"plain": ["plain"], "recursive": ["r1", "r2", "r4", "r8"]}


def expected(kind):
    return torch.load(REFERENCE / kind / "expected.pt", weights_only=True)


def depth(key):
    return 1 if key == "plain" else int(key[1:])


@pytest.fixture(scope="module", params=["plain", "recursive"])
def imported(request, tmp_path_factory):
    """Imported through the command line, then loaded as every recurlm command loads a checkpoint."""
    out = tmp_path_factory.mktemp("imported") / request.param
    main(["import", "nanochat", str(REFERENCE / CHECKPOINTS[request.param]), "--out", str(out)])
    return request.param, *load_checkpoint(out)


def test_logits_match_the_reference_at_every_position(imported):
    kind, model, _, _ = imported
    ref = expected(kind)
    for key in KEYS[kind]:
        for prompt, want in zip(ref["prompts"], ref["logits"][key], strict=True):
            with torch.no_grad():
                got = model(torch.tensor([prompt]), depth(key))[0]
            assert (got - want).abs().max() < 0.05, (key, (got - want).abs().max())


def test_greedy_decoding_matches_the_reference_engine(imported):
    """Up to the first pick the reference made by a margin under 0.1 (bf16 rotary tables can flip those)."""
    kind, model, tok, configs = imported
    ref = expected(kind)
    stops = [tok.token_id("<|assistant_end|>"), tok.token_id("<|bos|>")]
    for key in KEYS[kind]:
        policy = configs.inference.override(recurrences=depth(key), temperature=0.0)  # budget 1, warm start
        out = Engine(model).generate(ref["prompts"], 12, policy, stop_tokens=stops)
        for got, want, margins in zip(out.tokens, ref["greedy"][key], ref["greedy_margins"][key], strict=True):
            sure = next((i for i, m in enumerate(margins) if m < 0.1), len(want))
            assert got[:sure] == want[:sure], (key, got, want)


def test_tokenizer_gives_nanochats_ids(imported):
    kind, _, tok, _ = imported
    for text, ids in expected(kind)["encode"].items():
        assert tok.encode(text) == ids and tok.decode(ids) == text
    for special in ("<|bos|>", "<|user_start|>", "<|assistant_end|>", "<|python_start|>", "<|output_end|>"):
        assert len(tok.encode_markup(special)) == 1 and len(tok.encode(special)) > 1  # typed, it is text


def test_imported_config(imported):
    kind, model, tok, configs = imported
    cfg = configs.model
    assert (cfg.d_model, cfg.n_head, cfg.kv_heads, cfg.vocab_size, cfg.seq_len) == (128, 4, 2, 433, 64)
    assert (cfg.mlp, cfg.tie_embeddings, cfg.logit_softcap, tok.vocab_size) == ("relu2", False, 15.0, 433)
    if kind == "plain":
        assert (cfg.n_prelude, cfg.n_core, cfg.n_coda) == (3, 0, 0)
        assert not configs.inference.warm_start
    else:
        assert (cfg.n_prelude, cfg.n_core, cfg.n_coda, cfg.inject) == (1, 2, 1, "concat_linear")
        rec, inf = configs.recurrence, configs.inference
        assert (rec.schedule, rec.mean, rec.max, rec.bptt_k) == ("poisson_lognormal", 4.0, 16, 4)
        assert (inf.recurrences, inf.kv_budget, inf.warm_start) == (4, 1, True)


def copy_of(kind, tmp_path) -> Path:
    """A writable copy of a reference checkpoint tree; returns its checkpoint directory."""
    shutil.copytree(REFERENCE / kind, tmp_path / kind)
    for path in (tmp_path / kind).rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tmp_path / CHECKPOINTS[kind]


def run_import(capsys, *args):
    with pytest.raises(SystemExit) as stop:
        main(["import", "nanochat", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("error: ") and "\n" not in err
    return err


class Payload:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys):
    ckpt = copy_of("plain", tmp_path)
    payload = Payload()
    payload.marker = tmp_path / "ran"
    (tmp_path / "plain" / "tokenizer" / "tokenizer.pkl").write_bytes(pickle.dumps(payload))
    err = run_import(capsys, ckpt, "--out", tmp_path / "out")
    assert "refusing to load" in err and "system" in err
    assert not payload.marker.exists() and not (tmp_path / "out").exists()


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    ckpt = copy_of("plain", tmp_path)
    out = tmp_path / "out"
    assert "no step 7" in run_import(capsys, ckpt, "--step", 7, "--out", out)
    assert "no such checkpoint directory" in run_import(capsys, tmp_path / "nowhere", "--out", out)
    assert "no tokenizer" in run_import(capsys, ckpt, "--tokenizer", tmp_path, "--out", out)
    meta = ckpt / "meta_000650.json"
    config = json.loads(meta.read_text())
    config["model_config"]["n_embd"] = 64
    meta.write_text(json.dumps(config))
    assert "does not fit" in run_import(capsys, ckpt, "--out", out)
    config["model_config"].update(n_embd=128, vocab_size=300)
    meta.write_text(json.dumps(config))
    assert "the tokenizer has 433 tokens" in run_import(capsys, ckpt, "--out", out)
    meta.unlink()
    assert "has no meta_000650.json" in run_import(capsys, ckpt, "--out", out)
    assert not out.exists()


def test_a_second_import_into_the_same_place_is_refused_unless_forced(tmp_path, capsys):
    ckpt = REFERENCE / CHECKPOINTS["plain"]
    main(["import", "nanochat", str(ckpt), "--out", str(tmp_path / "out")])
    assert "exists" in run_import(capsys, ckpt, "--out", tmp_path / "out")
    main(["import", "nanochat", str(ckpt), "--out", str(tmp_path / "out"), "--force"])


def test_import_refuses_a_damaged_weights_file(tmp_path):
    ckpt = copy_of("recursive", tmp_path)
    (ckpt / "model_000650.pt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot load"):
        import_nanochat(ckpt)


def test_chat_rendering_gives_nanochats_ids_and_mask(imported):
    from recurlm.text.chat import parse_reply, render_conversation, render_prompt

    kind, _, tok, _ = imported
    ref = expected(kind)
    assert render_prompt(tok, ref["conversation"]["messages"][:-1]) == ref["chat_ids"]
    assert render_conversation(tok, ref["conversation_with_system"]["messages"]) == (ref["sft_ids"], ref["sft_mask"])
    if kind == "recursive":  # a reply with calculator calls: the forced outputs are not trained on
        gsm8k = ref["tasks"]["gsm8k"]
        assert render_conversation(tok, gsm8k["conversation"]["messages"]) == (gsm8k["train_ids"], gsm8k["train_mask"])
    reply = tok.encode("8") + [tok.token_id("<|assistant_end|>")] + tok.encode("junk")
    assert parse_reply(tok, reply) == "8"
    with pytest.raises(UserError, match="alternates"):
        render_conversation(tok, [{"role": "assistant", "content": "hi"}])


def scripted(monkeypatch, tok, texts: list[str]):
    """Make generation 'sample' each row's script (text with specials, padded with 'x' to one length, so that rows
    keep their places in the batch), then the stop token, whatever the logits."""
    import recurlm.inference.generation as generation

    scripts = [tok.encode_markup(t) for t in texts]
    scripts = [s + tok.encode("x") * (max(map(len, scripts)) - len(s)) for s in scripts]
    step = {"n": 0}

    def sample(logits, policies, gens):
        n = step["n"]
        step["n"] += 1
        rows = len(policies)
        return torch.tensor([s[n] if n < len(s) else tok.token_id("<|assistant_end|>") for s in scripts[:rows]])

    monkeypatch.setattr(generation, "sample_rows", sample)


def test_calculator_results_are_forced_into_the_row_that_called_it(tmp_path, monkeypatch):
    from recurlm.text.calculator import Calculator

    model, tok, configs = import_nanochat(REFERENCE / CHECKPOINTS["recursive"])
    prompt = [tok.token_id("<|bos|>"), *tok.encode("Hi")]
    marker = tmp_path / "ran"
    calls = [
        "<|python_start|>3*12<|python_end|>xxxxxxxxx",
        f"<|python_start|>__import__('os').system('touch {marker}')<|python_end|>yyyy",
        '<|python_start|>"strawberry".count("r")<|python_end|>zzzzzz',
    ]
    engine = Engine(model)
    scripted(monkeypatch, tok, calls)
    fed = []
    decode = engine.decode
    engine.decode = lambda state, tokens: fed.append(tokens.tolist()) or decode(state, tokens)
    out = engine.generate(
        [prompt] * 3,
        40,
        configs.inference,
        stop_tokens=[tok.token_id("<|assistant_end|>")],
        tool=Calculator.for_tokenizer(tok),
    )
    texts = [tok.decode(ids) for ids in out.tokens]
    # the model 'wants' x, but after the call its next four tokens are the tool's: <|output_start|>36<|output_end|>
    assert texts[0].startswith("<|python_start|>3*12<|python_end|><|output_start|>36<|output_end|>xxx")
    assert texts[2].startswith('<|python_start|>"strawberry".count("r")<|python_end|><|output_start|>3<|output_end|>')
    assert "<|output_start|>" not in texts[1] and not marker.exists()  # refused: nothing forced, nothing run
    assert tok.token_id("<|output_start|>") in [row[0] for row in fed]  # the forced tokens went through the model


@pytest.mark.parametrize(
    "expr, result",
    [("3*12", "36"), ("1,000 + 5", "1005"), ("7/2", "3.5"), ("-(2 - 5) * 4", "12"), ("'a,b,a'.count('a')", "2")],
)
def test_calculator_computes(expr, result):
    from recurlm.text.calculator import calculate

    assert calculate(expr) == result


@pytest.mark.parametrize(
    "expr",
    [
        "2**10",
        "__import__('os').system('true')",
        "open('x').read()",
        "x + 1",
        "1/0",
        "(1).__class__",
        "1+" * 200 + "1",
        "'ab'.count(x)",
        "print(1)",
        "[1, 2]",
    ],
)
def test_calculator_refuses_everything_else(expr):
    from recurlm.text.calculator import calculate

    assert calculate(expr) is None


def test_chat_evaluation_asks_as_nanochat_does(imported, tmp_path):
    """The prompt ids recurlm's eval feeds a chat model equal those of nanochat's chat evaluation, and GSM8K is scored
    as nanochat scores it."""
    from recurlm.tasks import get_task
    from recurlm.text.prompting import example_ids, example_question

    kind, _, tok, _ = imported
    if kind != "recursive":
        pytest.skip("the reference's task rows come with the recursive checkpoint")
    tasks = expected(kind)["tasks"]
    files = {name: tmp_path / f"{name}.jsonl" for name in tasks}
    for name, path in files.items():
        row = dict(tasks[name]["row"], task_id="HumanEval/0") if name == "humaneval" else tasks[name]["row"]
        path.write_text(json.dumps(row) + "\n")
    for name, task_name in [("arc", "arc_easy"), ("mmlu", "mmlu"), ("gsm8k", "gsm8k"), ("humaneval", "humaneval")]:
        (ex,) = get_task(f"{task_name}:{files[name]}").generate("test", 1)
        assert example_ids(tok, example_question(tok, ex)) == tasks[name]["prompt_ids"], name
    gsm8k = get_task(f"gsm8k:{files['gsm8k']}")
    (ex,) = gsm8k.generate("test", 1)
    for reply, score in tasks["gsm8k"]["scored"].items():
        assert gsm8k.score(ex, reply) == score, reply
    humaneval = get_task(f"humaneval:{files['humaneval']}")
    (ex,) = humaneval.generate("test", 1)
    reply = "Here it is:\n```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```"
    assert humaneval.score(ex, reply) == 1.0 and humaneval.score(ex, reply.replace("a + b", "a - b")) == 0.0
