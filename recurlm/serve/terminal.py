"""`recurlm chat`: talk to a checkpoint in the terminal.

A chat-format model (nanochat's, imported) keeps the conversation; a task model is asked one question at a time in
its own prompt format (MiniAxion's `<INST>…</INST>`: the `<THINK>` trace is shown dimmed and the answer plain; the
addition model's sums appear in normal digit order). Replies stream token by token. Ctrl-C stops the reply and
keeps the session; Ctrl-D (or /quit) ends it.
"""

import sys

from recurlm.config import InferencePolicy
from recurlm.engine import Engine
from recurlm.errors import UserError
from recurlm.exits import parse_exit
from recurlm.serve.prompts import Prompter
from recurlm.tools import Calculator

HELP = (
    "/r N        recurrences per token (with an exit: its cap)\n"
    "/exit SPEC  adaptive exit: kl:EPS, latent:EPS, or off\n"
    "/temp T     sampling temperature (0: greedy)\n"
    "/steps      show or hide the recurrences each token used\n"
    "/reset      forget the conversation\n"
    "/help       this list;  Ctrl-C stops a reply, Ctrl-D quits"
)
DIM, PLAIN = "\033[2m", "\033[0m"
TRACE_STYLE = {"<THINK>": DIM, "</THINK>": PLAIN, "<STEP>": "  ", "</STEP>": "\n", "<ANS>": "", "</ANS>": ""}


class ChatSession:
    def __init__(
        self, model, tok, configs: dict, policy: InferencePolicy, max_new_tokens: int | None = None, compile=False
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
        try:
            if name == "r":
                if int(arg) < 1:
                    raise ValueError("must be >= 1")
                self.policy = self.policy.override(recurrences=int(arg))
                return f"r = {self.policy.recurrences}"
            if name == "exit":
                spec = "none" if arg in ("off", "none") else arg
                parse_exit(spec)
                self.policy = self.policy.override(exit=spec)
                return f"exit = {spec}"
            if name == "temp":
                if float(arg) < 0:
                    raise ValueError("must be >= 0")
                self.policy = self.policy.override(temperature=float(arg))
                return f"temperature = {self.policy.temperature:g}"
        except (ValueError, UserError) as e:
            return f"/{name}: bad value {arg!r} ({e})"
        if name == "steps":
            self.show_steps = not self.show_steps
            return f"steps {'shown' if self.show_steps else 'hidden'}"
        if name == "reset":
            self.history = []
            return "conversation forgotten"
        if name == "help":
            return HELP
        return f"unknown command /{name}; /help lists them"

    def _prompt(self, text: str) -> tuple[list[int], object]:
        if self.chat:
            return self.prompter.messages([*self.history, {"role": "user", "content": text}]), None
        return self.prompter.question(text)

    def reply(self, text: str, out=sys.stdout) -> str:
        """Stream the model's reply to `text` into `out`; returns the reply's text. KeyboardInterrupt stops it."""
        ids, task = self._prompt(text)
        stops = self.tok.stop_ids
        stream = self.engine.stream([ids], self.max_new_tokens, self.policy, stops, tool=self.tool)
        plain: list[int] = []  # tokens of the current run of ordinary text, decoded together (a char may span tokens)
        reply, steps, shown = [], [], ""
        try:
            for _, tokens, used in stream:
                token = tokens[0]
                if token in stops:
                    break
                reply.append(token)
                steps.append(used[0])
                if task is not None:  # shown in the task's normal form once complete
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
        answer = self.tok.decode(reply)
        out.write((task.extract(answer) if task is not None else "") + PLAIN + "\n")
        if self.show_steps and steps:
            out.write(f"{DIM}steps: {' '.join(map(str, steps))} (mean {sum(steps) / len(steps):.2f}){PLAIN}\n")
        if self.chat:
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer


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
        session.reply(line)
