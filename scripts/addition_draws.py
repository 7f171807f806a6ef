"""Held-out addition problems as someone else would draw them: both operands random with exactly d digits, with
their own seed and no split filter, written as the `addition` task writes them ('A+B=', the sum in normal order).
With --unequal, operands as a calculator's user types them: one of d digits, the other of an independent length
from 1 to d, on either side (37 digits + 5 digits), written to u<d>.jsonl.

    python scripts/addition_draws.py --digits 10,20,30,40 --n 200 --seed 2026 --out runs/addition-draws
    recurlm eval --checkpoint checkpoints/addition-length --data runs/addition-draws/d30.jsonl --recurrences 8,16,32
"""

import argparse
import json
import random
from pathlib import Path

from recurlm.tasks.addition import number


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--digits", default="10,20,30,40", help="operand lengths, comma-separated")
    p.add_argument("--n", type=int, default=200, help="problems per length")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--unequal", action="store_true", help="the second operand has 1 to d digits, on either side")
    p.add_argument("--out", required=True, help="directory for d<digits>.jsonl (u<digits>.jsonl with --unequal)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for d in (int(x) for x in args.digits.split(",")):
        path = out / f"{'u' if args.unequal else 'd'}{d}.jsonl"
        with open(path, "w") as f:
            for _ in range(args.n):
                if args.unequal:  # drawn apart from the equal-length sets, whose draws stay as published
                    lengths = [d, rng.randint(1, d)]
                    rng.shuffle(lengths)
                    a, b = (number(rng, n) for n in lengths)
                else:
                    a, b = (rng.randint(10 ** (d - 1), 10**d - 1) for _ in range(2))
                f.write(
                    json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b), "task": "addition", "difficulty": d})
                    + "\n"
                )
        print(f"wrote {args.n} problems of {d}-digit operands to {path}")


if __name__ == "__main__":
    main()
