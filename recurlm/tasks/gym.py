"""`reasoning_gym:NAME[:key=value,...]`: any dataset of the reasoning-gym package (the optional extra
`recurlm[gym]`; it generates offline), its config passed through, scored by the package's own `score_answer`.

Its datasets build entry i from (seed, i) on demand, so one huge dataset is a free endless generator: training
draws random indices of it, evaluation walks it in order. Train and test stay disjoint as for our own tasks:
examples are kept only if their prompt hashes to the split. Each example carries its entry in `meta`, so it is
scored the same after a round trip through a JSONL file (`recurlm data export`, then `eval --data`).
"""

import json
import random

from recurlm.errors import UserError
from recurlm.tasks import SPLITS, Example, Task, extract_answer, split_of

SIZE = 10**9


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _plain(value):
    """The entry as JSON can hold it (tuples become lists), so that a written and a generated example agree."""
    return json.loads(json.dumps(value, default=str))


class ReasoningGym(Task):
    difficulties = (1,)

    def __init__(self, spec: str = ""):
        try:
            import reasoning_gym
        except ImportError:
            raise UserError("reasoning_gym tasks need the package: pip install 'recurlm[gym]'") from None
        name, _, options = spec.partition(":")
        if not name:
            raise UserError("use --task reasoning_gym:NAME (e.g. reasoning_gym:basic_arithmetic)")
        self.dataset_name, self.name = name, f"reasoning_gym:{spec}"
        self.config = {}
        for pair in filter(None, options.split(",")):
            key, sep, value = pair.partition("=")
            if not sep:
                raise UserError(f"reasoning_gym option {pair!r}: expected key=value")
            self.config[key] = _value(value)
        self._rg = reasoning_gym
        self._datasets: dict[int, object] = {}

    def dataset(self, seed: int):
        if seed not in self._datasets:
            try:
                self._datasets[seed] = self._rg.create_dataset(self.dataset_name, size=SIZE, seed=seed, **self.config)
            except Exception as e:  # unknown dataset or bad config: the package raises several kinds
                raise UserError(f"reasoning_gym {self.dataset_name}: {str(e).splitlines()[0]}") from None
        return self._datasets[seed]

    def _example(self, entry: dict) -> Example:
        return Example(entry["question"], str(entry["answer"]), None, self.name, 1, meta=_plain(entry))

    def sample(self, rng: random.Random, difficulty: int) -> Example:
        return self._example(self.dataset(0)[rng.randrange(SIZE)])

    def generate(self, split: str, n: int, seed: int = 0, difficulty: int | None = None) -> list[Example]:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}")
        data, out, seen = self.dataset(seed), [], set()
        for i in range(200 * n + 20):  # val and test hold 10% each; a small problem space yields fewer than n
            if len(out) == n:
                break
            entry = data[i]
            q = entry["question"]
            if split_of(q) == split and (split == "train" or q not in seen):
                seen.add(q)
                out.append(self._example(entry))
        return out

    def score(self, ex: Example, text: str) -> float:
        if ex.meta is None:
            raise UserError(f"{self.name}: example {ex.prompt[:40]!r} has no 'meta' entry to score it with")
        return float(self.dataset(0).score_answer(answer=extract_answer(text), entry=ex.meta))
