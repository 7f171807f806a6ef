"""`recurlm report` and `recurlm compare`: the markdown and plots of runs, and a run against plain baselines."""

import sys
from pathlib import Path

from recurlm.cli.common import output_file, parse_int_list, positive_int


def register(sub):
    s = sub.add_parser("report", help="report.md and PNG plots of runs (accuracy vs r, adaptive exit, costs)")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--out", help="directory for report.md and the plots (default: RUN_DIR/report)")
    s.add_argument(
        "--recurrences", type=parse_int_list, help="for runs not evaluated yet (default: 1 to 4x the run's r)"
    )
    s.add_argument("--exit", action="append", help="exit thresholds to sweep, for runs not evaluated yet")
    s.add_argument("--limit", type=positive_int, default=100, help="examples per task and difficulty, likewise")
    s.set_defaults(func=report)

    s = sub.add_parser("compare", help="a recursive run against plain GPTs of equal parameters and equal FLOPs")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("--baseline", action="append", default=[], help="a trained plain run (default: train both)")
    s.add_argument("--task", action="append", help="task name (default: the run's training tasks)")
    s.add_argument("--recurrences", type=parse_int_list, default=[2, 4, 8, 16])
    s.add_argument("--limit", type=positive_int, default=200, help="examples per task and difficulty")
    s.add_argument("--batch-size", type=positive_int, default=128)
    s.add_argument("--out", type=output_file, help="also write the tables here (markdown)")
    s.set_defaults(func=compare)


def report(args):
    from recurlm.analysis.report import DEFAULT_EXITS, write_report

    out = write_report(args.runs, args.out, args.recurrences, args.exit or DEFAULT_EXITS, args.limit)
    print(f"wrote {out / 'report.md'} and its plots", file=sys.stderr)


def compare(args):
    from recurlm.analysis.compare import compare

    table = compare(args.run, args.baseline, args.task, args.recurrences, args.limit, args.batch_size)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
