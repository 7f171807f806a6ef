"""Tasks: seeded generators of examples (docs/design.md §3) and how their answers are scored.

An example is {"prompt", "answer", "completion"?, "task"?, "difficulty"?, "choices"?, "meta"?}. Train, validation
and test sets are disjoint by construction: a prompt belongs to one split, chosen by a hash of its text, so no test
prompt is ever trained on however many examples are drawn. Tune on 'val'; 'test' is for the final report.
"""

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from recurlm.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class Example:
    prompt: str
    answer: str
    completion: str | None = None  # the full target text; defaults to the answer
    task: str | None = None
    difficulty: int | None = None
    choices: list[str] | None = None  # multiple choice: the answer letters, scored by their logits in one forward
    meta: dict | None = None  # what the task's scorer needs beyond the answer (a reasoning_gym entry)
    key: str | None = None  # the problem's canonical prompt when this is another wording of it: the split's key

    @property
    def split(self) -> str:
        return split_of(self.key or self.prompt)

    @property
    def target(self) -> str:
        return self.answer if self.completion is None else self.completion


def split_of(prompt: str) -> str:
    """80% train, 10% val, 10% test, by a stable hash of the prompt."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % 10
    return "test" if h == 0 else "val" if h == 1 else "train"


ANS = re.compile(r"<ANS>(.*?)</ANS>", re.S)


def extract_answer(text: str) -> str:
    """The scored part of a generation: between <ANS> and </ANS> for reasoning traces, else the stripped text."""
    m = ANS.search(text)
    return m.group(1).strip() if m else text.strip()


class Task:
    """A family of examples. Subclasses implement `sample` (one random example of a difficulty) and may override
    `extract` (generated text -> answer) when their output is not the answer written plainly."""

    name = "task"
    difficulties: tuple[int, ...] = (1,)
    trainable = True  # can draw training examples (benchmarks read from files cannot)
    max_new_tokens = 256  # generation budget when scoring: room to think, not the reference answer's length
    prompt_template = "{}"  # how a question is put to the model (the reasoning suite: '<INST>{}</INST>')
    chance = 0.0  # accuracy of guessing (0.25 for 4-way multiple choice): aggregates centre on it

    def recognises(self, prompt: str) -> bool:
        """Whether a free-form prompt is one of this task's, so `generate` shows the answer as `extract` reads it."""
        return False

    def sample(self, rng: random.Random, difficulty: int) -> Example:
        raise NotImplementedError

    def extract(self, text: str) -> str:
        return extract_answer(text)

    def score(self, ex: Example, text: str) -> float:
        """1.0 for a correct generation, else 0.0 (or partial credit, for tasks that give it)."""
        return float(self.extract(text) == ex.answer)

    def generate(
        self, split: str, n: int, seed: int = 0, difficulty: int | None = None, by_problem: bool = False
    ) -> list[Example]:
        """n examples of `split` (all difficulties in turn unless one is given). Evaluation splits hold distinct
        prompts, so a small problem space yields fewer than n; `by_problem` holds distinct problems, so that two
        wordings of one problem count once."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        rng = random.Random(f"{self.name}/{split}/{seed}/{difficulty}")
        levels = [difficulty] if difficulty is not None else list(self.difficulties)
        out, seen, tries = [], set(), 0
        while len(out) < n and tries < 50 * n + 1000:
            tries += 1
            ex = self.sample(rng, levels[tries % len(levels)])  # by tries: an exhausted level cannot block
            seen_as = (ex.key or ex.prompt) if by_problem else ex.prompt
            if ex.split != split or (split != "train" and seen_as in seen):
                continue
            seen.add(seen_as)
            out.append(ex)
        return out


def registry() -> dict[str, type]:
    from recurlm.tasks.addition import Addition
    from recurlm.tasks.benchmarks import GSM8K, MMLU, ARCChallenge, ARCEasy, HumanEval
    from recurlm.tasks.gym import ReasoningGym
    from recurlm.tasks.reasoning import SUITE
    from recurlm.tasks.spelling import SpellingBee

    return {
        "addition": Addition,
        **SUITE,
        "spelling_bee": SpellingBee,
        "arc_easy": ARCEasy,
        "arc_challenge": ARCChallenge,
        "mmlu": MMLU,
        "gsm8k": GSM8K,
        "humaneval": HumanEval,
        "reasoning_gym": ReasoningGym,
    }


def get_task(name: str, **options) -> Task:
    """A task by name; 'NAME:ARG' passes ARG on (a benchmark's file, a reasoning_gym dataset and its config)."""
    tasks = registry()
    base, sep, arg = name.partition(":")
    if base not in tasks:
        raise UserError(f"unknown task {name!r}; available: {', '.join(sorted(tasks))}")
    return tasks[base](arg, **options) if sep else tasks[base](**options)


def write_jsonl(examples: list[Example], path: str | Path):
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps({k: v for k, v in asdict(ex).items() if v is not None}) + "\n")


def read_jsonl(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(
                Example(
                    **{k: obj[k] for k in ("prompt", "answer")},
                    **{k: obj[k] for k in ("completion", "task", "difficulty", "choices", "meta") if k in obj},
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}:{i}: malformed example ({type(e).__name__}: {e})") from None
    if not out:
        raise UserError(f"data file is empty: {path}")
    return out
