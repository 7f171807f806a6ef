"""`recurlm generate`: one prompt's continuation from a checkpoint, or from a preset's random model."""

import sys
import time

import torch

from recurlm.checkpoint import build_tokenizer, load_checkpoint
from recurlm.cli.common import COMPILE_HELP, add_policy_flags, policy_from, positive_int
from recurlm.config import load_config
from recurlm.errors import UserError
from recurlm.inference.engine import Engine
from recurlm.inference.generation import Sequence
from recurlm.inference.generation import run as generate_together
from recurlm.network.model import build_model
from recurlm.text.calculator import Calculator
from recurlm.text.prompting import Prompter


def register(sub):
    s = sub.add_parser("generate", help="generate text from a checkpoint, or from a random preset model")
    s.add_argument("--checkpoint")
    s.add_argument("--preset")
    s.add_argument("--config", help="TOML file overriding the preset")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--prompt", required=True)
    s.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help="budget (default: the task's own, or the prompt's length when longer; 256 without tasks)",
    )
    add_policy_flags(s)
    s.add_argument("--no-cache", action="store_true", help="recompute the whole sequence for every token")
    s.add_argument("--raw", action="store_true", help="print the tokens as generated, not the task's answer form")
    s.add_argument(
        "--no-template", action="store_true", help="continue the prompt as typed, without the tasks' template"
    )
    s.add_argument("--show-steps", action="store_true", help="print each token with the recurrences behind it")
    s.add_argument("--bf16", action="store_true", help="bf16 weights and cache: faster, outputs may differ from fp32")
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.set_defaults(func=run)


def why_it_stopped(seq: Sequence, context: int) -> str | None:
    """A note when the output was cut rather than finished."""
    if seq.finish == "length":
        return f"stopped at the {seq.max_new_tokens}-token budget (--max-new-tokens raises it)"
    if seq.finish == "context":
        return f"stopped: the context ({context} tokens) is full"
    return None


def steps_table(tok, seq: Sequence) -> str:
    """Each generated token beside the recurrences behind it, the stop token's last (when there is one)."""
    tokens = [repr(tok.decode([t])) for t in seq.generated]
    tokens += ["(stop)"] * (len(seq.steps) - len(tokens))
    return "\n".join(f"{t:>12} {k}" for t, k in zip(tokens, seq.steps, strict=True))


def run(args):
    if args.checkpoint:
        model, tok, configs = load_checkpoint(args.checkpoint)
    elif args.preset:
        torch.manual_seed(args.seed)
        configs = load_config(args.preset, args.config, args.set)
        model, tok = build_model(configs.model), build_tokenizer(configs)
    else:
        raise UserError("generate needs --checkpoint DIR or --preset NAME")
    model.eval()
    if args.bf16:
        model.to(torch.bfloat16)
    base = configs.inference
    if args.no_cache:
        if args.exit not in (None, "none"):
            raise UserError("adaptive exit needs the KV cache (drop --no-cache)")
        base = base.override(exit="none")  # the run's default exit is a default, not a request
    policy = policy_from(args, base)
    model.set_context(policy.context)
    if not args.prompt:
        raise UserError("the prompt is empty")
    # A run is asked the way it trained (the reasoning suite wraps questions in <INST>...</INST>), and a prompt of
    # one of its tasks is answered in that task's normal form (addition models write sums least-significant digit
    # first); --raw prints the tokens as generated, --no-template continues the prompt as typed.
    prompter = Prompter(tok, configs)
    if prompter.chat:
        ids, task = prompter.messages([{"role": "user", "content": args.prompt}]), None
    elif args.no_template:
        ids, task = prompter.completion(args.prompt), None
    else:
        ids, task = prompter.question(args.prompt)
    if args.raw:
        task = None
    # a task's answer may be as long as its prompt: a model that extrapolates (addition-length) adds longer numbers
    # than the budget of the task it trained on holds
    budget = args.max_new_tokens or (max(task.max_new_tokens, len(ids)) if task else prompter.max_new_tokens)
    seq = Sequence(ids, budget, policy, args.seed)
    engine = Engine(model, tok.digit_ids, compile=args.compile)
    shown, t0 = "", time.perf_counter()
    steps = generate_together(engine, [seq], tok.stop_ids, Calculator.for_tokenizer(tok), use_cache=not args.no_cache)
    for _ in steps:
        if task is None:
            text = tok.decode(seq.generated)
            print(text[len(shown) :], end="", flush=True)  # print the difference: a byte-level char may span tokens
            shown = text
    dt = time.perf_counter() - t0
    print(task.extract(tok.decode(seq.generated)) if task is not None else "")
    n = len(seq.generated)
    if not n:
        print("[the model ended its reply at once: no tokens]", file=sys.stderr)
    looped = model.cfg.n_core > 0 and seq.steps  # a plain GPT has no recurrences to report
    mean = sum(seq.steps) / max(len(seq.steps), 1)
    depth = f", recurrences per token: mean {mean:.2f}, max {max(seq.steps)}" if looped else ""
    print(f"[{n} token{'s' * (n != 1)}, {len(seq.steps) / dt:.1f} tok/s{depth}]", file=sys.stderr)
    if args.show_steps and looped:
        print("recurrences per token:", file=sys.stderr)
        print(steps_table(tok, seq), file=sys.stderr)
    if (note := why_it_stopped(seq, model.cfg.seq_len)) is not None:
        print(f"[{note}]", file=sys.stderr)
