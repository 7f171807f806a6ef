import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recurlm.errors import UserError
from recurlm.tasks import extract_answer, get_task, read_jsonl, split_of, write_jsonl
from recurlm.tasks.reasoning import NAMES, THINGS, format_ok
from recurlm.text.chat import parse_reply, render_conversation, render_prompt
from recurlm.text.tokenizer import SPECIALS, Tokenizer
from recurlm.training.data import encode_example

SUITE = ["arithmetic", "two_step", "even_odd", "comparison", "pattern", "word_problem", "sorting", "spelling_bee"]


@pytest.mark.parametrize("name", ["addition", *SUITE])
def test_generators_are_deterministic_and_split_disjoint(name):
    task = get_task(name)
    a, b = task.generate("train", 50, seed=1), task.generate("train", 50, seed=1)
    assert a == b and a != task.generate("train", 50, seed=2)
    test = task.generate("test", 50, seed=1)
    assert test and all(split_of(ex.prompt) == "test" for ex in test)
    assert not {ex.prompt for ex in test} & {ex.prompt for ex in task.generate("train", 2000, seed=0)}
    assert len({ex.prompt for ex in test}) == len(test)
    levels = {ex.difficulty for ex in task.generate("val", 200)}
    assert levels <= set(task.difficulties) and len(levels) >= min(2, len(task.difficulties))


@pytest.mark.parametrize("name", SUITE)
def test_traces_are_well_formed_and_answers_extract(name):
    for ex in get_task(name).generate("train", 200, seed=3):
        assert ex.prompt.startswith("<INST>") and ex.prompt.endswith("</INST>")
        assert format_ok(ex.completion), ex.completion
        assert extract_answer(ex.completion) == ex.answer


def _eval(expr: str) -> int:
    assert re.fullmatch(r"[\d\s+\-*()]+", expr)
    return eval(expr)  # noqa: S307 -- digits and operators only, checked above


def test_answers_are_correct():
    for ex in get_task("arithmetic").generate("train", 300):
        assert int(ex.answer) == _eval(re.search(r"What is (.*)\?", ex.prompt).group(1))
    for ex in get_task("two_step").generate("train", 300):
        assert int(ex.answer) == _eval(re.search(r"What is (.*)\?", ex.prompt).group(1))
    for ex in get_task("comparison").generate("train", 300):
        a, b = map(int, re.findall(r"\d+", ex.prompt))
        assert a != b and int(ex.answer) == max(a, b)
    for ex in get_task("even_odd").generate("train", 300):
        n = int(re.search(r"\d+", ex.prompt).group())
        assert ex.answer == ("even" if n % 2 == 0 else "odd") and n <= 999
    for ex in get_task("sorting").generate("train", 300):
        values = list(map(int, ex.prompt.removesuffix("</INST>").split(": ")[1].split(", ")))
        assert 3 <= len(values) <= 6 and ex.answer == ", ".join(map(str, sorted(values)))
    for ex in get_task("pattern").generate("train", 300):
        t = list(map(int, re.findall(r"-?\d+", ex.prompt)))
        d, q = t[1] - t[0], (t[1] / t[0] if t[0] else None)
        assert int(ex.answer) == (t[3] + d if t[2] - t[1] == d else t[3] * q)
    for ex in get_task("word_problem").generate("train", 300):
        a, b = map(int, re.findall(r"\d+", ex.prompt))
        assert int(ex.answer) == (a - b if "away" in ex.prompt else a + b) and int(ex.answer) >= 0
    for ex in get_task("spelling_bee").generate("train", 300):
        letter, word = re.search(r"How many (\w) are in (\w+)\?", ex.prompt).groups()
        assert int(ex.answer) == word.count(letter.lower())
    assert len(NAMES) >= 20 and len(THINGS) >= 20


def test_addition_reverse_and_scoring():
    plain, rev = get_task("addition"), get_task("addition", reverse=True, max_digits=5)
    ex = rev.generate("test", 5, difficulty=5)[0]
    a, b = map(int, ex.prompt[:-1].split("+"))
    assert ex.answer == str(a + b) and ex.completion == str(a + b)[::-1] and rev.extract(ex.completion) == ex.answer
    assert plain.extract(" 579 ") == "579"
    assert all(len(x.prompt.split("+")[0]) == 3 for x in plain.generate("train", 20, difficulty=3))


def test_jsonl_round_trip(tmp_path):
    examples = get_task("sorting").generate("test", 20)
    write_jsonl(examples, tmp_path / "x.jsonl")
    assert read_jsonl(tmp_path / "x.jsonl") == examples
    with pytest.raises(UserError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="unknown task"):
        get_task("nope")


def test_char_tokenizer(tmp_path):
    tok = Tokenizer.char("0123456789+=", "pad")
    assert tok.vocab_size == 13 and tok.eos_id == tok.token_id("<|pad|>")
    ids = tok.encode_markup("12+345=<|pad|>")
    assert len(ids) == 8 and tok.decode(ids) == "12+345=<|pad|>"
    tok.save(tmp_path / "t.json")
    assert Tokenizer.load(tmp_path / "t.json").encode("9+9=") == tok.encode("9+9=")
    with pytest.raises(UserError, match="outside the tokenizer's alphabet"):
        tok.encode("1+a")
    with pytest.raises(UserError, match="outside the tokenizer's alphabet"):
        tok.encode("<|pad|>")  # typed text: a special token's spelling is characters, here not in the alphabet


@pytest.fixture(scope="module")
def bpe():
    texts = [ex.prompt + ex.completion for name in SUITE for ex in get_task(name).generate("train", 300)]
    return Tokenizer.bpe(texts, 2048)


def test_bpe_specials_are_single_tokens(bpe, tmp_path):
    assert 300 < bpe.vocab_size <= 2048
    for special in SPECIALS["all"]:
        assert len(bpe.encode_markup(special)) == 1
        assert bpe.token_id(special) not in bpe.encode(special)
    ex = get_task("arithmetic").generate("train", 1)[0]
    ids = bpe.encode(ex.prompt + ex.completion)
    assert len(ids) < len(ex.prompt + ex.completion) / 2  # merges learnt from the training text
    bpe.save(tmp_path / "b.json")
    assert Tokenizer.load(tmp_path / "b.json").encode("What is 2 + 2?") == bpe.encode("What is 2 + 2?")


def test_nanochat_specials_train_tasks_as_chat_turns():
    """specials = 'nanochat': a task's prompt becomes a user turn, its answer the assistant's, the loss (completion)
    on the assistant's tokens and its closing <|assistant_end|> only."""
    tok = Tokenizer.char("0123456789+=", specials="nanochat")
    ex = get_task("addition").generate("train", 1, difficulty=2)[0]
    ids, mask, _ = encode_example(tok, ex)
    user = [tok.token_id(t) for t in ("<|bos|>", "<|user_start|>")] + tok.encode(ex.prompt)
    reply = tok.encode(ex.target) + [tok.token_id("<|assistant_end|>")]
    assert ids == user + [tok.token_id("<|user_end|>"), tok.token_id("<|assistant_start|>")] + reply
    assert mask == [0] * (len(ids) - len(reply)) + [1] * len(reply)
    assert tok.stop_ids == [tok.token_id("<|assistant_end|>"), tok.token_id("<|bos|>")]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_chat_mask(bpe):
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    ids, mask = render_conversation(bpe, conv)
    assert len(ids) == len(mask)
    trained = bpe.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "Hello!<|end|>4<|end|>"
    prompt = render_prompt(bpe, conv[:2])
    assert bpe.decode(prompt).endswith("Hi<|end|><|assistant|>")
    assert parse_reply(bpe, bpe.encode_markup("Hello!<|end|>junk")) == "Hello!"
    with pytest.raises(UserError, match="no <|bos|>"):
        render_conversation(Tokenizer.char("0123456789+=", "pad"), conv)


@settings(max_examples=300, deadline=None)
@given(st.integers(-200, 999), st.sampled_from("+-"), st.integers(0, 999))
def test_column_arithmetic_is_right_and_speaks_the_trace_grammar(x, op, y):
    from recurlm.tasks import columns

    steps, value = columns.signed(x, op, y)
    assert value == (x + y if op == "+" else x - y)
    assert steps and all("<" not in s for s in steps)
    assert steps[-1].endswith(f"= {value}")
    for s in steps:  # every written equation holds
        left, _, right = s.rpartition(" = ")
        if re.fullmatch(r"-?\d+( [+\-*] \d+)+", left) and re.fullmatch(r"-?\d+", right):
            assert _eval(left.replace("- -", "+ ")) == int(right), s


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 999), st.integers(0, 9))
def test_column_multiplication(a, k):
    from recurlm.tasks import columns

    steps, value = columns.multiply(a, k)
    assert value == a * k and steps[-1].endswith(f"= {a * k}") and len(steps) == len(str(a)) + (a >= 10)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 12), st.integers(0, 12))
def test_times_table_counts_to_the_product(a, b):
    """Every count adds the smaller factor once, and there are as many counts as the larger factor, numbered up
    from 1 or down to 1."""
    from recurlm.tasks.reasoning import times

    n = max(a, b)
    for down, numbers in ((False, range(1, n + 1)), (True, range(n, 0, -1))):
        *counting, result = times(a, b, down)
        assert result == f"{a} * {b} = {a * b}"
        if counting:
            pairs = [item.split(": ") for item in counting[0].removeprefix(f"count by {min(a, b)}: ").split(", ")]
            assert [(int(k), int(v)) for k, v in pairs] == [(k, i * min(a, b)) for i, k in enumerate(numbers, 1)]


def test_split_digit_bpe_keeps_every_digit_a_token():
    texts = [ex.prompt + ex.completion for name in SUITE for ex in get_task(name).generate("train", 300)]
    tok = Tokenizer.bpe(texts, 2048, split_digits=True)
    for number in ("47", "907", "123456"):
        ids = tok.encode(f"Is {number} even or odd?")
        assert [tok.decode([i]) for i in ids if tok.decode([i]).strip().isdigit()] == list(number)
    merged = Tokenizer.bpe(texts, 2048)
    assert any(len(merged.decode([i]).strip()) > 1 and merged.decode([i]).strip().isdigit() for i in range(2048))


def test_word_problems_name_anyone_and_anything():
    examples = get_task("word_problem").generate("train", 600, seed=4)
    names = {ex.prompt.removeprefix("<INST>").split()[0] for ex in examples}
    listed = {n for n, _ in NAMES}
    assert len(names - listed) > 100 and len(names & listed) > 20  # made-up names beside the list's
    things = {re.search(r"\d+ (\w+)\.", ex.prompt).group(1) for ex in examples}
    assert len(things - set(THINGS)) > 100


def test_spelling_bee_asks_a_chat_model_the_bare_question_and_reads_its_hashes():
    task = get_task("spelling_bee")
    ex = task.generate("test", 1)[0]
    assert ex.prompt == f"<INST>{ex.meta['chat']}</INST>" and ex.meta["chat"].startswith("How many ")
    assert task.score(ex, f"Let me count. #### {ex.answer}") == 1.0 and task.score(ex, ex.target) == 1.0
    assert task.score(ex, f"#### {int(ex.answer) + 1}") == 0.0


def test_addition_draws_equal_and_unequal_lengths(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "scripts" / "addition_draws.py"
    for flag in ([], ["--unequal"]):
        cmd = [sys.executable, str(script), "--digits", "12", "--n", "300", "--seed", "5", "--out", str(tmp_path)]
        subprocess.run(cmd + flag, check=True, capture_output=True)
    equal = [json.loads(x) for x in (tmp_path / "d12.jsonl").read_text().splitlines()]
    unequal = [json.loads(x) for x in (tmp_path / "u12.jsonl").read_text().splitlines()]
    for rows, same in ((equal, True), (unequal, False)):
        assert len(rows) == 300
        for row in rows:
            a, b = row["prompt"].rstrip("=").split("+")
            assert int(row["answer"]) == int(a) + int(b) and max(len(a), len(b)) == 12
            assert (len(a) == len(b)) or not same
    lengths = {min(len(r["prompt"].split("+")[0]), len(r["prompt"].split("+")[1]) - 1) for r in unequal}
    assert lengths >= {1, 6, 11}  # the shorter operand takes every length
    assert any(len(r["prompt"].split("+")[0]) < 12 for r in unequal)  # and either side


def _shape(prompt: str) -> str:
    """A question's wording without its numbers and typing slips: what a frame looks like."""
    text = re.sub(r"-?\d+", "#", prompt.lower()).rstrip("?.</inst>").removeprefix("<inst>")
    return re.sub(r"\s*([+\-*=,])\s*", r"\1", text)


@pytest.mark.parametrize("wording", ["varied", "wide", "crossed"])
@pytest.mark.parametrize("name", SUITE[:-1])
def test_varied_wordings_ask_the_canonical_problem_and_keep_its_split(name, wording):
    import random

    fixed, varied = get_task(name), get_task(name, wording=wording)
    prompts = set()
    for i in range(300):
        canonical, other = fixed.sample(random.Random(i), 1 + i % 2), varied.sample(random.Random(i), 1 + i % 2)
        assert canonical.key is None and other.key in (None, canonical.prompt)
        assert (other.answer, other.completion) == (canonical.answer, canonical.completion)
        assert other.split == canonical.split
        prompts.add(other.prompt)
    assert len({_shape(p) for p in prompts}) >= 5  # several frames...
    questions = [p.removeprefix("<INST>").removesuffix("</INST>") for p in prompts]
    assert any(q == q.lower() and q != q.upper() for q in questions)  # ...and slips
    assert any(q[-1] not in "?." for q in questions)
    if name not in ("even_odd", "comparison", "word_problem"):  # those with operators or lists: written unspaced
        assert any(re.search(r"\d[+\-*=,]\S", q) for q in questions)
    train = varied.generate("train", 300, seed=1)
    assert all(split_of(ex.key or ex.prompt) == "train" for ex in train)
    assert sum(ex.key is not None for ex in train) > 200


@pytest.mark.parametrize("name", SUITE[:-1])
def test_held_out_wordings_share_no_frame_names_or_things_with_training(name):
    from recurlm.tasks.wording import HELD_OUT_NAMES, HELD_OUT_THINGS

    trained = {_shape(ex.prompt) for ex in get_task(name, wording="crossed").generate("train", 3000, seed=2)}
    held = get_task(name, wording="held_out").generate("test", 300, seed=2)
    assert held and all(ex.split == "test" and ex.key for ex in held)
    if name == "word_problem":  # who and what: only the held-out lists, none of which training draws
        names = {n for n, _ in HELD_OUT_NAMES}
        assert not names & {n for n, _ in NAMES} and not set(HELD_OUT_THINGS) & set(THINGS)
        assert all(any(n.lower() in ex.prompt.lower() for n in names) or "shelf" in ex.prompt.lower() or
                   ex.prompt.lower().startswith("<inst>out of") for ex in held)  # fmt: skip
        assert not any(n.lower() in p for p in trained for n in names)
        # the held-out frames' verbs
        verbs = r"\b(owns?|owned|holds?|starts with|is given|buys|adds|sold|broke|shelf|scoops|tosses|chewed|pile)\b"
        assert not any(re.search(verbs, p) for p in trained)
    else:
        assert not trained & {_shape(ex.prompt) for ex in held}


def test_stage_wording_shapes_training_only():
    from recurlm.config import StageConfig
    from recurlm.tasks.runs import stage_tasks

    stage = StageConfig(tasks="arithmetic,sorting", wording="varied", nonce_share=0.3)
    assert [(t.wording, t.shares["nonce_share"]) for t in stage_tasks(stage, training=True)] == [("varied", 0.3)] * 2
    assert [(t.wording, t.shares["nonce_share"]) for t in stage_tasks(stage)] == [("fixed", 0.0)] * 2
    with pytest.raises(UserError, match="wording"):
        StageConfig(tasks="arithmetic", wording="held_out")
    stage = StageConfig(tasks="arithmetic,word_problem,pattern", wording="varied", wide_tasks="word_problem,pattern")
    assert [t.wording for t in stage_tasks(stage, training=True)] == ["varied", "wide", "wide"]
    assert [t.wording for t in stage_tasks(stage)] == ["fixed"] * 3
    with pytest.raises(UserError, match="wide_tasks"):
        stage_tasks(StageConfig(tasks="arithmetic", wording="varied", wide_tasks="addition"), training=True)
    stage = StageConfig(tasks="arithmetic", wording="varied", count_down=True)
    assert [t.count_down for t in stage_tasks(stage, training=True)] == [True]
    assert [t.count_down for t in stage_tasks(stage)] == [False]


def test_wide_word_problems_are_put_together_so_that_only_the_verb_tells_some_apart():
    import random

    from recurlm.tasks.wording import GAINED, LOST, story

    fields = dict(N="Ben", p="he", P="He", M="Tom", T="apples", a=5, b=3, o="him", has="has")
    rng = random.Random(0)
    told = {gain: [story(rng, fields, gain).split(". ") for _ in range(600)] for gain in (True, False)}
    for gain, verbs, others in ((True, GAINED, LOST), (False, LOST, GAINED)):
        events = [f" {s[1].lower()} " for s in told[gain]]
        assert all(any(f" {v} " in e for e in events) for v in verbs)  # every verb of its side...
        assert not any(f" {v} " in e for v in set(others) - set(verbs) for e in events)  # ...and none of the other's
    asked = [{s[-1] for s in told[gain]} for gain in (True, False)]
    assert len(asked[0] & asked[1]) >= 4  # questions both sides ask: the verb decides


@pytest.mark.parametrize("pair", [("arithmetic", "comparison"), ("pattern", "sorting")])
def test_crossed_wording_asks_two_tasks_in_the_same_settings(pair):
    """The same setting ("take # and #.") opens questions of both tasks: only the question's words tell them apart."""
    from recurlm.tasks.wording import LIST_SETTINGS, PAIR_SETTINGS

    openings = {s.split("{")[0].lower() for s in PAIR_SETTINGS + LIST_SETTINGS if not s.startswith("{")}
    opened = []
    for name in pair:
        asked = [_shape(ex.prompt) for ex in get_task(name, wording="crossed").generate("train", 2000, seed=3)]
        opened.append({o for o in openings if any(p.startswith(o) for p in asked)})
        share = sum(p.startswith(tuple(openings)) for p in asked) / len(asked)
        assert 0.1 < share < 0.4, share  # about a third of the non-canonical questions, less those on no opening
    assert len(opened[0] & opened[1]) >= 5
    plain = [_shape(ex.prompt) for ex in get_task(pair[0], wording="wide").generate("train", 2000, seed=3)]
    assert not any(p.startswith(("look at ", "consider ", "given ")) for p in plain)  # crossed's own


def test_geometric_starts_widen_training_patterns_only():
    from recurlm.config import StageConfig
    from recurlm.tasks.runs import stage_tasks

    stage = StageConfig(tasks="pattern", wording="wide", geometric_starts=30)
    (trained,), (evaluated,) = stage_tasks(stage, training=True), stage_tasks(stage)
    starts = {int(re.findall(r"\d+", ex.key or ex.prompt)[0]) for ex in trained.generate("train", 400, 1, 2)}
    assert max(starts) > 20 and len(starts) > 20  # ten sequences before
    held = {ex.prompt for s in ("val", "test") for ex in evaluated.generate(s, 10, 0, 2)}
    assert held and not held & {ex.key or ex.prompt for ex in trained.generate("train", 2000, 1, 2)}
    assert {int(re.findall(r"\d+", p)[0]) for p in held} <= set(range(1, 6))  # evaluation keeps the task's own
    with pytest.raises(UserError, match="geometric_starts"):
        StageConfig(tasks="pattern", geometric_starts=0)


def test_check_step_tests_the_first_step_on_the_third_term_before_naming_the_rule():
    from recurlm.config import StageConfig
    from recurlm.tasks.runs import stage_tasks

    stage = StageConfig(tasks="pattern", wording="varied", geometric_starts=30, check_step=True)
    (trained,), (evaluated,) = stage_tasks(stage, training=True), stage_tasks(stage)
    for difficulty in (1, 2):
        for ex in trained.generate("train", 100, 1, difficulty):
            terms = [int(t) for t in re.findall(r"-?\d+", (ex.key or ex.prompt).split(":")[1])]
            step = terms[1] - terms[0]
            check = f"{terms[1]} {'+' if step > 0 else '-'} {abs(step)} = {terms[1] + step}"
            rule = re.search(r"<STEP>([^<]*so each term[^<]*)</STEP>", ex.completion).group(1)
            assert rule.startswith(check)  # worked out, then checked on the third term
            assert (f", not {terms[2]}: " in rule) == (difficulty == 2)  # only a geometric sequence fails the check
            following = terms[3] * terms[1] // terms[0] if difficulty == 2 else terms[3] + step
            assert ex.answer == str(following) and ("multiplied" in rule) == (difficulty == 2)
    plain = evaluated.generate("val", 20, 0, 2)[0].completion  # evaluation keeps the task's own traces
    assert re.match(r"<THINK><STEP>\d+ \* [23] = \d+, so each term is multiplied", plain)


def test_canonical_share_keeps_that_share_of_varied_questions_canonical():
    from recurlm.config import StageConfig
    from recurlm.tasks.runs import stage_tasks

    def canonical_count(share):  # comparison: its canonical frame is one of 15 varied ones, slips aside
        (task,) = stage_tasks(StageConfig(tasks="comparison", wording="varied", canonical_share=share), training=True)
        return sum(ex.key is None for ex in task.generate("train", 2000, seed=3))

    none, half, every = canonical_count(0.0), canonical_count(0.5), canonical_count(1.0)
    assert none < 150 and 900 < half < 1200 and every == 2000
    with pytest.raises(UserError, match="canonical_share"):
        get_task("sorting", wording="varied", canonical_share=1.5)
    with pytest.raises(UserError, match="unknown wording options"):
        get_task("sorting", wording="varied", canonical_shar=0.5)


def test_typed_questions_script_writes_held_out_test_questions(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "scripts" / "typed_questions.py"
    subprocess.run([sys.executable, str(script), "--n", "5", "--out", str(tmp_path)], check=True, capture_output=True)
    rows = read_jsonl(tmp_path / "sorting.jsonl")
    assert len(rows) == 20 and {r.difficulty for r in rows} == {1, 2, 3, 4} and {r.task for r in rows} == {"sorting"}
    # each test problem once: the split holds one geometric sequence, asked once rather than in 5 wordings
    once = [json.loads(line) for line in (tmp_path / "pattern.jsonl").read_text().splitlines()]
    assert all(split_of(r["key"]) == "test" for r in once) and len({r["key"] for r in once}) == len(once)
    assert [r["difficulty"] for r in once].count(2) == 1
    args = [sys.executable, str(script), "--n", "5", "--out", str(tmp_path), "--repeats"]
    subprocess.run(args, check=True, capture_output=True)
    assert [r.difficulty for r in read_jsonl(tmp_path / "pattern.jsonl")].count(2) == 5


def test_nonce_verbs_leave_word_problems_told_by_their_cue_words_alone():
    from recurlm.config import StageConfig
    from recurlm.tasks.runs import stage_tasks
    from recurlm.tasks.wording import GAINED, LOST

    (task,) = stage_tasks(StageConfig(tasks="word_problem", wording="varied", nonce_verbs=1.0), training=True)
    known = GAINED + LOST + ["gets", "gives", "get", "give"]
    told = {"event": 0, "question": 0}
    for ex in task.generate("train", 400, seed=4):
        opening, event, question = re.split(r"(?<=[.?])\s+", re.sub(r"</?INST>", "", ex.prompt.lower()))
        assert not any(re.search(rf"\b{v}\b", event) for v in known)  # the verb is made up
        gain = ex.difficulty == 1  # only "more", "away" or the question tells adding from taking away
        more, away = bool(re.search(r"\bmore\b", event)), bool(re.search(r"\baway\b", event))
        asks_gain = bool(re.search(r"in\s+all|altogether|in\s+total|after\s+that", question))  # ASKS_GAIN's words
        if more or away:
            assert more == gain and away != gain
            told["event"] += 1
        else:  # an event without a cue: a gain is asked by a question of gaining, a loss never is
            assert asks_gain == gain, ex.prompt
            told["question"] += 1
    assert told["event"] > 150 and told["question"] > 150


def test_nonce_swaps_one_word_that_is_not_a_cue_or_wraps_the_question():
    import random
    import re

    from recurlm.tasks.wording import CUES, with_nonce

    text = "Ben has 5 apples. He gets 3 more. How many apples does Ben have now?"
    words = re.findall(r"[A-Za-z]+|\d+", text)
    swapped = wrapped = 0
    for seed in range(300):
        out = with_nonce(random.Random(seed), text)
        if text in out:  # a greeting before or thanks after
            wrapped += 1
            continue
        new = re.findall(r"[A-Za-z]+|\d+", out)
        changed = [(a, b) for a, b in zip(words, new, strict=True) if a != b]
        assert len(changed) == 1  # one word, never a number, a cue or a word said twice (a name, the things)
        ((old, _),) = changed
        assert old.lower() not in CUES and old not in ("Ben", "apples") and not old.isdigit()
        swapped += 1
    assert swapped > 100 and wrapped > 100


def test_nonce_share_makes_up_words_in_that_share_of_varied_questions_only():
    import random
    import re

    from recurlm.tasks.wording import FILLERS, FRAMES, Question, phrase

    fields = dict(N="Ben", p="he", P="He", M="Tom", T="apples", a=5, b=3, o="him", has="has", gets="gets")
    fields |= dict(gives="gives", buys="buys", does="does")
    known = {w.lower() for text in FRAMES["gain"][1] + sum(FILLERS, []) for w in re.findall(r"[A-Za-z]+", text)}
    known |= {str(v).lower() for v in fields.values()}

    def share_made_up(nonce_share, wording="varied"):
        rng, q = random.Random(0), Question("gain", fields)
        texts = [phrase(rng, q, wording, nonce_share=nonce_share) for _ in range(1000)]
        return sum(any(w.lower() not in known for w in re.findall(r"[A-Za-z]+", t)) for t in texts) / len(texts)

    assert share_made_up(0.0) == 0 and share_made_up(1.0, wording="fixed") == 0
    assert 0.15 < share_made_up(0.5) < 0.35 and 0.4 < share_made_up(1.0) < 0.6  # half of them swap a word
    with pytest.raises(UserError, match="nonce_share"):
        get_task("sorting", wording="varied", nonce_share=2.0)


def question_words(prompt: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z]+", re.sub(r"</?INST>", "", prompt))]


def made_up_but(prompt: str, kept: frozenset[str]) -> bool:
    """Every word of the question is a made-up one (`wording.made_up_word`) or one of the `kept`."""
    from recurlm.tasks.wording import SYLLABLES

    made_up = re.compile(rf"(?:{'|'.join(SYLLABLES)}){{1,3}}")
    return all(made_up.fullmatch(w) or w in kept for w in question_words(prompt))


def test_nonce_frames_leave_only_the_numbers_and_operators_to_tell_the_task():
    from recurlm.config import StageConfig
    from recurlm.tasks.runs import stage_tasks
    from recurlm.tasks.wording import OPERATOR_WORDS

    for name in ("arithmetic", "pattern", "sorting", "comparison"):
        drawn = {}
        for share in (0.0, 1.0):
            (task,) = stage_tasks(StageConfig(tasks=name, wording="varied", nonce_frames=share), training=True)
            drawn[share] = task.generate("train", 300, seed=5)
        unknown = [made_up_but(ex.prompt, OPERATOR_WORDS) for ex in drawn[1.0]]
        if name == "comparison":  # two numbers tell no task: its frames keep their words
            assert not any(unknown) and [ex.prompt for ex in drawn[0.0]] == [ex.prompt for ex in drawn[1.0]]
        elif name == "arithmetic":  # the sentence forms ("Add 7 and 4.") say the operation in words: kept
            assert 150 < sum(unknown) < 300
        else:
            assert all(unknown)


def test_nonce_comparisons_leave_the_numbers_and_the_comparative():
    from recurlm.config import StageConfig
    from recurlm.tasks.runs import stage_tasks
    from recurlm.tasks.wording import COMPARATIVES

    drawn = {}
    for share in (0.0, 0.5, 1.0):
        (task,) = stage_tasks(StageConfig(tasks="comparison", wording="varied", nonce_comparisons=share), training=True)
        drawn[share] = [ex.prompt for ex in task.generate("train", 300, seed=5)]

    def made_up_only(prompt):
        return made_up_but(prompt, COMPARATIVES) and not COMPARATIVES.isdisjoint(question_words(prompt))

    assert not any(map(made_up_only, drawn[0.0])) and all(map(made_up_only, drawn[1.0]))
    assert 100 < sum(map(made_up_only, drawn[0.5])) < 200
    assert all(len(re.findall(r"\d+", text)) == 2 for text in drawn[1.0])  # the two numbers stay


def test_nonce_stories_leave_the_numbers_and_the_cue_of_their_sign():
    from recurlm.config import StageConfig
    from recurlm.tasks.runs import stage_tasks
    from recurlm.tasks.wording import GAIN_CUES, LOSS_CUES

    drawn = {}
    for share in (0.0, 0.5, 1.0):
        (task,) = stage_tasks(StageConfig(tasks="word_problem", wording="varied", nonce_stories=share), training=True)
        drawn[share] = task.generate("train", 300, seed=5)

    def made_up(ex):
        return made_up_but(ex.prompt, GAIN_CUES | LOSS_CUES)

    assert not any(map(made_up, drawn[0.0]))
    assert 60 < sum(map(made_up, drawn[0.5])) < sum(map(made_up, drawn[1.0])) < 300  # verbs alone tell the others
    for ex in filter(made_up, drawn[1.0]):
        a, b = map(int, re.findall(r"\d+", ex.prompt))  # the two numbers stay, in their order
        words = set(question_words(ex.prompt))
        gain = not words.isdisjoint(GAIN_CUES)
        assert gain == words.isdisjoint(LOSS_CUES) and int(ex.answer) == (a + b if gain else a - b)


def test_nonce_shapes_move_the_list_among_made_up_words():
    from recurlm.config import StageConfig
    from recurlm.tasks.runs import stage_tasks

    for name in ("pattern", "sorting"):
        stage = StageConfig(tasks=name, wording="varied", nonce_frames=1.0, nonce_shapes=1.0)
        (task,) = stage_tasks(stage, training=True)
        where = set()
        for ex in task.generate("train", 300, seed=5):
            question = re.sub(r"</?INST>", "", ex.prompt)
            assert made_up_but(ex.prompt, frozenset())
            listed = re.search(r"-?\d+(?:[, ]+-?\d+)+", question)  # the list stays whole, in its order
            shown = [int(n) for n in re.findall(r"-?\d+", listed.group())]
            assert shown == [int(n) for n in re.findall(r"-?\d+", question)] and len(shown) >= 3
            where.add((listed.start() == 0, listed.end() >= len(question.rstrip("?.")) - 1))
        assert where == {(True, True), (True, False), (False, True), (False, False)}  # first, last, alone, between


def test_depth_by_token_marks_the_results_of_a_trace_and_not_its_tags_or_copied_numbers():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "scripts" / "depth_by_token.py"
    spec = importlib.util.spec_from_file_location("depth_by_token", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    trace = "<THINK><STEP>7 + 8 = 15</STEP><STEP>69 > 17</STEP><STEP>51, 3 -> 3</STEP></THINK><ANS>15</ANS>"
    assert [trace[a:b] for a, b in script.result_spans(trace)] == ["15", ">", "3"]
    # tokens "7 + 8 = ", "1", "5", "</STEP>": only the digits of the sum are results
    ends = [trace.index("= ") + 2, trace.index("15") + 1, trace.index("15") + 2, trace.index("</STEP>") + 7]
    assert script.token_is_result(ends, script.result_spans(trace)) == [False, True, True, False]


def test_addition_errors_find_the_longer_operands_digit_counted_twice():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "scripts" / "addition_errors.py"
    spec = importlib.util.spec_from_file_location("addition_errors", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    first = script.first_wrong_column
    # 9735 + 18 = 9753, units first 3579: the hundreds (7, no carry in) written as 7 + 7 = 14 -> 4
    assert first("9735+18=", "9753", "3549") == {"column": 2, "shorter": 2, "where": "right after", "kind": "twice"}
    # the tens carry into the hundreds: 9785 + 18 = 9803 -> 3089; 7 + 7 + 1 = 15 -> 5 written at column 2
    assert first("18+9785=", "9803", "3059")["kind"] == "twice"
    assert first("9735+18=", "9753", "3589")["kind"] == "other"  # 8: neither the right digit nor twice
    assert first("9735+18=", "9753", "3571")["where"] == "further"
    assert first("9735+18=", "9753", "3479")["where"] == "inside"
    assert first("9735+18=", "9753", "357")["kind"] == "length"
    assert first("9735+18=", "9753", "3579") is None and first("12+34=", "46", "74") is None
