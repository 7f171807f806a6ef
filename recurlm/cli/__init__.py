"""The `recurlm` command line (docs/design.md §4): one module per command, each registering its parser. Every
user error is one line on stderr and a non-zero exit code."""

import argparse
import sys

from recurlm.cli import chat, convert, data, eval, generate, presets, report, serve, train
from recurlm.cli.common import Parser
from recurlm.errors import Interrupted, UserError
from recurlm.machine import keep_freed_memory


def build_parser() -> Parser:
    p = Parser(prog="recurlm", description="recurrent-depth small language models")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (presets, train, eval, report):
        command.register(sub)
    data.register(sub, Parser)
    for command in (chat, serve):
        command.register(sub)
    convert.register(sub, Parser)
    generate.register(sub)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    keep_freed_memory()
    try:
        # lm_eval's own options follow `lm-eval` untouched (argparse would claim the ones that start with --)
        lm_eval = argv[:1] == ["lm-eval"]
        args = argparse.Namespace(args=argv[1:], func=convert.lm_eval) if lm_eval else build_parser().parse_args(argv)
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the file system's answer (a directory that cannot be made, a full disk): one line too
        print(f"error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
