"""The `recurlm` command line (DESIGN §4). Every user error is one line on stderr and a non-zero exit code."""

import argparse
import json
import sys
import time

import torch

from recurlm.checkpoint import build_tokenizer, load_checkpoint
from recurlm.config import UserError, load_config, preset_names, read_preset
from recurlm.engine import Engine
from recurlm.model import build_model


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


def cmd_presets(args):
    rows = []
    for name in preset_names():
        cfg = load_config(name)["model"]
        model = build_model(cfg, "meta")  # no memory, no init: counting only
        r = cfg.default_recurrences
        rows.append(
            {
                "preset": name,
                "unique_params": model.param_groups()["unique"],
                "P": cfg.n_prelude,
                "R": cfg.n_core,
                "C": cfg.n_coda,
                "train_mean_r": cfg.recur_mean if cfg.n_core else 1,
                "effective_depth": model.effective_depth(r),
                "params_per_token": model.params_per_token(r),
                "flops_per_token": model.flops_per_token(r),
                "description": read_preset(name).get("description", ""),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'preset':<24} {'params':>13} {'P,R,C':>8} {'mean r':>6} {'depth':>5} {'params/tok':>13} {'FLOPs/tok':>14}")
    for row in rows:
        prc = f"{row['P']},{row['R']},{row['C']}"
        print(
            f"{row['preset']:<24} {row['unique_params']:>13,} {prc:>8} {row['train_mean_r']:>6g} "
            f"{row['effective_depth']:>5} {row['params_per_token']:>13,} {row['flops_per_token']:>14,}"
        )
    print("FLOPs/tok: forward, at the training mean r and the preset's full context (DESIGN §1).")


def cmd_generate(args):
    if args.checkpoint:
        model, tok, configs = load_checkpoint(args.checkpoint)
    elif args.preset:
        torch.manual_seed(args.seed)
        configs = load_config(args.preset, args.config, args.set)
        model, tok = build_model(configs["model"]), build_tokenizer(configs)
    else:
        raise UserError("generate needs --checkpoint DIR or --preset NAME")
    model.eval()
    engine = Engine(
        model,
        kv_budget=args.kv_budget,
        warm_start=args.warm_start,
        exit=args.exit,
        min_steps=args.min_steps,
        use_cache=not args.no_cache,
    )
    prompt = tok.encode(args.prompt)
    if not prompt:
        raise UserError("the prompt is empty")
    ids, steps, shown, t0 = [], [], "", time.perf_counter()
    for tokens, used in engine.stream(
        [prompt],
        args.max_new_tokens,
        recurrences=args.recurrences,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_tokens=[tok.eos_id],
        seed=args.seed,
    ):
        if tokens[0].item() == tok.eos_id:
            break
        ids.append(tokens[0].item())
        steps.append(used[0].item())
        text = tok.decode(ids)
        print(text[len(shown) :], end="", flush=True)  # print the difference: a byte-level char may span tokens
        shown = text
    dt = time.perf_counter() - t0
    print()
    if steps:
        print(
            f"[{len(ids)} tokens, {len(ids) / dt:.1f} tok/s, recurrences per token: mean "
            f"{sum(steps) / len(steps):.2f}, max {max(steps)}]",
            file=sys.stderr,
        )
        if args.show_steps:
            print("steps: " + " ".join(map(str, steps)), file=sys.stderr)


def build_parser() -> Parser:
    p = Parser(prog="recurlm", description="recurrent-depth small language models")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("presets", help="list presets with parameter and FLOP counts")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_presets)

    s = sub.add_parser("generate", help="generate text from a checkpoint, or from a random preset model")
    s.add_argument("--checkpoint")
    s.add_argument("--preset")
    s.add_argument("--config", help="TOML file overriding the preset")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--prompt", required=True)
    s.add_argument("--max-new-tokens", type=positive_int, default=64)
    s.add_argument("--recurrences", type=int, help="r (the max steps with --exit); default: the training mean")
    s.add_argument("--exit", help="adaptive exit: none, latent:EPS or kl:EPS (default: the model's)")
    s.add_argument("--min-steps", type=positive_int)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--kv-budget", type=positive_int, help="core KV slots per block (default: the model's)")
    s.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None)
    s.add_argument("--no-cache", action="store_true", help="recompute the whole sequence for every token")
    s.add_argument("--show-steps", action="store_true", help="print the recurrences used by each token")
    s.set_defaults(func=cmd_generate)
    return p


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
