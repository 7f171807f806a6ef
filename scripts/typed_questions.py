"""Held-out wordings of the reasoning suite: the seven tasks' test-split problems asked as people type them, in
frames, names and objects no training example uses (`recurlm.tasks.wording`), with typing slips (lowercase, no
final punctuation, no spaces around operators). One file per task, <task>.jsonl, each example with its difficulty.
Each problem is asked once, in one wording (`--repeats` asks it again in others): where a difficulty holds few
problems (the split has one geometric sequence), repeats would weigh that one problem as heavily as twenty.

    python scripts/typed_questions.py --n 100 --seed 2026 --out runs/typed
    recurlm eval --checkpoint checkpoints/miniaxion-0.9m $(printf -- '--data %s ' runs/typed/*.jsonl)
"""

import argparse
from pathlib import Path

from recurlm.tasks import write_jsonl
from recurlm.tasks.reasoning import SUITE


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100, help="problems per task and difficulty")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--split", default="test", choices=("val", "test"), help="val to choose settings, test to report")
    p.add_argument("--out", required=True, help="directory for <task>.jsonl")
    p.add_argument("--repeats", action="store_true", help="a problem may come back in other wordings, as before")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, cls in SUITE.items():
        task = cls(wording="held_out")
        examples = [
            ex
            for d in task.difficulties
            for ex in task.generate(args.split, args.n, args.seed, d, by_problem=not args.repeats)
        ]
        write_jsonl(examples, out / f"{name}.jsonl")
        print(f"wrote {len(examples)} {name} questions to {out / name}.jsonl")


if __name__ == "__main__":
    main()
