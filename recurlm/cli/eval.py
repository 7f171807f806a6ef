"""`recurlm eval`: score a checkpoint on tasks or JSONL files, swept over r, exits and decoding methods."""

import argparse
import contextlib
import json

from recurlm.checkpoint import load_checkpoint
from recurlm.cli.common import add_policy_flags, output_file, parse_int_list, policy_from, positive_int
from recurlm.config import EXIT_HELP
from recurlm.errors import UserError
from recurlm.evaluation.metrics import aggregate, chatcore
from recurlm.evaluation.scoring import file_sets, sweep, task_sets


def parse_draft(text: str) -> tuple[int, int]:
    r, _, k = text.partition(":")
    try:
        draft = int(r), int(k or 4)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R:K (draft recurrences : draft tokens), got {text!r}") from None
    if min(draft) < 1:
        raise argparse.ArgumentTypeError(f"draft recurrences and tokens must be >= 1, got {text!r}")
    return draft


def register(sub):
    s = sub.add_parser("eval", help="score a checkpoint on tasks or a JSONL file at several recurrences")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--task", action="append", help="task name (repeatable)")
    s.add_argument("--data", action="append", help="JSONL of {prompt, answer, ...} examples (repeatable)")
    s.add_argument(
        "--recurrences", type=parse_int_list, help="e.g. 1,2,4,8, each a fixed r unless --exit (default: the run's)"
    )
    s.add_argument(
        "--exit", action="append", help=f"adaptive exit: {EXIT_HELP}; repeatable (default: the run's, at its r)"
    )
    s.add_argument("--beam", type=positive_int, default=1, help="also decode by beam search of this width")
    s.add_argument(
        "--draft",
        type=parse_draft,
        metavar="R:K",
        help="also decode self-speculatively: K-token drafts at R recurrences, checked at r (greedy's tokens, "
        "one example at a time: compare tok/s with --batch-size 1)",
    )
    s.add_argument("--max-new-tokens", type=positive_int, help="generation budget (default: each task's own)")
    add_policy_flags(s, sampling=False, depth=False)  # evaluation decodes greedily
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--limit", type=positive_int, help="examples per task and difficulty (default 200)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=positive_int, default=128)
    s.add_argument(
        "--dynamics",
        action="store_true",
        help="also trace the prompt pass to 4x the run's r (or the largest --recurrences): per iteration, the mean "
        "change of the state and of the next-token distribution (does the recurrence settle or drift?)",
    )
    s.add_argument("--json", type=output_file, help="write the results here")
    s.add_argument(
        "--samples",
        type=output_file,
        metavar="FILE.jsonl",
        help="write every example's prompt, answer, output, credit and steps here, a line each with its row's task, "
        "difficulty, r, exit and decoding (which problems fail, and how)",
    )
    s.set_defaults(func=run)


def run(args):
    from recurlm.analysis.report import by_r, scaling_table
    from recurlm.evaluation.dynamics import settle_or_drift

    model, tok, configs = load_checkpoint(args.checkpoint)
    if args.data:
        sets = [s for path in args.data for s in file_sets(path, configs, args.limit, args.max_new_tokens)]
    elif args.task:
        sets = task_sets(args.task, configs, args.split, args.limit or 200, args.seed, args.max_new_tokens)
    else:
        raise UserError("eval needs --task NAME or --data FILE.jsonl")
    policy = policy_from(args, configs.inference, depth=False)
    model.set_context(policy.context)
    exits = args.exit or [None]
    if args.recurrences and not args.exit and policy.exit != "none":  # a sweep of r asks for each r itself
        exits = ["none"]
        print(f"[fixed r: the run's exit {policy.exit} is off in a sweep of r (--exit {policy.exit} caps each r)]")
    if args.max_steps and all((e or policy.exit) == "none" for e in exits):
        raise UserError("--max-steps caps adaptive exit: add --exit, e.g. latent:EPS or kl:EPS")
    recurrences = args.recurrences or [policy.recurrences]
    print(
        f"{'task':<24} {'diff':>4} {'r':>3} {'exit':<12} {'decode':<6} {'accuracy':>8} {'n':>5} {'steps':>6} "
        f"{'max':>4} {'tok/s':>8} format"
    )
    results = []
    rows = sweep(
        model, tok, sets, policy, recurrences, exits, args.beam, args.batch_size, args.draft, bool(args.samples)
    )
    with open(args.samples, "w") if args.samples else contextlib.nullcontext() as samples:
        for row in rows:
            if samples:  # written as each row ends, so that a long sweep's first rows can be read
                where = {k: row[k] for k in ("task", "difficulty", "recurrences", "exit", "decode")}
                samples.writelines(json.dumps(where | sample) + "\n" for sample in row.pop("samples"))
                samples.flush()
            results.append(row)
            diff = row["difficulty"] if row["difficulty"] is not None else "-"
            fmt = "-" if row["format"] is None else f"{row['format']:.3f}"
            print(
                f"{row['task']:<24} {diff:>4} {row['recurrences']:>3} {row['exit']:<12} {row['decode']:<6} "
                f"{row['accuracy']:>8.3f} {row['n']:>5} {row['mean_steps']:>6.2f} {row['max_steps']:>4} "
                f"{row['tokens_per_s']:>8.0f} {fmt}"
                + (f" acceptance {row['acceptance']:.2f}" if row["acceptance"] is not None else ""),
                flush=True,
            )
    settings: dict[tuple, list[dict]] = {}
    for row in results:
        settings.setdefault((row["exit"], row["decode"]), []).append(row)
    core = []
    for (spec, decode), rows in settings.items():
        print(f"\naccuracy by r ({decode}, exit {spec})\n" + scaling_table(by_r(rows)))
        for at_r in by_r(rows).values():
            if (value := chatcore(aggregate(at_r))) is not None:
                core.append({"recurrences": at_r[0]["recurrences"], "exit": spec, "decode": decode, "chatcore": value})
    out = {"checkpoint": args.checkpoint, "split": args.split, "results": results, "chatcore": core}
    if args.dynamics and model.core:
        depth = max(4 * configs.inference.recurrences, *recurrences)
        out["dynamics"] = settle_or_drift(model, tok, sets, depth, args.seed)
        print(f"\nsettle or drift (prompt pass, r = 1..{depth}): mean relative state change / KL of next-token")
        for row in out["dynamics"]:
            change = f"{row['state_change']:>9.4f} {row['distribution_change']:>9.4f}"
            print(f"{row['task']:<24} {row['iteration']:>3} {change}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
