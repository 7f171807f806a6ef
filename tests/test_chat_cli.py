"""`recurlm chat` driven through a pseudo-terminal, as a person uses it."""

import io
import sys
from pathlib import Path

import pexpect
import pytest
import torch
from helpers import tiny_model

from recurlm.cli.chat import ChatSession
from recurlm.config import build_configs
from recurlm.text.tokenizer import Tokenizer

MINIAXION = Path(__file__).resolve().parent.parent / "checkpoints" / "miniaxion-0.9m"


@pytest.mark.skipif(not MINIAXION.exists(), reason="no shipped MiniAxion checkpoint")
def test_terminal_chat_streams_answers_changes_r_and_quits():
    chat = pexpect.spawn(
        sys.executable, ["-m", "recurlm.cli", "chat", "--checkpoint", str(MINIAXION)], encoding="utf-8", timeout=60
    )
    chat.expect("/help for commands")
    chat.expect("> ")
    chat.sendline("What is 47 + 38?")
    chat.expect(r"47 \+ 38 = 85")  # the trace, streamed (dimmed), then the answer on its own
    chat.expect(r"\x1b\[0m85\x1b\[0m")
    chat.expect("> ")
    chat.sendline("/r 1")
    chat.expect("r = 1")
    chat.sendline("/steps")
    chat.expect("steps shown")
    chat.sendline("Is 12 even or odd?")
    chat.expect(r"steps: 1( 1)+ \(mean 1\.00\)")  # every token at the new r
    chat.expect("> ")
    chat.sendline("/temp -1")
    chat.expect("bad value")
    chat.expect("> ")
    chat.sendintr()  # Ctrl-C at the prompt keeps the session
    chat.sendline("/r 2")
    chat.expect("r = 2")
    chat.sendline("/r")  # alone: the current value
    chat.expect("r = 2")
    chat.sendline("/r two")
    chat.expect("bad value 'two' \\(expected a whole number of recurrences\\)")
    chat.sendline("What is 47 + 38?")  # the session goes on
    chat.expect(r"\x1b\[0m85\x1b\[0m")
    chat.expect("> ")
    chat.sendline("/help")
    chat.expect("Ctrl-D quits")
    chat.sendeof()
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


@pytest.mark.skipif(not MINIAXION.exists(), reason="no shipped MiniAxion checkpoint")
def test_compiled_chat_session_gives_the_eager_reply():
    from recurlm.checkpoint import load_checkpoint

    model, tok, configs = load_checkpoint(MINIAXION)
    policy = configs.inference.override(exit="none")
    replies = [
        ChatSession(model.eval(), tok, configs, policy, compile=compile).reply("What is 47 + 38?", io.StringIO())
        for compile in (False, True)
    ]
    assert replies[0] == replies[1] and "85" in replies[0]


class InterruptAt(io.StringIO):
    """An output that raises KeyboardInterrupt (Ctrl-C) once what was written contains `marker`: an interruption at
    a point the test chooses, whatever the machine's speed."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker, self.fired = marker, False

    def write(self, text):
        n = super().write(text)
        if not self.fired and self.marker in self.getvalue():
            self.fired = True
            raise KeyboardInterrupt
        return n


@pytest.mark.skipif(not MINIAXION.exists(), reason="no shipped MiniAxion checkpoint")
def test_ctrl_c_mid_reply_stops_it_and_keeps_the_session():
    from recurlm.checkpoint import load_checkpoint

    model, tok, configs = load_checkpoint(MINIAXION)
    session = ChatSession(model.eval(), tok, configs, configs.inference)
    full = io.StringIO()
    session.reply("Sort ascending: 5, 3, 9, 1", full)
    out = InterruptAt("->")  # the trace has begun streaming
    session.reply("Sort ascending: 5, 3, 9, 1", out)
    shown = out.getvalue()
    assert out.fired and "[stopped]" in shown and len(shown) < len(full.getvalue())
    assert "85" in session.reply("What is 47 + 38?", io.StringIO())  # the session goes on


def chat_session(seq_len=96):
    """A chat-format model (no tasks: the conversation is its prompt) with a small context."""
    tok = Tokenizer.bpe([], 300)
    model = tiny_model(vocab_size=300, seq_len=seq_len)
    with torch.no_grad():
        model.lm_head.weight[tok.stop_ids] = -1.0  # replies run to their budget
    session = ChatSession(model.eval(), tok, build_configs({}), build_configs({}).inference, max_new_tokens=8)
    assert session.chat
    return session


def test_a_conversation_that_outgrows_the_context_drops_its_oldest_exchanges():
    session = chat_session()
    said = []
    for i in range(8):
        out = io.StringIO()
        session.reply(f"message number {i}: tell me more", out)
        said.append(out.getvalue())
        n_ids = len(session.prompter.messages(session.history))
        assert n_ids < session.model.cfg.seq_len
    assert any("dropped its oldest" in s for s in said) and "dropped" not in said[0]
    assert session.history[0]["content"] != "message number 0: tell me more"  # the oldest went
    assert session.history[-2]["content"] == "message number 7: tell me more"  # the newest stayed


def test_a_message_too_long_for_the_context_is_refused_and_the_session_goes_on():
    session = chat_session()
    session.reply("hello", io.StringIO())
    kept = list(session.history)
    out = io.StringIO()
    assert session.reply("word " * 100, out) == ""
    assert "the context holds 96: shorten it" in out.getvalue() and session.history == kept
    assert session.reply("hello again", io.StringIO()) and len(session.history) == len(kept) + 2
