"""`recurlm chat` driven through a pseudo-terminal, as a person uses it."""

import io
import sys
from pathlib import Path

import pexpect
import pytest

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
    chat.sendintr()  # Ctrl-C at the prompt keeps the session
    chat.sendline("/r 200")  # slow enough (200 recurrences a token) to interrupt mid-reply
    chat.expect("r = 200")
    chat.sendline("Sort ascending: 5, 3, 9, 1")
    chat.expect("->")  # the trace has begun streaming
    chat.sendintr()
    chat.expect(r"\[stopped\]")
    chat.expect("> ")
    chat.sendline("/r 2")
    chat.expect("r = 2")
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
    from recurlm.cli.chat import ChatSession

    model, tok, configs = load_checkpoint(MINIAXION)
    policy = configs.inference.override(exit="none")
    replies = [
        ChatSession(model.eval(), tok, configs, policy, compile=compile).reply("What is 47 + 38?", io.StringIO())
        for compile in (False, True)
    ]
    assert replies[0] == replies[1] and "85" in replies[0]
