"""Integer addition (RR-SLM, McLeish et al. 2024): prompt 'A+B=', answer the sum.

Difficulty d = digits per operand (both operands have exactly d digits; d = 1 means 0-9). With `reverse`, the
target is the sum written least-significant digit first, the order in which carries are computed, which small
models learn far more easily; scoring always compares the true sum.
"""

import random
import re

from recurlm.tasks import Example, Task

PROMPT = re.compile(r"\d+\+\d+=")


class Addition(Task):
    name = "addition"

    def __init__(self, max_digits: int = 3, reverse: bool = False):
        self.difficulties = tuple(range(1, max_digits + 1))
        self.reverse = reverse
        self.max_new_tokens = max_digits + 2  # the longest sum and the end token

    def recognises(self, prompt: str) -> bool:
        return PROMPT.fullmatch(prompt) is not None

    def sample(self, rng: random.Random, difficulty: int) -> Example:
        lo = 0 if difficulty == 1 else 10 ** (difficulty - 1)
        a, b = rng.randint(lo, 10**difficulty - 1), rng.randint(lo, 10**difficulty - 1)
        total = str(a + b)
        return Example(f"{a}+{b}=", total, total[::-1] if self.reverse else None, self.name, difficulty)

    def extract(self, text: str) -> str:
        text = text.strip()
        return text[::-1] if self.reverse else text
