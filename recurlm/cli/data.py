"""`recurlm data export`: a task's examples as JSONL (docs/design.md §3)."""

import sys

from recurlm.cli.common import output_file, positive_int
from recurlm.errors import UserError
from recurlm.tasks import get_task, write_jsonl


def register(sub, parser_class):
    data = sub.add_parser("data", help="task data").add_subparsers(
        dest="data_command", required=True, parser_class=parser_class
    )
    s = data.add_parser("export", help="write a task's examples as JSONL (docs/design.md §3)")
    s.add_argument("--task", required=True)
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--n", type=positive_int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--difficulty", type=positive_int, help="only this difficulty (default: all, in turn)")
    s.add_argument("--out", required=True, type=output_file)
    s.set_defaults(func=run)


def run(args):
    task = get_task(args.task)
    examples = task.generate(args.split, args.n, seed=args.seed, difficulty=args.difficulty)
    if not examples:
        raise UserError(f"no {args.split} examples of {args.task} at difficulty {args.difficulty}")
    write_jsonl(examples, args.out)
    print(f"wrote {len(examples)} examples to {args.out}", file=sys.stderr)
