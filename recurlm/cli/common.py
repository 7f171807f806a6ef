"""What the commands share: one-line argument errors, argument types, and the inference policy as flags."""

import argparse
import os
from pathlib import Path

from recurlm.config import EXIT_HELP, InferencePolicy
from recurlm.errors import UserError

COMPILE_HELP = "torch.compile the single-token step at a fixed r (about 4x faster at batch 1; compiles per r first)"


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors print usage; keep them to one line like ours
        raise UserError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def output_file(text: str) -> str:
    """A file to write results to, checked before the work that fills it: a wrong path fails at once with one
    line, not with a traceback after an hour's evaluation."""
    path = Path(text)
    parent = path.parent  # '.' for a bare name
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"no directory {parent} to write {path.name} in")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text}: permission denied")
    return text


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"recurrences must be integers >= 1, got {text!r}")
    return values


def add_policy_flags(s: argparse.ArgumentParser, sampling: bool = True, depth: bool = True):
    """The inference policy's fields as flags; each one given overrides the checkpoint's (or preset's) value."""
    if depth:
        s.add_argument("--recurrences", type=int, help="r (the max steps with --exit); default: the run's")
        s.add_argument("--exit", help=f"adaptive exit: {EXIT_HELP} (default: the run's)")
    s.add_argument("--min-steps", type=positive_int, help="adaptive exit fires after at least this many steps")
    s.add_argument(
        "--max-steps", type=positive_int, help="cap on adaptive exit's steps per generated token (default: r)"
    )
    s.add_argument(
        "--prompt-exit", action="store_true", default=None, help="the prompt's tokens exit under the same criterion"
    )
    s.add_argument("--kv-budget", type=positive_int, help="core KV slots per block (r: exact; 1: memory flat in r)")
    s.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None)
    s.add_argument("--context", type=positive_int, help="context in tokens, e.g. longer than trained (NoPE, Abacus)")
    if sampling:
        s.add_argument("--temperature", type=float, help="0 = greedy")
        s.add_argument("--top-k", type=int)
        s.add_argument("--top-p", type=float)


def policy_from(args, base: InferencePolicy, depth: bool = True) -> InferencePolicy:
    """The run's policy with the flags given on the command line replacing its fields (`depth`: --recurrences and
    --exit too, when they are one value each rather than a sweep)."""
    names = ("recurrences", "exit") if depth else ()
    names += ("min_steps", "max_steps", "prompt_exit", "kv_budget", "warm_start", "context")
    names += ("temperature", "top_k", "top_p")
    return base.override(**{k: getattr(args, k, None) for k in names})
