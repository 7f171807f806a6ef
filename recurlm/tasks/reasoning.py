"""The MiniAxion reasoning suite: short questions with correct step-by-step traces.

Prompt `<INST>question</INST>`, completion `<THINK><STEP>…</STEP>…</THINK><ANS>answer</ANS>`. The answer is
scored by exact match of the text between <ANS> and </ANS>; `format_ok` says whether a whole output follows the
trace grammar (MiniAxion's 'CoT format' score, reported with every evaluation of these tasks).

The traces spell out work a ~1M-parameter model can do one step at a time (MiniAxion's own traces state results it
cannot compute): sums and differences column by column (`recurlm.tasks.columns`), comparisons digit by digit from
the left, sorting one selection per step with the numbers still left written out.
"""

import random
import re

from recurlm.errors import UserError
from recurlm.tasks import Example, Task, columns, wording
from recurlm.tasks.wording import HELD_OUT_NAMES, HELD_OUT_THINGS, SHARES, WORDINGS, Question, made_up_word

TRACE = re.compile(r"<THINK>(<STEP>[^<]+</STEP>)+</THINK><ANS>[^<]+</ANS>")


def format_ok(text: str) -> bool:
    return TRACE.fullmatch(text.strip()) is not None


def trace(steps: list[str], answer) -> str:
    return "<THINK>" + "".join(f"<STEP>{s}</STEP>" for s in steps) + f"</THINK><ANS>{answer}</ANS>"


class TraceTask(Task):
    """A task whose examples are (question, steps, answer) triples; subclasses implement `problem`. `wording`
    (`recurlm.tasks.wording`): the canonical question ('fixed'), one of many phrasings ('varied', for training) or
    one of those kept out of training ('held_out')."""

    difficulties = (1, 2)
    prompt_template = "<INST>{}</INST>"
    max_new_tokens = 192  # the preset's whole context: the longest reference traces run ~150 tokens with digits split

    def __init__(self, wording: str = "fixed", **shares: float):
        if wording not in WORDINGS:
            raise UserError(f"wording must be one of {', '.join(WORDINGS)}, got {wording!r}")
        if unknown := sorted(set(shares) - set(SHARES)):
            raise UserError(f"unknown wording options {unknown}: the shares are {', '.join(SHARES)}")
        for name, share in shares.items():
            if not 0 <= share <= 1:
                raise UserError(f"{name} must be between 0 and 1, got {share}")
        self.wording, self.shares = wording, dict.fromkeys(SHARES, 0.0) | shares

    def problem(self, rng: random.Random, difficulty: int) -> tuple[Question, list[str], object]:
        raise NotImplementedError

    def sample(self, rng: random.Random, difficulty: int) -> Example:
        question, steps, answer = self.problem(rng, difficulty)
        canonical = self.prompt_template.format(wording.canonical(question))
        asked = wording.phrase(rng, question, self.wording, **self.shares)
        prompt = self.prompt_template.format(asked)
        key = canonical if prompt != canonical else None  # the split is the problem's, whatever its wording
        return Example(prompt, str(answer), trace(steps, answer), self.name, difficulty, key=key)


class Arithmetic(TraceTask):
    """'What is A + B?' / 'What is A - B?' (0-99, negative results included; difficulty 1: 0-9), 'What is A * B?'
    (0-12). `count_down`: products counted down to 1 (`times`) instead of up to the larger factor."""

    name = "arithmetic"

    def __init__(self, count_down: bool = False, **wording):
        super().__init__(**wording)
        self.count_down = count_down

    def problem(self, rng, difficulty):
        op = rng.choice("+-*")
        hi = 12 if op == "*" else 9 if difficulty == 1 else 99
        a, b = rng.randint(0, hi), rng.randint(0, hi)
        question = Question("arithmetic", dict(a=a, op=op, b=b))
        if op == "*":
            return question, times(a, b, down=self.count_down), a * b
        steps, value = columns.signed(a, op, b)
        return question, steps, value


def times(a: int, b: int, down: bool = False) -> list[str]:
    """a * b (0-12) by counting in steps of the smaller factor, each count numbered: '1: 7, 2: 14, ..., 7: 49'.
    A held-out question such as 7 * 7 is a fact no training question states; counting reaches it with additions.
    `down` numbers the counts from the larger factor down to 1 ('7: 7, 6: 14, ..., 1: 49'): the first number is
    copied from the question and the stop at 1 is in the step itself, where counting up stops at a factor back in
    the question, which the model overshot (4 * 4 = 20)."""
    step, count = min(a, b), max(a, b)
    if step <= 1:
        return [f"{a} * {b} = {a * b}"]
    numbers = range(count, 0, -1) if down else range(1, count + 1)
    counted = ", ".join(f"{n}: {i * step}" for i, n in enumerate(numbers, 1))
    return [f"count by {step}: {counted}", f"{a} * {b} = {a * b}"]


class TwoStep(TraceTask):
    """'What is (A + B) - C?' and the other +/- orders (0-50; difficulty 1: 0-9)."""

    name = "two_step"

    def problem(self, rng, difficulty):
        hi = 9 if difficulty == 1 else 50
        a, b, c = (rng.randint(0, hi) for _ in range(3))
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        first, x = columns.signed(a, op1, b)
        second, y = columns.signed(x, op2, c)
        return Question("two_step", dict(a=a, op1=op1, b=b, op2=op2, c=c)), [*first, *second], y


class EvenOdd(TraceTask):
    """'Is N even or odd?' (0-999; difficulty = digits of N, up to 3)."""

    name = "even_odd"
    chance = 0.5
    difficulties = (1, 2, 3)

    def problem(self, rng, difficulty):
        n = rng.randint(0 if difficulty == 1 else 10 ** (difficulty - 1), 10**difficulty - 1)
        last = n % 10
        parity = "even" if last % 2 == 0 else "odd"
        return Question("even_odd", dict(n=n)), [f"The last digit of {n} is {last}.", f"{last} is {parity}."], parity


class Comparison(TraceTask):
    """'Which is larger: A or B?' (0-999, A != B; difficulty = digits of the larger, up to 3)."""

    name = "comparison"
    chance = 0.5
    difficulties = (1, 2, 3)

    def problem(self, rng, difficulty):
        lo = 0 if difficulty == 1 else 10 ** (difficulty - 1)
        a = rng.randint(lo, 10**difficulty - 1)
        b = rng.choice([v for v in (rng.randint(0, 10**difficulty - 1) for _ in range(4)) if v != a] or [a + 1])
        big, small = max(a, b), min(a, b)
        sa, sb = str(a), str(b)
        if len(sa) != len(sb):
            steps = [f"{sa} has {len(sa)} digits, {sb} has {len(sb)}"]
        else:  # the first digit that differs decides; the equal ones before it are written out
            steps = []
            for x, y in zip(sa, sb, strict=True):
                steps.append(f"{x} = {y}" if x == y else f"{max(x, y)} > {min(x, y)}")
                if x != y:
                    break
        return Question("comparison", dict(a=a, b=b)), [*steps, f"{big} > {small}"], big


class Pattern(TraceTask):
    """'Complete the pattern: a, b, c, d, ?': arithmetic (start 0-60, step -9..9 except 0; difficulty 1) or
    geometric (start 1-5, x2 or x3; difficulty 2). `geometric_starts` > 5 widens the geometric starts of training
    data: ten sequences are learned by heart, and the test split's are then never right. `check_step`: every trace
    works out the first step and checks it on the third term ('6 + 3 = 9, not 12') before naming the rule, which
    otherwise is named from the first two terms alone, where many geometric sequences look like arithmetic ones."""

    name = "pattern"

    def __init__(self, geometric_starts: int = 5, check_step: bool = False, **wording):
        super().__init__(**wording)
        self.geometric_starts, self.check_step = geometric_starts, check_step

    def problem(self, rng, difficulty):
        if difficulty == 1:
            start, step = rng.randint(0, 60), rng.choice([s for s in range(-9, 10) if s])
            terms = [start + i * step for i in range(5)]
            rule = f"so each term adds {step}." if step > 0 else f"so each term subtracts {-step}."
            work, _ = columns.signed(terms[3], "+" if step > 0 else "-", abs(step))
        else:
            start, factor = rng.randint(1, self.geometric_starts), rng.choice([2, 3])
            terms = [start * factor**i for i in range(5)]
            rule = f"{terms[0]} * {factor} = {terms[1]}, so each term is multiplied by {factor}."
            work, _ = columns.multiply(terms[3], factor)
        if difficulty == 2 and not self.check_step:
            steps = [rule]  # named from the first two terms, the step not worked out
        else:
            a, b = terms[1], terms[0]  # the step, worked out like any difference (b may be negative)
            diff, step = columns.signed(a, "-", b) if b >= 0 else columns.signed(a, "+", -b)
            steps = [f"{a} - {b}", *diff, rule]
            if self.check_step:
                third = terms[1] + step
                check = f"{terms[1]} {'+' if step > 0 else '-'} {abs(step)} = {third}"
                steps[-1] = f"{check}, {rule}" if third == terms[2] else f"{check}, not {terms[2]}: {rule}"
        shown = ", ".join(map(str, terms[:4]))
        return Question("pattern", dict(s=shown, values=terms[:4])), [*steps, *work], terms[4]


NAMES = [
    ("Alice", "she"),
    ("Ben", "he"),
    ("Chloe", "she"),
    ("David", "he"),
    ("Emma", "she"),
    ("Felix", "he"),
    ("Grace", "she"),
    ("Hugo", "he"),
    ("Isla", "she"),
    ("Jack", "he"),
    ("Kira", "she"),
    ("Liam", "he"),
    ("Maya", "she"),
    ("Noah", "he"),
    ("Olivia", "she"),
    ("Omar", "he"),
    ("Priya", "she"),
    ("Ravi", "he"),
    ("Sofia", "she"),
    ("Tom", "he"),
    ("Uma", "she"),
    ("Victor", "he"),
    ("Wendy", "she"),
    ("Yusuf", "he"),
    ("Zoe", "she"),
    ("Sam", "they"),
    ("Alex", "they"),
    ("Lucia", "she"),
    ("Mateo", "he"),
    ("Hana", "she"),
]
THINGS = [
    "apples",
    "books",
    "pencils",
    "marbles",
    "stickers",
    "cookies",
    "coins",
    "stamps",
    "balloons",
    "cards",
    "shells",
    "buttons",
    "candles",
    "cups",
    "eggs",
    "flowers",
    "keys",
    "lemons",
    "oranges",
    "toys",
    "rocks",
    "socks",
    "plates",
    "crayons",
    "beads",
    "tickets",
    "bottles",
    "boxes",
]


class WordProblem(TraceTask):
    """'NAME has A THINGS. PRONOUN gets B more. How many THINGS does PRONOUN have now?' and the 'gives away B'
    variant (0-50, B <= A; difficulty 1: adding, 2: giving away). Names and things come from the lists or, one time
    in three each, are made up, so any name and any object can appear; held-out wordings use names and things of
    their own."""

    name = "word_problem"

    def problem(self, rng, difficulty):
        if self.wording == "held_out":  # people and things of no training list
            name, pronoun = rng.choice(HELD_OUT_NAMES)
            things = rng.choice(HELD_OUT_THINGS)
        else:
            name, pronoun = rng.choice(NAMES)
            if rng.random() < 1 / 3:
                name = made_up_word(rng).capitalize()
            things = rng.choice(THINGS) if rng.random() >= 1 / 3 else made_up_word(rng) + "s"
        a = rng.randint(0, 50)
        b = rng.randint(0, a) if difficulty == 2 else rng.randint(0, 50)
        other = name  # someone else, for the wordings with two people (drawn only then: fixed draws stay as they were)
        while self.wording != "fixed" and other == name:
            other = rng.choice(HELD_OUT_NAMES if self.wording == "held_out" else NAMES)[0]
        plural = pronoun == "they"
        fields = dict(N=name, p=pronoun, P=pronoun.capitalize(), M=other, T=things, a=a, b=b)
        fields |= {"o": {"she": "her", "he": "him", "they": "them"}[pronoun], "has": "have" if plural else "has"}
        fields |= {v: v.removesuffix("s") if plural else v for v in ("gets", "gives", "buys")}
        fields["does"] = "do" if plural else "does"
        op = "-" if difficulty == 2 else "+"
        steps, value = columns.signed(a, op, b)
        return Question("loss" if difficulty == 2 else "gain", fields), [f"{a} {op} {b}", *steps], value


class Sorting(TraceTask):
    """'Sort ascending: a, b, c, d' (3-6 numbers, 0-99; difficulty = count - 2). One step per number taken: the
    numbers still left, then the smallest of them."""

    name = "sorting"
    difficulties = (1, 2, 3, 4)

    def problem(self, rng, difficulty):
        values = [rng.randint(0, 99) for _ in range(difficulty + 2)]
        left, steps = list(values), []
        while left:
            smallest = min(left)
            steps.append(f"{', '.join(map(str, left))} -> {smallest}")
            left.remove(smallest)
        question = Question("sorting", dict(s=", ".join(map(str, values)), values=values))
        return question, steps, ", ".join(map(str, sorted(values)))


SUITE = {t.name: t for t in (Arithmetic, TwoStep, EvenOdd, Comparison, Pattern, WordProblem, Sorting)}
