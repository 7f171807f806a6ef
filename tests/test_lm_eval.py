"""lm-evaluation-harness's `recurlm` model, run through lm_eval's Python API on tasks defined in local YAML over
local JSONL (no hub): the log-likelihoods it reports are recurlm's own, and generation honours until/max_gen_toks."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager  # noqa: E402

from recurlm.checkpoint import build_tokenizer, load_checkpoint, save_checkpoint  # noqa: E402
from recurlm.config import load_config  # noqa: E402
from recurlm.evaluation.harness import RecurLM  # noqa: E402  (registers the model type)
from recurlm.network.model import build_model  # noqa: E402

QUESTIONS = [
    {"question": "Is 7 even or odd?", "choices": ["even", "odd"], "label": 1},
    {"question": "Which is larger: 12 or 21?", "choices": ["12", "21"], "label": 1},
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5"], "label": 1},
]
TASKS = {
    "toy_choice": """
task: toy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
""",
    "toy_generate": """
task: toy_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{choices[label]}}}}"
generation_kwargs:
  until: ["e"]
  max_gen_toks: 5
metric_list:
  - metric: exact_match
""",
}


def perturbed_checkpoint(path, preset: str, overrides: list[str], scale: float):
    """A small model of the preset, its weights moved off the identity blocks (so that scores differ), saved."""
    configs = load_config(preset, overrides=overrides)
    torch.manual_seed(0)
    model = build_model(configs.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    save_checkpoint(path, model, build_tokenizer(configs), configs)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    perturbed_checkpoint(root / "ck", "miniaxion-0.9m", ["d_model=32", "n_head=4", "mlp_hidden=48", "seq_len=64"], 0.1)
    return root / "ck"


def own_logprob(ck, context: str, continuation: str, r: int) -> float:
    """recurlm's own computation: BOS + context + continuation through the model at r, the continuation's log-probs."""
    model, tok, _ = load_checkpoint(ck)
    ctx, cont = [tok.token_id("<|bos|>")] + tok.encode(context), tok.encode(continuation)
    ids = ctx + cont
    with torch.no_grad():
        lp = F.log_softmax(model(torch.tensor([ids[:-1]]), r)[0], dim=-1)
    return sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_lm_eval_scores_with_recurlms_log_likelihoods_and_honours_until(checkpoint, tmp_path):
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    for name, yaml in TASKS.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.format(data=data))
    results = lm_eval.simple_evaluate(
        model="recurlm",
        model_args=f"checkpoint={checkpoint},recurrences=3",
        tasks=list(TASKS),
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
        batch_size=2,
    )
    samples = results["samples"]["toy_choice"]
    assert len(samples) == len(QUESTIONS)
    for s in samples:
        for (context, continuation), resp in zip(s["arguments"], s["resps"], strict=True):
            assert resp[0][0] == pytest.approx(own_logprob(checkpoint, context, continuation, 3), abs=1e-4)
    assert 0.0 <= results["results"]["toy_choice"]["acc,none"] <= 1.0

    model, tok, _ = load_checkpoint(checkpoint)
    for s in results["samples"]["toy_generate"]:
        text = s["resps"][0][0]
        assert "e" not in text and len(tok.encode(text)) <= 5


def test_rolling_log_likelihood_is_the_sum_over_the_text(checkpoint):
    lm = RecurLM(checkpoint=str(checkpoint), recurrences="2")

    class Req:
        args = ("The cat sat on the mat.",)

    got = lm.loglikelihood_rolling([Req()])[0]
    assert got == pytest.approx(own_logprob(checkpoint, "", "The cat sat on the mat.", 2), abs=1e-4)
    # a text longer than the context is scored window by window, every token once
    long = "abcdefghij" * 12
    model, tok, _ = load_checkpoint(checkpoint)
    assert len(tok.encode(long)) > 64

    class Long:
        args = (long,)

    assert lm.loglikelihood_rolling([Long()])[0] < got


def test_recurlm_lm_eval_is_lm_evals_command_line_with_the_model_registered(checkpoint, tmp_path, capsys):
    from recurlm.cli import main

    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tmp_path / "toy_choice.yaml").write_text(TASKS["toy_choice"].format(data=data))
    args = ["--model", "recurlm", "--model_args", f"checkpoint={checkpoint},recurrences=2", "--tasks", "toy_choice"]
    main(["lm-eval", *args, "--include_path", str(tmp_path), "--device", "cpu"])
    assert "toy_choice" in capsys.readouterr().out


def test_an_abacus_models_continuation_is_scored_as_generated_digits(tmp_path):
    """The continuation of '12+34=' is an answer: its digits get the significance ids decoding gives them (counted
    from the answer's first digit, the sum being reversed), not a prompt number's."""
    from recurlm.inference.engine import Engine

    small = ["d_model=32", "n_head=2", "mlp_hidden=48", "seq_len=32"]
    model = perturbed_checkpoint(tmp_path / "ck", "addition-length", small, 0.3)
    lm = RecurLM(checkpoint=str(tmp_path / "ck"), recurrences="2")
    tok = lm.tok
    context, continuation = lm.prefix + tok.encode("123+45="), tok.encode("861")
    ids = context + continuation
    x, digit_pos = Engine(model, tok.digit_ids).right_pad([ids[:-1]], [len(context)])
    k = model.cfg.abacus_shift  # the preset reads numbers at offset 1
    assert k == 1 and digit_pos[0, -2:].tolist() == [1 + k, 2 + k]  # '8', '6' of the answer: its 1st and 2nd digits
    with torch.no_grad():
        lp = F.log_softmax(model(x, 2, digit_pos=digit_pos)[0].float(), dim=-1)
    want = sum(float(lp[len(context) - 1 + i, t]) for i, t in enumerate(continuation))
    assert lm.score(context, continuation)[0] == pytest.approx(want, abs=1e-5)
