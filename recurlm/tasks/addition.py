"""Integer addition (RR-SLM, McLeish et al. 2024): prompt 'A+B=', answer the sum.

Difficulty d = digits per operand (both operands have exactly d digits; d = 1 means 0-9). With `reverse`, the
target is the sum written least-significant digit first, the order in which carries are computed, which small
models learn far more easily; scoring always compares the true sum. With `mixed_lengths` (training data only),
one example in two (`mixed_share`) has one operand of d digits and the other of 1 to d, as McLeish et al. train:
with equal lengths only, a model can learn to stop after len(A) + 1 digits instead of when both operands have run
out, which fails on longer numbers (and on '7+45='); the rest keeps equal lengths, whose carries into a new digit
are the hardest. Of the mixed sums, a share (`mixed_short`) takes its shorter operand from 1 to d/3 digits: wrong sums
of different lengths past 10 digits first go wrong where only the longer operand has digits, a stretch that uniform
lengths make seven to nine columns long in 4% of the sums.
"""

import random
import re

from recurlm.tasks import Example, Task

PROMPT = re.compile(r"\d+\+\d+=")


class Addition(Task):
    name = "addition"

    def __init__(
        self,
        max_digits: int = 3,
        reverse: bool = False,
        mixed_lengths: bool = False,
        mixed_share: float = 0.5,
        mixed_short: float = 0.0,
    ):
        self.difficulties = tuple(range(1, max_digits + 1))
        self.reverse, self.mixed_lengths = reverse, mixed_lengths
        self.mixed_share, self.mixed_short = mixed_share, mixed_short
        self.max_new_tokens = max_digits + 2  # the longest sum and the end token

    def recognises(self, prompt: str) -> bool:
        return PROMPT.fullmatch(prompt) is not None

    def sample(self, rng: random.Random, difficulty: int) -> Example:
        a = number(rng, difficulty)
        mixed = self.mixed_lengths and rng.random() < self.mixed_share
        # the draw for mixed_short only where it is asked for, so that other runs' data stay as they were
        short = mixed and self.mixed_short > 0 and rng.random() < self.mixed_short
        shorter = max(1, difficulty // 3) if short else difficulty  # the shorter operand's most digits
        b = number(rng, rng.randint(1, shorter) if mixed else difficulty)
        if mixed and rng.random() < 0.5:  # the shorter operand on either side
            a, b = b, a
        total = str(a + b)
        return Example(f"{a}+{b}=", total, total[::-1] if self.reverse else None, self.name, difficulty)

    def extract(self, text: str) -> str:
        text = text.strip()
        return text[::-1] if self.reverse else text


def number(rng: random.Random, digits: int) -> int:
    """A random number of exactly `digits` digits (0-9 for one)."""
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
