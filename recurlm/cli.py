"""The `recurlm` command line (DESIGN §4). Every user error is one line on stderr and a non-zero exit code."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from recurlm.checkpoint import build_tokenizer, load_checkpoint
from recurlm.config import load_config, preset_names, read_preset
from recurlm.data import prompt_ids, task_from_configs, trained_task_names
from recurlm.engine import Engine
from recurlm.errors import UserError
from recurlm.evaluate import aggregate, chatcore, file_sets, sweep, task_sets
from recurlm.model import build_model
from recurlm.tasks import get_task, write_jsonl
from recurlm.tools import Calculator


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
        configs = load_config(name)
        cfg = configs["model"]
        model = build_model(cfg, "meta")  # no memory, no init: counting only
        r = configs["inference"].recurrences
        rows.append(
            {
                "preset": name,
                "unique_params": model.param_groups()["unique"],
                "P": cfg.n_prelude,
                "R": cfg.n_core,
                "C": cfg.n_coda,
                "train_mean_r": configs["recurrence"].mean if cfg.n_core else 1,
                "recurrences": r,
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
    print("FLOPs/tok: forward, at the inference r and the preset's full context (DESIGN §1).")


COMPILE_HELP = "torch.compile the single-token step at a fixed r (about 4x faster at batch 1; compiles per r first)"


def add_policy_flags(s: argparse.ArgumentParser, sampling: bool = True):
    """The inference policy's fields as flags; each one given overrides the checkpoint's (or preset's) value."""
    s.add_argument("--min-steps", type=positive_int, help="adaptive exit fires after at least this many steps")
    s.add_argument(
        "--max-steps", type=positive_int, help="cap on adaptive exit's steps per generated token (default: r)"
    )
    s.add_argument(
        "--prompt-exit", action="store_true", default=None, help="the prompt's tokens exit under the same criterion"
    )
    s.add_argument("--kv-budget", type=positive_int, help="core KV slots per block (r: exact; 1: memory flat in r)")
    s.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None)
    if sampling:
        s.add_argument("--temperature", type=float, help="0 = greedy")
        s.add_argument("--top-k", type=int)
        s.add_argument("--top-p", type=float)


def policy_from(args, base):
    """The run's policy with the flags given on the command line replacing its fields."""
    values = {k: getattr(args, k, None) for k in ("min_steps", "max_steps", "prompt_exit", "kv_budget", "warm_start")}
    values |= {k: getattr(args, k, None) for k in ("temperature", "top_k", "top_p")}
    return base.override(**values)


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
    if args.bf16:
        model.to(torch.bfloat16)
    policy = policy_from(args, configs["inference"]).override(recurrences=args.recurrences, exit=args.exit)
    if args.no_cache:
        if args.exit not in (None, "none"):
            raise UserError("adaptive exit needs the KV cache (drop --no-cache)")
        policy = policy.override(exit="none")  # the run's default exit is a default, not a request
    if not args.prompt:
        raise UserError("the prompt is empty")
    # A run asks its questions the way it trained (the reasoning suite wraps them in <INST>...</INST>), and answers a
    # prompt of one of its tasks in that task's normal form (addition models write sums least-significant digit
    # first); --raw passes the prompt through and prints the tokens as generated.
    tasks = [] if args.raw else [task_from_configs(n, configs) for n in trained_task_names(configs)]
    templates = {t.prompt_template for t in tasks}
    prompt = args.prompt
    if len(templates) == 1 and (template := templates.pop()) != "{}":
        head = template.split("{}")[0]
        prompt = prompt if prompt.startswith(head) else template.format(prompt)
    task = next((t for t in tasks if t.recognises(prompt)), None)
    ids, steps, shown, stops, t0 = [], [], "", tok.stop_ids, time.perf_counter()
    stream = Engine(model, tok.digit_ids, compile=args.compile).stream(
        [prompt_ids(tok, prompt)],
        args.max_new_tokens,
        policy,
        stop_tokens=stops,
        seeds=[args.seed],
        use_cache=not args.no_cache,
        tool=Calculator.for_tokenizer(tok),
    )
    for _, tokens, used in stream:
        steps.append(used[0])
        if tokens[0] in stops:
            break
        ids.append(tokens[0])
        if task is None:
            text = tok.decode(ids)
            print(text[len(shown) :], end="", flush=True)  # print the difference: a byte-level char may span tokens
            shown = text
    dt = time.perf_counter() - t0
    print(task.extract(tok.decode(ids)) if task is not None else "")
    if steps:
        print(
            f"[{len(ids)} tokens, {len(steps) / dt:.1f} tok/s, recurrences per token: mean "
            f"{sum(steps) / len(steps):.2f}, max {max(steps)}]",
            file=sys.stderr,
        )
        if args.show_steps:
            print("steps: " + " ".join(map(str, steps)), file=sys.stderr)


def cmd_chat(args):
    from recurlm.serve.terminal import ChatSession, run

    model, tok, configs = load_checkpoint(args.checkpoint)
    policy = policy_from(args, configs["inference"]).override(recurrences=args.recurrences, exit=args.exit)
    run(ChatSession(model.eval(), tok, configs, policy, args.max_new_tokens, args.compile))


def cmd_serve(args):
    try:
        import uvicorn

        from recurlm.serve.api import create_app
    except ImportError:
        raise UserError("recurlm serve needs fastapi and uvicorn: pip install 'recurlm[serve]'") from None

    # On a CPU the decoding thread leaves a core to the HTTP side (event loop, JSON, SSE): with every core in torch's
    # pool the two fight and 16 streams got 2.8x one stream's tokens/s instead of 4.7x (benchmarks/serve.py).
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) - 1))
    model, tok, configs = load_checkpoint(args.checkpoint)
    configs["inference"] = policy_from(args, configs["inference"]).override(
        recurrences=args.recurrences, exit=args.exit
    )
    name = args.model_name or Path(args.checkpoint).resolve().name
    app = create_app(model.eval(), tok, configs, name, args.max_batch, args.max_queue, args.api_key)
    print(f"serving {name} on http://{args.host}:{args.port} (OpenAI API under /v1, web chat at /)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def cmd_train(args):
    from recurlm.train import train  # keeps torch.distributed out of the other commands' start-up

    if not args.preset and not args.config:
        raise UserError("train needs --preset NAME or --config FILE.toml")
    configs = load_config(args.preset, args.config, args.set)
    _, state = train(configs, args.out, resume=args.resume, stop_after=args.stop_after)
    print(
        f"done: {state['step']} steps, {state['tokens']:,} tokens, {state['elapsed']:.0f}s -> {args.out}",
        file=sys.stderr,
    )


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"recurrences must be integers >= 1, got {text!r}")
    return values


def parse_draft(text: str) -> tuple[int, int]:
    r, _, k = text.partition(":")
    try:
        draft = int(r), int(k or 4)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R:K (draft recurrences : draft tokens), got {text!r}") from None
    if min(draft) < 1:
        raise argparse.ArgumentTypeError(f"draft recurrences and tokens must be >= 1, got {text!r}")
    return draft


def cmd_eval(args):
    from recurlm.report import by_r, scaling_table

    model, tok, configs = load_checkpoint(args.checkpoint)
    if args.data:
        sets = [s for path in args.data for s in file_sets(path, configs, args.limit, args.max_new_tokens)]
    elif args.task:
        sets = task_sets(args.task, configs, args.split, args.limit or 200, args.seed, args.max_new_tokens)
    else:
        raise UserError("eval needs --task NAME or --data FILE.jsonl")
    policy = policy_from(args, configs["inference"])
    exits = args.exit or [None]
    if args.max_steps and all((e or policy.exit) == "none" for e in exits):
        raise UserError("--max-steps caps adaptive exit: add --exit latent:EPS or kl:EPS")
    recurrences = args.recurrences or [policy.recurrences]
    print(
        f"{'task':<24} {'diff':>4} {'r':>3} {'exit':<12} {'decode':<6} {'accuracy':>8} {'n':>5} {'steps':>6} "
        f"{'max':>4} {'tok/s':>8} format"
    )
    results = []
    for row in sweep(model, tok, sets, policy, recurrences, exits, args.beam, args.batch_size, args.draft):
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "results": results, "chatcore": core}, f, indent=1)


def cmd_report(args):
    from recurlm.report import DEFAULT_EXITS, write_report

    out = write_report(args.runs, args.out, args.recurrences, args.exit or DEFAULT_EXITS, args.limit)
    print(f"wrote {out / 'report.md'} and its plots", file=sys.stderr)


def cmd_compare(args):
    from recurlm.compare import compare

    table = compare(args.run, args.baseline, args.task, args.recurrences, args.limit, args.batch_size)
    print(table)
    if args.out:
        Path(args.out).write_text(table)


def cmd_import_nanochat(args):
    from recurlm.checkpoint import save_checkpoint
    from recurlm.importers.nanochat import import_nanochat

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists: choose another --out, or --force to replace it")
    model, tok, configs = import_nanochat(args.checkpoint_dir, args.tokenizer, args.step)
    save_checkpoint(out, model, tok, configs)
    cfg = configs["model"]
    blocks = f"(P,R,C) = ({cfg.n_prelude},{cfg.n_core},{cfg.n_coda})" if cfg.n_core else f"{cfg.n_prelude} layers"
    print(f"imported {blocks}, width {cfg.d_model}, vocab {tok.vocab_size} into {out}")


def cmd_export_hf(args):
    from recurlm.export.hf import export_hf

    out = export_hf(args.checkpoint, args.out_dir, args.force)
    print(f"wrote {out}: load it with AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")


def cmd_lm_eval(args):
    try:
        from recurlm.harness import main as harness_main
    except ImportError:
        raise UserError("recurlm lm-eval needs lm-evaluation-harness: pip install 'recurlm[lm-eval]'") from None
    harness_main(args.args)


def cmd_data_export(args):
    task = get_task(args.task)
    examples = task.generate(args.split, args.n, seed=args.seed, difficulty=args.difficulty)
    if not examples:
        raise UserError(f"no {args.split} examples of {args.task} at difficulty {args.difficulty}")
    write_jsonl(examples, args.out)
    print(f"wrote {len(examples)} examples to {args.out}", file=sys.stderr)


def build_parser() -> Parser:
    p = Parser(prog="recurlm", description="recurrent-depth small language models")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("presets", help="list presets with parameter and FLOP counts")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_presets)

    s = sub.add_parser("train", help="train a preset (or config file) into --out DIR")
    s.add_argument("--preset")
    s.add_argument("--config", help="TOML file overriding the preset")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--stop-after", type=positive_int, help="stop (with a checkpoint) after this many steps")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="score a checkpoint on tasks or a JSONL file at several recurrences")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--task", action="append", help="task name (repeatable)")
    s.add_argument("--data", action="append", help="JSONL of {prompt, answer, ...} examples (repeatable)")
    s.add_argument("--recurrences", type=parse_int_list, help="e.g. 1,2,4,8 (default: the run's)")
    s.add_argument(
        "--exit", action="append", help="adaptive exit: none, latent:EPS or kl:EPS, repeatable (default: the run's)"
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
    add_policy_flags(s, sampling=False)  # evaluation decodes greedily
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--limit", type=positive_int, help="examples per task and difficulty (default 200)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=positive_int, default=128)
    s.add_argument("--json", help="write the results here")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("report", help="report.md and PNG plots of runs (accuracy vs r, adaptive exit, costs)")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--out", help="directory for report.md and the plots (default: RUN_DIR/report)")
    s.add_argument("--recurrences", type=parse_int_list, default=[1, 2, 4, 8, 16], help="for runs not evaluated yet")
    s.add_argument("--exit", action="append", help="exit thresholds to sweep, for runs not evaluated yet")
    s.add_argument("--limit", type=positive_int, default=100, help="examples per task and difficulty, likewise")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("compare", help="a recursive run against plain GPTs of equal parameters and equal FLOPs")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("--baseline", action="append", default=[], help="a trained plain run (default: train both)")
    s.add_argument("--task", action="append", help="task name (default: the run's training tasks)")
    s.add_argument("--recurrences", type=parse_int_list, default=[2, 4, 8, 16])
    s.add_argument("--limit", type=positive_int, default=200, help="examples per task and difficulty")
    s.add_argument("--batch-size", type=positive_int, default=128)
    s.add_argument("--out", help="also write the tables here (markdown)")
    s.set_defaults(func=cmd_compare)

    data = sub.add_parser("data", help="task data").add_subparsers(
        dest="data_command", required=True, parser_class=Parser
    )
    s = data.add_parser("export", help="write a task's examples as JSONL (DESIGN §3)")
    s.add_argument("--task", required=True)
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--n", type=positive_int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--difficulty", type=positive_int, help="only this difficulty (default: all, in turn)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_data_export)

    s = sub.add_parser("chat", help="talk to a checkpoint in the terminal (/help inside lists the commands)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--recurrences", type=positive_int, help="r (the max steps with --exit); default: the run's")
    s.add_argument("--exit", help="adaptive exit: none, latent:EPS or kl:EPS (default: the run's)")
    s.add_argument("--max-new-tokens", type=positive_int, help="reply budget (default: the run's tasks' own)")
    add_policy_flags(s)
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.set_defaults(func=cmd_chat)

    s = sub.add_parser("serve", help="an OpenAI-compatible server with continuous batching")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=positive_int, default=8000)
    s.add_argument("--model-name", help="the model's id in the API (default: the checkpoint directory's name)")
    s.add_argument("--max-batch", type=positive_int, default=64, help="requests decoded together")
    s.add_argument("--max-queue", type=positive_int, default=256, help="requests waiting; beyond: 429")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    s.add_argument("--threads", type=positive_int, help="torch threads on a CPU (default: all cores but one)")
    s.add_argument("--recurrences", type=positive_int, help="default r of requests (default: the run's)")
    s.add_argument("--exit", help="default adaptive exit of requests (default: the run's)")
    add_policy_flags(s)
    s.set_defaults(func=cmd_serve)

    source = sub.add_parser("import", help="another project's checkpoint as a recurlm checkpoint").add_subparsers(
        dest="source", required=True, parser_class=Parser
    )
    s = source.add_parser("nanochat", help="nanochat's model_<step>.pt + meta_<step>.json (plain or recursive)")
    s.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR", help="the directory holding model_<step>.pt")
    s.add_argument("--step", type=int, help="default: the latest")
    s.add_argument("--tokenizer", help="directory of tokenizer.pkl (default: CHECKPOINT_DIR/../../tokenizer)")
    s.add_argument("--out", required=True)
    s.add_argument("--force", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=cmd_import_nanochat)

    target = sub.add_parser("export", help="a checkpoint in another tool's format").add_subparsers(
        dest="target", required=True, parser_class=Parser
    )
    s = target.add_parser("hf", help="a Hugging Face transformers model directory (trust_remote_code=True)")
    s.add_argument("checkpoint", metavar="CHECKPOINT")
    s.add_argument("out_dir", metavar="OUT_DIR")
    s.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    s.set_defaults(func=cmd_export_hf)

    s = sub.add_parser("lm-eval", help="lm_eval's command line with --model recurlm registered", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER, help="lm_eval's arguments, e.g. --model recurlm --tasks ...")
    s.set_defaults(func=cmd_lm_eval)

    s = sub.add_parser("generate", help="generate text from a checkpoint, or from a random preset model")
    s.add_argument("--checkpoint")
    s.add_argument("--preset")
    s.add_argument("--config", help="TOML file overriding the preset")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--prompt", required=True)
    s.add_argument("--max-new-tokens", type=positive_int, default=64)
    s.add_argument("--recurrences", type=int, help="r (the max steps with --exit); default: the run's")
    s.add_argument("--exit", help="adaptive exit: none, latent:EPS or kl:EPS (default: the run's)")
    add_policy_flags(s)
    s.add_argument("--no-cache", action="store_true", help="recompute the whole sequence for every token")
    s.add_argument("--raw", action="store_true", help="print the tokens as generated, not the task's answer form")
    s.add_argument("--show-steps", action="store_true", help="print the recurrences used by each token")
    s.add_argument("--bf16", action="store_true", help="bf16 weights and cache: faster, outputs may differ from fp32")
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.set_defaults(func=cmd_generate)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        # lm_eval's own options follow `lm-eval` untouched (argparse would claim the ones that start with --)
        lm_eval = argv[:1] == ["lm-eval"]
        args = argparse.Namespace(args=argv[1:], func=cmd_lm_eval) if lm_eval else build_parser().parse_args(argv)
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
