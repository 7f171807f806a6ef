"""`recurlm train`: train a preset or config file into a run directory, or resume the run there."""

import sys
from pathlib import Path

from recurlm.checkpoint import read_values
from recurlm.cli.common import positive_int
from recurlm.config import STAGE, build_configs, config_values, merge, parse_overrides
from recurlm.errors import UserError


def register(sub):
    s = sub.add_parser("train", help="train a preset (or config file) into --out DIR")
    s.add_argument("--preset")
    s.add_argument("--config", help="TOML file overriding the preset")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--out", required=True)
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with the configuration it was started with "
        "(--set values given now change it; --preset and --config are for a new run); a new --out starts",
    )
    s.add_argument("--stop-after", type=positive_int, help="stop (with a checkpoint) after this many steps")
    s.set_defaults(func=run)


def recorded_values(out: Path) -> dict | None:
    """The configuration a run in `out` records in its checkpoint, if it has one."""
    has_run = (out / "checkpoint" / "trainer_state.json").is_file() and (out / "checkpoint" / "config.json").is_file()
    return read_values(out / "checkpoint") if has_run else None


def run(args):
    from recurlm.training.trainer import train  # keeps torch.distributed out of the other commands' start-up

    recorded = recorded_values(Path(args.out)) if args.resume else None
    if recorded is not None:  # the run's own settings, with this call's --set on top
        values = merge(recorded, parse_overrides(args.set, recorded.get(STAGE, {})), "--set")
        if args.set:
            print(f"resuming with {', '.join(args.set)} changed", file=sys.stderr)
    elif not args.preset and not args.config:
        raise UserError("train needs --preset NAME or --config FILE.toml")
    else:
        values = config_values(args.preset, args.config, args.set)
    _, state = train(build_configs(values), args.out, resume=args.resume, stop_after=args.stop_after)
    print(
        f"done: {state['step']} steps, {state['tokens']:,} tokens, {state['elapsed']:.0f}s -> {args.out}",
        file=sys.stderr,
    )
