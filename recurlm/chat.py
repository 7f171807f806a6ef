"""Chat format: a conversation renders to token ids plus a loss mask that is 1 only on what the assistant says
(its text and the <|end|> that closes it), as nanochat trains its chat models.

<|bos|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ...
"""

from recurlm.errors import UserError
from recurlm.tokenizer import BOS, Tokenizer

ROLES = ("system", "user", "assistant")


def _special(tok: Tokenizer, token: str) -> int:
    i = tok.token_id(token)
    if i is None:
        raise UserError(f"this tokenizer has no {token} token: it cannot hold a chat (use specials = 'all')")
    return i


def render_conversation(tok: Tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    ids, mask = [_special(tok, BOS)], [0]
    end = _special(tok, "<|end|>")
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise UserError(f"a chat message needs a role in {ROLES} and a text content, got {m!r}")
        body = tok.encode(content) + [end]
        ids += [_special(tok, f"<|{role}|>")] + body
        mask += [0] + [int(role == "assistant")] * len(body)
    return ids, mask


def render_prompt(tok: Tokenizer, messages: list[dict]) -> list[int]:
    """The conversation so far followed by <|assistant|>: what the model continues to answer."""
    ids, _ = render_conversation(tok, messages)
    return ids + [_special(tok, "<|assistant|>")]


def parse_reply(tok: Tokenizer, ids: list[int]) -> str:
    """The assistant's text: generated ids up to <|end|>."""
    end = _special(tok, "<|end|>")
    return tok.decode(ids[: ids.index(end)] if end in ids else ids)
