import json
import time

import pytest

from recurlm.errors import UserError
from recurlm.tasks import get_task, read_jsonl, split_of, write_jsonl
from recurlm.tasks.sandbox import run_python

ARC_ROW = {
    "id": "q1",
    "question": {
        "stem": "Which is a mammal?",
        "choices": [
            {"label": "A", "text": "shark"},
            {"label": "B", "text": "whale"},
            {"label": "C", "text": "trout"},
            {"label": "D", "text": "squid"},
        ],
    },
    "answerKey": "B",
}


def test_arc(tmp_path):
    path = tmp_path / "ARC-Easy-Test.jsonl"
    path.write_text(json.dumps(ARC_ROW) + "\n" + json.dumps({**ARC_ROW, "answerKey": "D"}) + "\n")
    task = get_task(f"arc_easy:{path}")
    ex = task.generate("test", 10)
    assert len(ex) == 2 and ex[0].answer == "B" and ex[0].prompt.endswith("D. squid\nAnswer:")
    assert task.score(ex[0], " B") == 1.0 and task.score(ex[0], "(B) whale") == 1.0 and task.score(ex[0], "A") == 0
    path.write_text(json.dumps(ARC_ROW) + '\n{"question": {"stem": "x"}}\n')
    with pytest.raises(UserError, match=":2: not an ARC example"):
        get_task(f"arc_challenge:{path}").generate("test", 10)


def test_mmlu_dir_and_errors(tmp_path):
    (tmp_path / "astronomy_test.csv").write_text('"What orbits Earth?",Moon,Mars,Sun,Venus,A\n')
    (tmp_path / "math_test.csv").write_text('"2+2=?",3,4,5,6,B\n"1+1=?",2,3,4,5,A\n')
    ex = get_task(f"mmlu:{tmp_path}").generate("test", 10)
    assert [e.answer for e in ex] == ["A", "B", "A"] and "B. Mars" in ex[0].prompt
    (tmp_path / "bad_test.csv").write_text("q,a,b,c\n")
    with pytest.raises(UserError, match="bad_test.csv:1"):
        get_task(f"mmlu:{tmp_path}").generate("test", 10)
    with pytest.raises(UserError, match="needs a file"):
        get_task("mmlu")
    with pytest.raises(UserError, match="not found"):
        get_task("mmlu:/nonexistent/x.csv")


def test_gsm8k(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(
        json.dumps(
            {
                "question": "Tom has 3 apples and buys 1,200 more. How many?",
                "answer": "3 + 1200 = <<3+1200=1203>>1203\n#### 1,203",
            }
        )
        + "\n"
    )
    task = get_task(f"gsm8k:{path}")
    (ex,) = task.generate("test", 5)
    assert ex.answer == "1203" and task.score(ex, ex.completion) == 1.0
    assert task.score(ex, "So #### 1203") == 1.0 and task.score(ex, "#### 1202") == 0.0
    assert task.score(ex, "He has 3 + 1200 = 1203 apples.") == 0.0  # nanochat's rule: no '#### N', no answer
    path.write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(UserError, match=":1:"):
        get_task(f"gsm8k:{path}").generate("test", 5)


def test_humaneval_canonical_passes_and_wrong_fails():
    task = get_task("humaneval")
    examples = task.generate("test", 3)
    assert len(task.generate("test", 1000)) == 164
    for ex in examples:
        assert task.score(ex, ex.completion) == 1.0
        assert task.score(ex, "    return None\n") == 0.0


def test_sandbox_never_hangs_and_has_no_network(tmp_path):
    t0 = time.perf_counter()
    assert run_python("while True:\n    pass\n", timeout=1.0) == (False, "timed out")
    assert time.perf_counter() - t0 < 5
    ok, why = run_python(
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'while True: pass'])\nwhile True:\n    pass\n",
        timeout=1.0,
    )
    assert not ok and why == "timed out"
    ok, why = run_python("import socket\nsocket.create_connection(('127.0.0.1', 80))\n")
    assert not ok and "network access is disabled" in why
    ok, why = run_python("x = bytearray(4 * 1024**3)\n", memory_mb=256)
    assert not ok and "MemoryError" in why
    ok, _ = run_python("import os\nopen('scratch.txt', 'w').write('x')\nassert os.listdir('.') != []\n")
    assert ok and not (tmp_path / "scratch.txt").exists()


def test_reasoning_gym_offline_with_config_and_disjoint_splits():
    task = get_task("reasoning_gym:basic_arithmetic:min_terms=2,max_terms=2")
    test = task.generate("test", 20, seed=0)
    train = task.generate("train", 100, seed=0)
    assert len(test) == 20 and all(split_of(ex.prompt) == "test" for ex in test)
    assert not {e.prompt for e in test} & {e.prompt for e in train}
    assert task.score(test[0], test[0].answer) == 1.0 and task.score(test[0], "nonsense") == 0.0
    with pytest.raises(UserError, match="reasoning_gym nope"):
        get_task("reasoning_gym:nope").generate("test", 2)


def test_reasoning_gym_examples_carry_what_scoring_needs(tmp_path):
    """Exported to JSONL and read back, an example still scores: its entry travels in `meta`."""
    task = get_task("reasoning_gym:basic_arithmetic:min_terms=2,max_terms=2")
    examples = task.generate("test", 5, seed=1)
    write_jsonl(examples, tmp_path / "gym.jsonl")
    back = read_jsonl(tmp_path / "gym.jsonl")
    assert back == examples and all(ex.meta for ex in back)
    fresh = get_task("reasoning_gym:basic_arithmetic:min_terms=2,max_terms=2")  # no memory of generating them
    assert [fresh.score(ex, ex.answer) for ex in back] == [1.0] * 5
    assert fresh.score(back[0], "nonsense") == 0.0


def test_reasoning_gym_draws_training_examples():
    import random

    task = get_task("reasoning_gym:basic_arithmetic")

    def draw(seed):
        rng = random.Random(seed)
        return [task.sample(rng, 1) for _ in range(20)]

    drawn = draw(0)
    assert len({ex.prompt for ex in drawn}) == 20 and all(task.score(ex, ex.answer) == 1.0 for ex in drawn)
    assert drawn == draw(0) and drawn != draw(1)
