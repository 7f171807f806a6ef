"""What evaluation results add up to: the one pooling rule (every example counts once), per-task accuracy, the
mean over tasks with its standard error, and aggregates centred on chance (nanochat's ChatCORE among them). A result
row is `ResultRow`: what `eval --json` writes and `report` reads back."""

import math
from typing import TypedDict

from recurlm.tasks import registry


class ResultRow(TypedDict, total=False):
    """One (task, difficulty, r, exit, decoding) setting's result."""

    task: str
    difficulty: int | None
    recurrences: int
    exit: str
    decode: str  # 'greedy', 'beamW', 'draftRxK'
    accuracy: float
    n: int
    mean_steps: float  # recurrences per generated token
    max_steps: int
    tokens_per_s: float
    format: float | None  # share of reasoning traces that follow the trace grammar
    acceptance: float | None  # of speculative drafts
    steps_by_example: list[float]


def pooled(rows: list[ResultRow], key: str) -> float:
    """`key` averaged over every example of the rows (each row weighted by its n)."""
    return sum(r[key] * r["n"] for r in rows) / max(sum(r["n"] for r in rows), 1)


def by_task(rows: list[ResultRow]) -> dict[str, list[ResultRow]]:
    """Rows grouped by task (each task's difficulties together), in the order tasks first appear."""
    out: dict[str, list[ResultRow]] = {}
    for row in rows:
        out.setdefault(row["task"], []).append(row)
    return out


def aggregate(rows: list[ResultRow]) -> dict[str, float]:
    """Task -> accuracy over its difficulties (pooled), for rows of one setting."""
    tasks = by_task(rows)
    return {t: pooled(task_rows, "accuracy") for t, task_rows in tasks.items() if sum(r["n"] for r in task_rows)}


def standard_error(rows: list[ResultRow]) -> float | None:
    """The standard error of the mean over tasks (of `aggregate`), as lm-eval's acc_stderr: each task's accuracy the
    mean of its n examples' credits, with their sample variance (for 0/1 credits n/(n - 1)·p(1 - p)), tasks
    independent. It says which gaps are noise: 0.897 on 719 questions over seven tasks is ± 0.011."""
    variances = []
    for task_rows in by_task(rows).values():
        if n := sum(r["n"] for r in task_rows):
            p = pooled(task_rows, "accuracy")
            variances.append(p * (1 - p) / max(n - 1, 1))
    return math.sqrt(sum(variances)) / len(variances) if variances else None


# ChatCORE (nanochat): the centred mean (below) over these tasks, whose chance is 0.25 for the 4-way multiple-choice
# tasks and 0 for the generative ones.
CHATCORE_TASKS = ("arc_easy", "arc_challenge", "mmlu", "gsm8k", "humaneval", "spelling_bee")


def chance(task: str) -> float:
    """A task's accuracy by guessing ('mmlu:FILE' is MMLU's); 0 for names that are not tasks (a --data file)."""
    return getattr(registry().get(task.partition(":")[0]), "chance", 0.0)


def centred_mean(accuracy: dict[str, float]) -> float | None:
    """The mean over tasks (task -> accuracy) of (accuracy - chance) / (1 - chance): 0 is guessing, 1 is perfect."""
    centred = [(a - c) / (1 - c) for t, a in accuracy.items() for c in [chance(t)]]
    return sum(centred) / len(centred) if centred else None


def in_chatcore(task: str) -> bool:
    return task.partition(":")[0] in CHATCORE_TASKS  # 'mmlu:FILE' is MMLU


def chatcore(accuracy: dict[str, float]) -> float | None:
    """ChatCORE over whichever of its tasks are in `accuracy`; None if none."""
    return centred_mean({t: a for t, a in accuracy.items() if in_chatcore(t)})
