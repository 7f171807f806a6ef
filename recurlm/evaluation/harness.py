"""recurlm as a model of EleutherAI's lm-evaluation-harness: `--model recurlm --model_args checkpoint=DIR,...`.

Importing this module registers the model type `recurlm` (lm_eval 0.4 reads no entry points, so its own `lm_eval`
command cannot find it: `recurlm lm-eval ARGS` is that command with the model registered). Model arguments:
`checkpoint` (required), `recurrences`, `exit`, `kv_budget`, `batch_size`.

Log-likelihoods come from one full-sequence forward at r (what training and multiple-choice scoring compute);
`exit` and `kv_budget` are decoding settings and apply to `generate_until`, which runs recurlm's engine.
"""

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from recurlm.checkpoint import load_checkpoint
from recurlm.inference.engine import Engine


@register_model("recurlm")
class RecurLM(LM):
    def __init__(self, checkpoint: str, recurrences=None, exit=None, kv_budget=None, batch_size=1, device="cpu", **_):
        super().__init__()
        if not device or device == "auto" or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm_eval's command line asks for cuda
        self.model, self.tok, configs = load_checkpoint(checkpoint, device)
        self.model.eval()
        self.policy = configs.inference.override(
            recurrences=int(recurrences) if recurrences is not None else None,
            exit=exit,
            kv_budget=int(kv_budget) if kv_budget is not None else None,
            temperature=0.0,
        )
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1  # 'auto' -> 1
        self.engine = Engine(self.model, self.tok.digit_ids)
        self.context = self.model.cfg.seq_len  # inference.context may have raised it
        self.prefix = self.tok.bos_ids  # every sequence starts as training started it

    # ---- scoring ----

    def _logprobs(self, ids: list[int], n_prompt: int) -> torch.Tensor:
        """log p(ids[i + 1] | ids[: i + 1]) for every i: one forward at r. Abacus ids count the first n_prompt tokens'
        numbers as a prompt's and the rest as generated ones (an addition model's reversed sum), as in decoding."""
        x, digit_pos = self.engine.right_pad([ids[:-1]], [min(n_prompt, len(ids) - 1)])
        with torch.no_grad():
            logits = self.model(x, self.policy.recurrences, digit_pos=digit_pos)
        return F.log_softmax(logits[0].float(), dim=-1)

    def score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Summed log-probability of `continuation` after `context` (cut to the model's context from the left),
        and whether greedy decoding would have produced it."""
        ids = (context + continuation)[-(self.context + 1) :]
        lp = self._logprobs(ids, len(ids) - len(continuation))[-len(continuation) :]
        target = torch.tensor(continuation, device=lp.device)
        picked = lp.gather(1, target[:, None])[:, 0]
        return float(picked.sum()), bool((lp.argmax(-1) == target).all())

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            context, continuation = req.args
            out.append(self.score(self.prefix + self.tok.encode(context), self.tok.encode(continuation)))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            ids = self.tok.encode(req.args[0])
            prefix = self.prefix[0] if self.prefix else self.tok.eos_id
            windows = map(make_disjoint_window, get_rolling_token_windows(ids, prefix, self.context, 1))
            out.append(sum(self.score(ctx, cont)[0] for ctx, cont in windows))
        return out

    # ---- generation ----

    def generate_until(self, requests, disable_tqdm: bool = False):
        """Greedy (or sampled, with `temperature`) continuations, `batch_size` requests decoded together, each cut
        at its first `until` string and at `max_gen_toks` tokens."""
        out = []
        for i in range(0, len(requests), self.batch_size):
            chunk = [req.args for req in requests[i : i + self.batch_size]]
            prompts = [(self.prefix + self.tok.encode(context))[-(self.context - 1) :] for context, _ in chunk]
            budgets = [
                min(int(kw.get("max_gen_toks", 256)), self.context - len(p))
                for p, (_, kw) in zip(prompts, chunk, strict=True)
            ]
            temperature = float(chunk[0][1].get("temperature", 0.0) or 0.0)
            policy = self.policy.override(temperature=temperature)
            gen = self.engine.generate(prompts, max(budgets), policy, self.tok.stop_ids)
            for tokens, budget, (_, kw) in zip(gen.tokens, budgets, chunk, strict=True):
                text = self.tok.decode(tokens[:budget])
                until = kw.get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    text = text.split(stop)[0]
                out.append(text)
        return out


def main(argv: list[str]) -> None:
    """lm_eval's command line with the `recurlm` model type registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
