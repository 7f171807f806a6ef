"""Held-out addition problems as someone else would draw them: both operands random with exactly d digits, with
their own seed and no split filter, written as the `addition` task writes them ('A+B=', the sum in normal order).

    python scripts/addition_draws.py --digits 10,20,30,40 --n 200 --seed 2026 --out runs/addition-draws
    recurlm eval --checkpoint checkpoints/addition-length --data runs/addition-draws/d30.jsonl --recurrences 8,16,32
"""

import argparse
import json
import random
from pathlib import Path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--digits", default="10,20,30,40", help="operand lengths, comma-separated")
    p.add_argument("--n", type=int, default=200, help="problems per length")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--out", required=True, help="directory for d<digits>.jsonl")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for d in (int(x) for x in args.digits.split(",")):
        with open(out / f"d{d}.jsonl", "w") as f:
            for _ in range(args.n):
                a, b = (rng.randint(10 ** (d - 1), 10**d - 1) for _ in range(2))
                f.write(
                    json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b), "task": "addition", "difficulty": d})
                    + "\n"
                )
        print(f"wrote {args.n} problems of {d}-digit operands to {out / f'd{d}.jsonl'}")


if __name__ == "__main__":
    main()
