import itertools

import pytest
import torch
from helpers import policy, tiny_model

from recurlm.config import build_configs
from recurlm.evaluation.metrics import centred_mean, chatcore
from recurlm.evaluation.scoring import evaluate
from recurlm.inference.engine import Engine
from recurlm.tasks import Example, Task, get_task
from recurlm.text.prompting import example_ids
from recurlm.text.tokenizer import Tokenizer

TOK = Tokenizer.char("0123456789+=ABCD?", specials="all")


def model_for(tok=TOK, **overrides):
    return tiny_model(vocab_size=tok.vocab_size, **overrides)


def test_chatcore_centres_on_chance():
    assert chatcore({"arc_easy": 0.25, "mmlu": 1.0, "gsm8k": 0.1}) == pytest.approx((0 + 1 + 0.1) / 3)
    assert chatcore({"addition": 0.9, "spelling_bee": 0.5}) == pytest.approx(0.5)  # non-ChatCORE tasks ignored
    assert chatcore({"addition": 0.9}) is None


def test_centred_mean_counts_every_task_from_its_chance():
    # even_odd is a coin toss (0.5 is guessing), addition and a --data file's rows are not
    assert centred_mean({"even_odd": 0.75, "addition": 0.5, "runs/x.jsonl": 0.2}) == pytest.approx(
        (0.5 + 0.5 + 0.2) / 3
    )
    assert centred_mean({"mmlu:/data/mmlu.csv": 0.25}) == 0.0
    assert centred_mean({}) is None


def test_multiple_choice_scores_the_letter_logits_in_one_forward():
    model = model_for()
    examples = [Example(f"{a}+{b}=?", "ABCD"[(a + b) % 4], choices=list("ABCD")) for a in range(3) for b in range(3)]
    res = evaluate(model, TOK, examples, policy(3), 8, batch_size=4)
    letters = [TOK.encode(c)[0] for c in "ABCD"]
    for ex, out in zip(examples, res["examples"], strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([example_ids(TOK, ex.prompt)]), 3)[0, -1]
        assert out["output"] == "ABCD"[int(logits[letters].argmax())]
        assert out["correct"] == float(out["output"] == ex.answer)
    assert res["mean_steps"] == 3 and res["accuracy"] == sum(e["correct"] for e in res["examples"]) / len(examples)


@pytest.mark.parametrize("exit", ["none", "kl:0.01", "latent:0.3"])
def test_batch_size_does_not_change_results(exit):
    """Prompts of different lengths, rows exiting at different steps and ending at different lengths (rows leave
    the batch as they end) decode exactly as one prompt at a time."""
    tok = Tokenizer.char("0123456789+=", specials="all")
    model = model_for(tok)
    examples = get_task("addition", max_digits=3).generate("val", 12, seed=1)
    one = evaluate(model, tok, examples, policy(4, exit=exit), 7, batch_size=1)
    many = evaluate(model, tok, examples, policy(4, exit=exit), 7, batch_size=5)
    assert [e["output"] for e in one["examples"]] == [e["output"] for e in many["examples"]]
    assert [e["steps"] for e in one["examples"]] == [e["steps"] for e in many["examples"]]
    assert one["accuracy"] == many["accuracy"] and one["mean_steps"] == many["mean_steps"]
    assert len({len(e["output"]) for e in one["examples"]}) > 1  # some rows did end before others


def sequence_logprob(model, prompt: list[int], continuation: list[int], r: int) -> float:
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, r)[0].float(), dim=-1)
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(continuation))


def test_beam_search_is_exact_when_the_beam_holds_every_prefix():
    model = model_for()
    V, r = TOK.vocab_size, 3
    prompts = [[1, 2, 3], [4, 5]]
    pol = policy(r, kv_budget=r)
    beam = Engine(model).beam_search(prompts, 2, V, pol)
    for prompt, got in zip(prompts, beam.tokens, strict=True):
        best = max(itertools.product(range(V), repeat=2), key=lambda c: sequence_logprob(model, prompt, list(c), r))
        assert got == list(best)
    greedy = Engine(model).generate(prompts, 5, pol)
    assert Engine(model).beam_search(prompts, 5, 1, pol).tokens == greedy.tokens


def test_beam_search_stops_and_counts_the_stop_pass():
    model = model_for()
    stop = TOK.eos_id
    with torch.no_grad():  # make the stop token likely after a few tokens
        model.lm_head.weight[stop] += 0.5 * model.lm_head.weight.mean(0)
    out = Engine(model).beam_search([[1, 2], [3]], 12, 3, policy(2), stop_tokens=[stop])
    for tokens, steps in zip(out.tokens, out.steps, strict=True):
        assert stop not in tokens
        assert len(steps) in (len(tokens), len(tokens) + 1) and set(steps) == {2}


def test_max_steps_caps_adaptive_exit_of_generated_tokens():
    model = model_for()
    capped = policy(6, exit="latent:0", max_steps=3)  # threshold 0 never fires: every token runs to the cap
    out = Engine(model).generate([[1, 2, 3]], 5, capped)
    assert out.steps[0] == [6, 3, 3, 3, 3]  # the prompt pass runs r, decoded tokens the cap
    assert Engine(model).generate([[1, 2, 3]], 5, capped.override(exit="none")).steps[0] == [6] * 5  # no exit: r


def test_generation_budget_is_the_tasks_not_the_answers_length(tmp_path):
    """A trace model must not be cut off at the reference answer's length: the budget comes from the task."""
    from recurlm.evaluation.scoring import file_sets
    from recurlm.tasks import write_jsonl

    def budget(examples, override=None):
        write_jsonl(examples, tmp_path / "set.jsonl")
        return file_sets(str(tmp_path / "set.jsonl"), build_configs({}), max_new_tokens=override)[0].max_new_tokens

    task = get_task("arithmetic")
    no_trace = [Example(ex.prompt, ex.answer, task="arithmetic") for ex in task.generate("val", 3)]
    longest = max(len(ex.completion) for ex in task.generate("val", 50))
    assert budget(no_trace) == task.max_new_tokens >= longest  # room for a whole trace in characters even
    assert get_task("addition", max_digits=3).max_new_tokens == 5  # the longest sum and the end token
    assert budget([Example("1+1=", "2")]) == Task.max_new_tokens
    assert budget([Example("1+1=", "2")], 9) == 9
    assert budget([Example("1+1=", "9" * 300)]) == 302  # a longer answer than the budget gets room


def test_data_files_are_scored_per_difficulty(tmp_path):
    from recurlm.evaluation.scoring import file_sets
    from recurlm.tasks import write_jsonl

    examples = get_task("addition", max_digits=3).generate("test", 30, seed=0)
    write_jsonl(examples, tmp_path / "set.jsonl")
    sets = file_sets(str(tmp_path / "set.jsonl"), build_configs({}), limit=2)
    assert [(s.difficulty, len(s.examples)) for s in sets] == [(1, 2), (2, 2), (3, 2)]
    assert all(ex.difficulty == s.difficulty for s in sets for ex in s.examples)


def test_a_split_without_problems_of_a_difficulty_gets_no_row():
    """One-digit even/odd has ten problems, none of them in the validation split: no set, rather than a 0.000 row."""
    from recurlm.evaluation.scoring import task_sets

    sets = task_sets(["even_odd"], build_configs({}), "val", 20)
    assert [s.difficulty for s in sets] == [2, 3] and all(s.examples for s in sets)
    assert not get_task("even_odd").generate("val", 20, difficulty=1)
