"""`recurlm chat`: talk to a checkpoint in the terminal.

A chat-format model (nanochat's, imported) keeps the conversation; a task model is asked one question at a time in
its own prompt format (MiniAxion's `<INST>…</INST>`: the `<THINK>` trace is shown dimmed and the answer plain; the
addition model's sums appear in normal digit order). Replies stream token by token. Ctrl-C stops the reply and
keeps the session; Ctrl-D (or /quit) ends it. A conversation that outgrows the context drops its oldest turns (and
says so); a message that alone does not fit is refused, and the session goes on.
"""

import sys

from recurlm.checkpoint import load_checkpoint
from recurlm.cli.common import COMPILE_HELP, add_policy_flags, policy_from, positive_int
from recurlm.config import EXIT_HELP, InferencePolicy, RunConfig
from recurlm.errors import UserError
from recurlm.inference.engine import Engine
from recurlm.inference.generation import Sequence
from recurlm.inference.generation import run as generate_together
from recurlm.text.calculator import Calculator
from recurlm.text.prompting import Prompter

HELP = (
    "/r N        recurrences per token (with an exit: its cap)\n"
    f"/exit SPEC  adaptive exit: {EXIT_HELP} (off: none)\n"
    "/temp T     sampling temperature (0: greedy)\n"
    "            (/r, /exit or /temp alone: the current value)\n"
    "/steps      show or hide the recurrences each token used\n"
    "/reset      forget the conversation\n"
    "/help       this list;  Ctrl-C stops a reply, Ctrl-D quits"
)
DIM, PLAIN = "\033[2m", "\033[0m"
TRACE_STYLE = {"<THINK>": DIM, "</THINK>": PLAIN, "<STEP>": "  ", "</STEP>": "\n", "<ANS>": "", "</ANS>": ""}


def register(sub):
    s = sub.add_parser("chat", help="talk to a checkpoint in the terminal (/help inside lists the commands)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--max-new-tokens", type=positive_int, help="reply budget (default: the run's tasks' own)")
    add_policy_flags(s)
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.set_defaults(func=main)


def main(args):
    model, tok, configs = load_checkpoint(args.checkpoint)
    policy = policy_from(args, configs.inference)
    model.set_context(policy.context)
    run(ChatSession(model.eval(), tok, configs, policy, args.max_new_tokens, args.compile))


class ChatSession:
    def __init__(
        self, model, tok, configs: RunConfig, policy: InferencePolicy, max_new_tokens: int | None = None, compile=False
    ):
        self.model, self.tok, self.policy = model, tok, policy
        self.engine, self.tool = Engine(model, tok.digit_ids, compile=compile), Calculator.for_tokenizer(tok)
        self.prompter = Prompter(tok, configs)
        self.chat, self.template = self.prompter.chat, self.prompter.template
        self.max_new_tokens = max_new_tokens or self.prompter.max_new_tokens
        self.history: list[dict] = []
        self.show_steps = False

    def command(self, line: str) -> str:
        """Run a /command; returns what to print."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("r", "exit", "temp"):
            try:  # with a value: set it; alone: show it
                if arg and name == "r":
                    self.policy = self.policy.override(recurrences=number(arg, int, "a whole number of recurrences"))
                elif arg and name == "exit":
                    self.policy = self.policy.override(exit="none" if arg in ("off", "none") else arg)
                elif arg:
                    self.policy = self.policy.override(temperature=number(arg, float, "a temperature such as 0.7"))
            except UserError as e:  # the policy checks every value (config.py): its message says what is wrong
                return f"/{name}: bad value {arg!r} ({e})"
            return self.setting(name)
        if name == "steps":
            self.show_steps = not self.show_steps
            return f"steps {'shown' if self.show_steps else 'hidden'}"
        if name == "reset":
            self.history = []
            return "conversation forgotten"
        if name == "help":
            return HELP
        return f"unknown command /{name}; /help lists them"

    def setting(self, name: str) -> str:
        p = self.policy
        values = {"r": f"r = {p.recurrences}", "exit": f"exit = {p.exit}", "temp": f"temperature = {p.temperature:g}"}
        return values[name]

    def _prompt(self, text: str, out) -> tuple[list[int], object] | None:
        """The prompt ids and the task that recognises the question; None if the message cannot fit."""
        context = self.model.cfg.seq_len
        message = {"role": "user", "content": text}
        ids, task = self.prompter.question(text) if not self.chat else (self.prompter.messages([message]), None)
        if len(ids) >= context:  # it does not fit even alone: refuse it, keep the conversation
            out.write(f"[this message is {len(ids)} tokens; the context holds {context}: shorten it]\n")
            return None
        if self.chat:
            turns = self.history
            while len(ids := self.prompter.messages([*turns, message])) >= context:
                turns = turns[2:]  # the oldest exchange: a user message and its reply
            if dropped := (len(self.history) - len(turns)) // 2:
                plural = "s" * (dropped > 1)
                out.write(f"{DIM}[the conversation outgrew the context: dropped its oldest {dropped} exchange{plural}]")
                out.write(PLAIN + "\n")
                self.history = turns
        return ids, task

    def reply(self, text: str, out=sys.stdout) -> str:
        """Stream the model's reply to `text` into `out`; returns the reply's text. KeyboardInterrupt stops it."""
        prompt = self._prompt(text, out)
        if prompt is None:
            return ""
        ids, task = prompt
        seq = Sequence(ids, min(self.max_new_tokens, self.model.cfg.seq_len - len(ids)), self.policy)
        plain: list[int] = []  # tokens of the current run of ordinary text, decoded together (a char may span tokens)
        shown = ""
        try:
            for events in generate_together(self.engine, [seq], self.tok.stop_ids, self.tool):
                token = events[0].token
                if task is not None or token in self.tok.stop_ids:  # a task's answer is shown in its form at the end
                    continue
                piece = self.tok.decode([token])
                if piece in TRACE_STYLE:
                    out.write(TRACE_STYLE[piece])
                    plain, shown = [], ""
                else:
                    plain.append(token)
                    decoded = self.tok.decode(plain)
                    out.write(decoded[len(shown) :])
                    shown = decoded
                out.flush()
        except KeyboardInterrupt:
            out.write(PLAIN + " [stopped]")
        answer = self.tok.decode(seq.generated)
        out.write((task.extract(answer) if task is not None else "") + PLAIN + "\n")
        if not seq.generated:
            out.write(f"{DIM}[the model ended its reply at once: nothing to show]{PLAIN}\n")
        if seq.finish in ("length", "context"):
            out.write(f"{DIM}[cut at {len(seq.generated)} tokens: the reply budget or the context ran out]{PLAIN}\n")
        if self.show_steps and seq.steps:
            steps = seq.steps
            out.write(f"{DIM}steps: {' '.join(map(str, steps))} (mean {sum(steps) / len(steps):.2f}){PLAIN}\n")
        if self.chat:
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer


def number(text: str, kind, what: str):
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"expected {what}") from None


def run(session: ChatSession):
    """The read-reply loop: a line is a message or a /command."""
    mode = "chat" if session.chat else f"one question at a time, asked as {session.template!r}"
    print(f"recurlm chat ({mode}); r = {session.policy.recurrences}, exit = {session.policy.exit}. /help for commands.")
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            continue
        if not line:
            continue
        if line in ("/quit", "/q"):
            return
        if line.startswith("/"):
            print(session.command(line))
            continue
        try:
            session.reply(line)
        except UserError as e:  # a message the model cannot take: say so and keep the session
            print(f"error: {e}")
