"""Where wrong sums of operands of different lengths go wrong: for each wrong sum in an `eval --samples` file, the
first wrong column of the answer (units first) against the shorter operand's length m, and whether the digit written
there is the longer operand's digit counted twice (2·d + carry): what a model writes when, past column m, it still
finds a "shorter operand's digit" of that significance — the longer operand's own, which shares its Abacus id.

    recurlm eval --checkpoint checkpoints/addition-length --data unequal-lengths.jsonl --samples samples.jsonl
    python scripts/addition_errors.py samples.jsonl [--recurrences 4]
"""

import argparse
import collections
import json


def first_wrong_column(prompt: str, answer: str, output: str) -> dict | None:
    """The first wrong column (0 = units) of a sum 'A+B=' answered units first, where it lies against the shorter
    operand (inside it, the column right after it, further) and what was written there ('twice': the longer
    operand's digit counted twice; 'other'; 'length': the answer ends early or runs on). None for equal lengths."""
    a, b = prompt.rstrip("=").split("+")
    if len(a) == len(b):
        return None
    m = min(len(a), len(b))
    long = max(a, b, key=len)[::-1]
    want, got = answer[::-1], output.strip()
    col = next((i for i in range(max(len(want), len(got))) if i >= min(len(want), len(got)) or want[i] != got[i]), None)
    if col is None:
        return None
    carry = int(a[len(a) - col :] or 0) + int(b[len(b) - col :] or 0) >= 10**col
    where = "inside" if col < m else "right after" if col == m else "further"
    if col >= len(got) or col >= len(long) or col < m:
        kind = "length" if col >= len(got) or col >= len(want) else "other"
    else:
        kind = "twice" if got[col] == str((2 * int(long[col]) + carry) % 10) else "other"
    return {"column": col, "shorter": m, "where": where, "kind": kind}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", help="a JSONL file of `recurlm eval --samples`")
    ap.add_argument("--recurrences", type=int, help="only this r's rows (default: every row)")
    args = ap.parse_args()
    counts, wrong = collections.Counter(), 0
    with open(args.samples) as f:
        for line in f:
            s = json.loads(line)
            if s["correct"] or (args.recurrences and s["recurrences"] != args.recurrences):
                continue
            if (error := first_wrong_column(s["prompt"], s["answer"], s["output"])) is not None:
                wrong += 1
                counts[error["where"], error["kind"]] += 1
    print(f"{wrong} wrong sums of operands of different lengths; first wrong column / what was written there:")
    for (where, kind), n in counts.most_common():
        print(f"  {where:<12} {kind:<7} {n}")


if __name__ == "__main__":
    main()
