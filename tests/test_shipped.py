"""The checkpoints shipped in the repository still load and still reason: a small fixed sample of every task, decoded
as users decode it (the checkpoint's own policy)."""

import random
from pathlib import Path

import pytest

from recurlm.checkpoint import load_checkpoint
from recurlm.evaluation.scoring import evaluate
from recurlm.tasks import Example, get_task
from recurlm.tasks.reasoning import SUITE, columns, trace

MINIAXION = Path(__file__).resolve().parent.parent / "checkpoints" / "miniaxion-0.9m"
pytestmark = pytest.mark.skipif(not MINIAXION.exists(), reason="no shipped MiniAxion checkpoint")

# bars a little under what the shipped weights score on these very samples (README), so that a change in loading,
# tokenising or decoding shows, while the last-digit noise of another CPU does not
MEAN_BAR, TASK_BAR = 0.85, 0.5  # measured: mean 0.91, lowest 0.625 (pattern: its held-out geometric sequence)


def test_shipped_miniaxion_answers_a_fixed_sample_of_every_task():
    model, tok, configs = load_checkpoint(MINIAXION)
    assert model.param_groups()["unique"] == 942_080  # the published shape
    accuracy, formats = {}, []
    for name in SUITE:
        task = get_task(name)
        res = evaluate(model, tok, task.generate("test", 8, seed=0), configs.inference, task.max_new_tokens)
        accuracy[name] = res["accuracy"]
        formats.append(res["format"])
    assert sum(accuracy.values()) / len(accuracy) >= MEAN_BAR and min(accuracy.values()) >= TASK_BAR, accuracy
    assert min(formats) == 1.0


def test_shipped_miniaxion_solves_word_problems_about_people_and_things_it_never_saw():
    """Names and objects from outside the generator's lists (and its made-up syllables)."""
    names = ["Bartholomew", "Xiaoling", "Oluwaseun", "Ingrid", "Kwame", "Federico", "Aiko", "Guadalupe"]
    objects = ["umbrellas", "kites", "mangoes", "paperclips", "dinosaurs", "violins", "pebbles", "walnuts"]
    rng = random.Random(0)
    examples = []
    for name, things in zip(names, objects, strict=True):
        a = rng.randint(0, 50)
        b, op = (rng.randint(0, 50), "+") if rng.random() < 0.5 else (rng.randint(0, a), "-")
        action = f"She gets {b} more." if op == "+" else f"She gives away {b}."
        steps, value = columns.signed(a, op, b)
        prompt = f"<INST>{name} has {a} {things}. {action} How many {things} does she have now?</INST>"
        examples.append(Example(prompt, str(value), trace([f"{a} {op} {b}", *steps], value), "word_problem"))
    model, tok, configs = load_checkpoint(MINIAXION)
    res = evaluate(model, tok, examples, configs.inference, get_task("word_problem").max_new_tokens)
    assert res["accuracy"] >= 0.5, res["accuracy"]  # measured 0.625 here, 0.747 on 300 such problems (README)


def test_shipped_addition_length_adds_30_digit_numbers_after_training_on_10():
    model, tok, configs = load_checkpoint(MINIAXION.parent / "addition-length")
    task = get_task("addition", reverse=True, max_digits=10)  # scored in normal digit order
    examples = task.generate("test", 20, seed=0, difficulty=30)
    res = evaluate(model, tok, examples, configs.inference, 33, task.score)
    assert res["accuracy"] >= 0.85, res["accuracy"]  # 0.945 on 200 such problems
