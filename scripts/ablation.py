"""An ablation study run with recurlm itself: each arm is a preset with some `--set` overrides, trained for a fraction
of the preset's steps (same seed, so the same batches and tokens), then scored on the validation split (to choose
by) and the test split (to report), and summed up in one markdown table.

    python scripts/ablation.py --preset recursive-nanochat-mini --arms scripts/rn_mini_ablation.toml \
        --out runs/ablation [--fraction 0.333] [--only base,sandwich] [--recurrences 2,4,8]

An arms file holds one table per arm: `what` (the table's description), `set` (overrides on top of the file's
`[base] set`), and optionally `recurrences` (plain baselines: [1]). Arms already trained and scored are skipped,
so the command resumes an interrupted study; `runs/ablation/table.md` is rewritten after every arm. While a file
`PAUSE` exists in the output directory, the next arm waits (timings need the machine to themselves). Each arm's
scores are `eval --json` files (`eval-val.json`, `eval-test.json`) that `recurlm report` reads too.
"""

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

from recurlm.checkpoint import load_checkpoint
from recurlm.config import load_config
from recurlm.evaluation.metrics import aggregate, centred_mean
from recurlm.evaluation.scoring import sweep, task_sets
from recurlm.tasks.runs import trained_task_names
from recurlm.training.trainer import train


def arm_overrides(configs_steps: dict[str, int], fraction: float, base: list[str], extra: list[str]) -> list[str]:
    steps = [f"stage.{name}.steps={max(1, round(n * fraction))}" for name, n in configs_steps.items()]
    return [*steps, *base, *extra]


def score(run: Path, split: str, limit: int, recurrences: list[int]) -> dict:
    """Greedy accuracy on every trained task at each r (fixed r, the run's cache and warm-start policy), and the
    aggregate centred on chance per r; written as `eval-SPLIT.json`, read back when it exists."""
    path = run / f"eval-{split}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model, tok, configs = load_checkpoint(run)
    sets = task_sets(trained_task_names(configs), configs, split, limit)
    policy = configs.inference.override(exit="none")
    t0 = time.perf_counter()
    rows = list(sweep(model, tok, sets, policy, recurrences))
    aggregates = {}
    for r in recurrences:
        aggregates[str(r)] = centred_mean(aggregate([row for row in rows if row["recurrences"] == r]))
    out = {"checkpoint": str(run), "split": split, "results": rows, "aggregate": aggregates,
           "seconds": time.perf_counter() - t0}  # fmt: skip
    path.write_text(json.dumps(out, indent=1))
    return out


def table(arms: dict, out: Path, recurrences: list[int]) -> str:
    header = ["arm", "what changed", "val r=4", *(f"test r={r}" for r in recurrences), "train s", "params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, arm in arms.items():
        run = out / name
        val, test = run / "eval-val.json", run / "eval-test.json"
        if not test.is_file():
            continue
        val, test = json.loads(val.read_text())["aggregate"], json.loads(test.read_text())["aggregate"]
        state = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
        params = json.loads((run / "summary.json").read_text())["params"]

        def at(scores, r):
            if str(r) in scores:
                return f"{scores[str(r)]:.3f}"
            return f"{next(iter(scores.values())):.3f}" if r == 4 else "–"  # a plain baseline, beside r = 4

        cells = [name, arm["what"], at(val, 4), *(at(test, r) for r in recurrences), f"{state['elapsed']:.0f}",
                 f"{params:,}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--arms", required=True, help="TOML file of arms")
    p.add_argument("--out", required=True)
    p.add_argument("--fraction", type=float, default=1 / 3, help="of each stage's steps")
    p.add_argument("--only", help="comma-separated arm names (default: all, in the file's order)")
    p.add_argument("--recurrences", default="2,4,8", help="test-split r (val is scored at r = 4)")
    p.add_argument("--val-limit", type=int, default=20, help="val problems per task and difficulty")
    p.add_argument("--test-limit", type=int, default=50, help="test problems per task and difficulty")
    args = p.parse_args()
    spec = tomllib.loads(Path(args.arms).read_text())
    arms = spec["arm"]
    if args.only:
        unknown = set(args.only.split(",")) - set(arms)
        if unknown:
            sys.exit(f"error: no arm named {', '.join(sorted(unknown))} in {args.arms}")
        arms = {k: v for k, v in arms.items() if k in args.only.split(",")}
    recurrences = [int(r) for r in args.recurrences.split(",")]
    out = Path(args.out)
    steps = {name: stage.steps for name, stage in load_config(args.preset).stages.items()}
    base = spec.get("base", {}).get("set", [])
    for name, arm in arms.items():
        while (out / "PAUSE").exists():  # a benchmark wants the machine to itself: wait between arms
            time.sleep(10)
        run = out / name
        overrides = arm_overrides(steps, args.fraction, base, arm.get("set", []))
        print(f"== arm {name}: {arm['what']} ({' '.join(overrides)})", flush=True)
        model, state = train(load_config(args.preset, overrides=overrides), run, resume=True)
        (run / "summary.json").write_text(json.dumps({
            "what": arm["what"], "overrides": overrides, "params": model.param_groups()["unique"],
            "tokens": state["tokens"], "elapsed": state["elapsed"]}, indent=1))  # fmt: skip
        rs = arm.get("recurrences", recurrences)
        score(run, "val", args.val_limit, [4] if rs != [1] else rs)
        test = score(run, "test", args.test_limit, rs)
        print(f"== arm {name}: test aggregate {test['aggregate']} ({test['seconds']:.0f} s to score)", flush=True)
        (out / "table.md").write_text(table(spec["arm"], out, recurrences))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
