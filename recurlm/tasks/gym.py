"""`reasoning_gym:NAME[:key=value,...]`: any dataset of the reasoning-gym package (the optional extra
`recurlm[gym]`; it generates offline), its config passed through, scored by the package's own `score_answer`.
Train and test stay disjoint as for our own tasks: examples are kept only if their prompt hashes to the split."""

import json

from recurlm.config import UserError
from recurlm.tasks import SPLITS, Example, Task, extract_answer, split_of


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
        self._entries: dict[str, tuple] = {}

    def generate(self, split: str, n: int, seed: int = 0, difficulty: int | None = None) -> list[Example]:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}")
        size = 12 * n + 20  # val and test hold 10% each: draw more until n are found (or the space is exhausted)
        while True:
            try:
                data = self._rg.create_dataset(self.dataset_name, size=size, seed=seed, **self.config)
            except Exception as e:  # unknown dataset or bad config: the package raises several kinds
                raise UserError(f"reasoning_gym {self.dataset_name}: {str(e).splitlines()[0]}") from None
            out, seen = [], set()
            for entry in data:
                q = entry["question"]
                if split_of(q) == split and len(out) < n and (split == "train" or q not in seen):
                    seen.add(q)
                    self._entries[q] = (data, entry)
                    out.append(Example(q, str(entry["answer"]), None, self.name, 1))
            if len(out) == n or size > 200 * n:
                return out
            size *= 2

    def score(self, ex: Example, text: str) -> float:
        data, entry = self._entries[ex.prompt]
        return float(data.score_answer(answer=extract_answer(text), entry=entry))
