"""Where adaptive exit spends depth inside a reasoning trace: per task and difficulty, the recurrences per token on
the tokens that carry a step's result (the digits after '=' or '->', a comparison's '<' or '>') and on the others
(copied operands, the trace's markup), and the tokens and recurrences per problem. A trace turns a harder problem
into more tokens of the same kind, so a mean over all tokens hides where the extra depth goes.

    python scripts/depth_by_token.py --checkpoint checkpoints/miniaxion-0.9m --exit kl:0.1 --split test --limit 50
"""

import argparse
import re
import sys

import torch

RESULT = re.compile(r"(?:=|->)\s*(-?\d+)|(?<!-)([<>])")  # on a trace whose tags are blanked


def result_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the step results in a trace (the tags' own '<' and '>' are not results)."""
    plain = re.sub(r"</?[A-Z]+>", lambda m: " " * len(m.group()), text)  # blank the tags, keeping offsets
    return [m.span(1) if m.group(1) else m.span(2) for m in RESULT.finditer(plain)]


def token_is_result(ends: list[int], spans: list[tuple[int, int]]) -> list[bool]:
    """Whether each token, ending at character `ends[i]` of the decoded text, overlaps a result span."""
    starts = [0] + ends[:-1]
    return [any(a < e and s < b for a, b in spans) for s, e in zip(starts, ends, strict=True)]


def main():
    from recurlm.errors import UserError

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--exit", default=None, help="exit criterion (default: the checkpoint's policy)")
    ap.add_argument("--recurrences", type=int, default=None, help="the cap (default: the checkpoint's policy)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--tasks", default="arithmetic,two_step,comparison,sorting")
    args = ap.parse_args()
    try:
        report(args)
    except UserError as e:
        sys.exit(f"error: {e}")


def report(args):
    from recurlm.checkpoint import load_checkpoint
    from recurlm.evaluation.scoring import task_sets
    from recurlm.inference.engine import Engine
    from recurlm.text.prompting import example_ids, example_question

    model, tok, cfg = load_checkpoint(args.checkpoint)
    model.eval()
    policy = cfg.inference.override(temperature=0.0, recurrences=args.recurrences, exit=args.exit)  # None: the run's
    engine = Engine(model, tok.digit_ids)
    print(f"exit {policy.exit}, cap r = {policy.recurrences}; steps per token: result tokens / others; per problem")
    for s in task_sets(args.tasks.split(","), cfg, args.split, args.limit):
        prompts = [example_ids(tok, example_question(tok, ex)) for ex in s.examples]
        with torch.no_grad():
            out = engine.generate(prompts, s.max_new_tokens, policy, stop_tokens=tok.stop_ids)
        result, other, tokens, steps = [], [], [], []
        for ids, used in zip(out.tokens, out.steps, strict=True):
            # steps[i] is the pass that chose token i (the last, if one more, the stop token's); the first pass is
            # the prompt's, run to the cap
            ids, used = ids[1:], used[1 : len(ids)]
            ends = [len(tok.decode(ids[: i + 1])) for i in range(len(ids))]
            for is_result, k in zip(token_is_result(ends, result_spans(tok.decode(ids))), used, strict=True):
                (result if is_result else other).append(k)
            tokens.append(len(used))
            steps.append(sum(used))

        def mean(v):
            return sum(v) / max(len(v), 1)

        print(
            f"{s.task:11s} difficulty {s.difficulty}: {mean(result):.2f} / {mean(other):.2f} steps a token "
            f"({len(result)} / {len(other)} tokens) | {mean(tokens):.1f} tokens, {mean(steps):.1f} steps a problem"
        )


if __name__ == "__main__":
    main()
