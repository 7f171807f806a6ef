"""Held-out sets for the MiniAxion suite as someone else would draw them: straight from the task definitions with
their own seed and no split filter (tiny problem spaces, like the ten geometric patterns, appear whole, training
problems among them), plus word problems whose names and objects are in none of the generator's lists.

    python scripts/miniaxion_draws.py --seed 2026 --n 300 --out runs/draws
    recurlm eval --checkpoint checkpoints/miniaxion-0.9m --data runs/draws/arithmetic.jsonl   # one file per set
"""

import argparse
import json
import random
from pathlib import Path

from recurlm.tasks.reasoning import SUITE, columns, trace

# none of these is in reasoning.NAMES / THINGS, and most are far from the made-up syllable words
OUTSIDE_NAMES = [
    ("Bartholomew", "he"), ("Xiaoling", "she"), ("Oluwaseun", "he"), ("Ingrid", "she"), ("Kwame", "he"),
    ("Federico", "he"), ("Aiko", "she"), ("Guadalupe", "she"), ("Dmitri", "he"), ("Siobhan", "she"),
    ("Thandiwe", "she"), ("Rustam", "he"), ("Mrs. Okafor", "she"), ("Grandpa Joe", "he"), ("Jordan", "they"),
]  # fmt: skip
OUTSIDE_THINGS = [
    "umbrellas", "kites", "mangoes", "paperclips", "dinosaurs", "violins", "pebbles", "walnuts", "lanterns",
    "feathers", "scarves", "trumpets", "pinecones", "magnets", "postcards", "acorns",
]  # fmt: skip


def outside_word_problem(rng: random.Random) -> dict:
    name, pronoun = rng.choice(OUTSIDE_NAMES)
    things = rng.choice(OUTSIDE_THINGS)
    a = rng.randint(0, 50)
    op = rng.choice("+-")
    b = rng.randint(0, 50) if op == "+" else rng.randint(0, a)
    plural = pronoun == "they"
    action = (
        f"{pronoun.capitalize()} {'get' if plural else 'gets'} {b} more."
        if op == "+"
        else (f"{pronoun.capitalize()} {'give' if plural else 'gives'} away {b}.")
    )
    question = (
        f"{name} {'have' if plural else 'has'} {a} {things}. {action} "
        f"How many {things} {'do' if plural else 'does'} {pronoun} have now?"
    )
    steps, value = columns.signed(a, op, b)
    return {"prompt": f"<INST>{question}</INST>", "answer": str(value),
            "completion": trace([f"{a} {op} {b}", *steps], value), "task": "word_problem"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--n", type=int, default=300, help="examples per set")
    ap.add_argument("--out", default="runs/draws")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {}
    for name, cls in SUITE.items():
        task, rng = cls(), random.Random(f"{args.seed}/{name}")
        examples = [task.sample(rng, rng.choice(task.difficulties)) for _ in range(args.n)]
        sets[name] = [{k: v for k, v in vars(ex).items() if v is not None} for ex in examples]
    rng = random.Random(f"{args.seed}/outside")
    sets["word_problem_outside"] = [outside_word_problem(rng) for _ in range(args.n)]
    for name, rows in sets.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(out / f"{name}.jsonl", len(rows))


if __name__ == "__main__":
    main()
