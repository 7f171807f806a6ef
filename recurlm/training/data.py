"""From examples to training batches: token rows, loss masks, and the per-step task mixture with its curriculum.

A batch is a pure function of (seed, step, rank, micro-step) and the curriculum level, so a resumed run sees
exactly the batches the uninterrupted one would have, and data-parallel ranks see different data.
"""

import itertools
import random

import torch

from recurlm.config import StageConfig
from recurlm.tasks import Example, Task
from recurlm.tasks.runs import stage_tasks, task_weights
from recurlm.text.prompting import example_ids
from recurlm.text.tokenizer import OPERAND_STRIDE, Tokenizer, shifted, significance_ids


def encode_example(tok: Tokenizer, ex: Example, loss: str = "completion", abacus: bool = False, operands: int = 0):
    """Token ids of prompt + target + end token, a mask of the positions the loss is taken on, and the digit
    significance ids (None unless `abacus`)."""
    p = example_ids(tok, ex.prompt)
    c = tok.encode_markup(ex.target) + [tok.eos_id]
    mask = ([0] * len(p) if loss == "completion" else [0] + [1] * (len(p) - 1)) + [1] * len(c)
    return p + c, mask, significance_ids(p + c, len(p), tok.digit_ids, 0, operands) if abacus else None


def offset(
    digits: list[int], top: int, rng: random.Random, n_prompt: int, taken=None, near: int = 0
) -> list[int] | None:
    """Significance ids shifted by one random k for the whole example (`text.tokenizer.shifted`), the largest
    landing at most at `top`. With a list `taken` of the id ranges of a row's other examples, the range
    [k, k + largest] avoids them and is added (None where no k is left); with `near` > 0 it lies at most that many
    ids from one of them where it can. Inference reads numbers at one k, model.abacus_shift."""
    m = max((d % OPERAND_STRIDE for d in digits), default=0)
    free = [k for k in range(max(top - m, 0) + 1) if all(k + m < a or k > b for a, b in taken or ())]
    if not free:
        return None
    if near and taken:
        close = [k for k in free if min(a - k - m if k + m < a else k - b for a, b in taken) <= near]
        free = close or free
    k = rng.choice(free)
    if taken is not None:
        taken.append((k, k + m))
    return shifted(digits, k, n_prompt)


def collate(rows: list, pad_id: int):
    """Right-padded inputs (B, T-1), next-token targets (B, T-1) with -1 where no loss is taken, and the inputs'
    digit significance ids (None when the rows have none)."""
    T = max(len(ids) for ids, _, _ in rows)
    x = torch.full((len(rows), T - 1), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T - 1), -1, dtype=torch.long)
    pos = torch.zeros((len(rows), T - 1), dtype=torch.long) if rows[0][2] is not None else None
    for b, (ids, mask, digits) in enumerate(rows):
        n = len(ids)
        x[b, : n - 1] = torch.tensor(ids[:-1])
        y[b, : n - 1] = torch.tensor([t if m else -1 for t, m in zip(ids[1:], mask[1:], strict=True)])
        if pos is not None:
            pos[b, : n - 1] = torch.tensor(digits[:-1])
    return x, y, pos


class TaskMixture:
    """Mixture of a stage's tasks, by their weights. With a curriculum, rows come from the current level, and a
    share `review_frac` from the levels already passed."""

    def __init__(
        self, stage: StageConfig, tok: Tokenizer, seed: int, abacus: int = 0, context: int = 0, operands: int = 0
    ):
        self.stage, self.tok, self.seed, self.abacus, self.operands = stage, tok, seed, abacus, operands
        self.context = context  # rows are cut to this many inputs (the model's context; 0: never)
        self.tasks = stage_tasks(stage, training=True)
        weights = list(task_weights(stage).values())
        self.weights = None if len(set(weights)) <= 1 else weights  # uniform: the draws of unweighted runs as before
        self.max_level = max((max(t.difficulties) for t in self.tasks), default=1)

    def _difficulty(self, rng: random.Random, task: Task, level: int | None) -> int:
        allowed = [d for d in task.difficulties if level is None or d <= level]
        if level is None or level not in allowed or len(allowed) == 1:
            return rng.choice(allowed)
        if rng.random() < self.stage.review_frac:
            return rng.choice([d for d in allowed if d < level])
        return level

    def examples(self, n: int, step: int, rank: int, micro: int, level: int | None) -> list[Example]:
        rng = random.Random(f"{self.seed}/{step}/{rank}/{micro}")
        out = []
        while len(out) < n:
            task = rng.choices(self.tasks, self.weights)[0] if self.weights else rng.choice(self.tasks)
            ex = task.sample(rng, self._difficulty(rng, task, level))
            if ex.split == "train":
                out.append(ex)
        return out

    def batch(self, n: int, step: int, rank: int, micro: int, level: int | None):
        """n rows, right-padded to the longest. With `buckets` k > 1, k*n rows are drawn, sorted by length and cut
        into k groups, and one group is the batch: rows of similar length waste little on padding (traces of the
        reasoning suite run from 30 to 160 tokens), and as every row lands in exactly one group, each is trained on
        with the same probability. With `pack` > 1 a row holds 1 to `pack` examples."""
        k, key = self.stage.buckets, f"{self.seed}/{step}/{rank}/{micro}"
        sizes = [1] * (k * n)
        if self.stage.pack > 1:
            draw = random.Random(f"{key}/pack")
            sizes = [draw.randint(1, self.stage.pack) for _ in sizes]
        examples = iter(self.examples(sum(sizes), step, rank, micro, level))
        offsets = random.Random(f"{key}/offset") if self.abacus and self.stage.abacus_offset else None
        rows = []
        for size in sizes:
            row, taken = ([], [], [] if self.abacus else None), []
            for ex in itertools.islice(examples, size):
                ids, mask, digits = encode_example(self.tok, ex, self.stage.loss, self.abacus > 0, self.operands)
                if offsets is not None:
                    n_prompt = len(example_ids(self.tok, ex.prompt))
                    digits = offset(digits, self.abacus, offsets, n_prompt, taken, self.stage.pack_near)
                    if digits is None:  # no id range left in this row's table
                        continue
                row[0].extend(ids)
                row[1].extend(mask)
                if digits is not None:
                    row[2].extend(digits)
            rows.append(row)
        if k > 1:
            rows.sort(key=lambda row: len(row[0]))
            pick = random.Random(f"{key}/bucket").randrange(k)
            rows = rows[pick * n : (pick + 1) * n]
        if self.context:  # an example longer than the context trains on its beginning
            n = self.context + 1  # inputs and the next-token targets
            rows = [(ids[:n], mask[:n], digits[:n] if digits is not None else None) for ids, mask, digits in rows]
        return collate(rows, self.tok.eos_id)
