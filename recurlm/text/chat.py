"""Chat formats: a conversation renders to token ids plus a loss mask that is 1 only on what the assistant says,
as nanochat trains its chat models. The tokenizer decides the format:

- recurlm's own: `<|bos|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ...`
- nanochat's (tokenizers with `<|user_start|>`, e.g. imported checkpoints): `<|bos|> <|user_start|> text
  <|user_end|> <|assistant_start|> text <|assistant_end|> ...`, a system message merged into the first user message
  as `system + "\\n\\n" + user`; an assistant message may be a list of parts (`text`, `python`: a calculator call the
  model writes, `python_output`: its result, which the engine forces and the model is not trained to write).
"""

from recurlm.errors import UserError
from recurlm.text.tokenizer import BOS, Tokenizer

ROLES = ("system", "user", "assistant")
PART_TOKENS = {"text": None, "python": ("<|python_start|>", "<|python_end|>")}
PART_TOKENS["python_output"] = ("<|output_start|>", "<|output_end|>")


def _special(tok: Tokenizer, token: str) -> int:
    i = tok.token_id(token)
    if i is None:
        raise UserError(f"this tokenizer has no {token} token: it cannot hold a chat (use specials = 'all')")
    return i


def checked(messages: list[dict]) -> list[dict]:
    for m in messages:
        role, content = (
            m.get("role") if isinstance(m, dict) else None,
            m.get("content") if isinstance(m, dict) else None,
        )
        parts = isinstance(content, list) and role == "assistant"
        if role not in ROLES or not (isinstance(content, str) or parts):
            raise UserError(f"a chat message needs a role in {ROLES} and a text content, got {m!r}")
        if parts and not all(
            isinstance(p, dict) and p.get("type") in PART_TOKENS and isinstance(p.get("text"), str) for p in content
        ):
            raise UserError(f"an assistant message's parts need a type in {tuple(PART_TOKENS)} and a text: {m!r}")
    return messages


def _nanochat(tok: Tokenizer, messages: list[dict], encode) -> tuple[list[int], list[int]]:
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user" or not isinstance(messages[0]["content"], str):
            raise UserError("a system message must come first and be followed by a user message")
        merged = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        messages = [merged, *messages[2:]]
    ids, mask = [_special(tok, BOS)], [0]

    def add(tokens: list[int], trained: int):
        ids.extend(tokens)
        mask.extend([trained] * len(tokens))

    for i, m in enumerate(messages):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise UserError("nanochat's chat format alternates user and assistant messages, starting with the user")
        if m["role"] == "user":
            add([_special(tok, "<|user_start|>"), *encode(m["content"]), _special(tok, "<|user_end|>")], 0)
            continue
        add([_special(tok, "<|assistant_start|>")], 0)
        parts = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        for part in parts:
            body, wrap = encode(part["text"]), PART_TOKENS[part["type"]]
            if wrap:
                body = [_special(tok, wrap[0]), *body, _special(tok, wrap[1])]
            add(body, int(part["type"] != "python_output"))
        add([_special(tok, "<|assistant_end|>")], 1)
    return ids, mask


def render_conversation(tok: Tokenizer, messages: list[dict], markup: bool = False) -> tuple[list[int], list[int]]:
    """Ids and loss mask of a conversation. Contents are text (`markup`: the project's own text, whose trace tags
    are special tokens: training examples)."""
    messages = checked(messages)
    encode = tok.encode_markup if markup else tok.encode
    if tok.chat_format == "nanochat":
        return _nanochat(tok, messages, encode)
    ids, mask = [_special(tok, BOS)], [0]
    end = _special(tok, "<|end|>")
    for m in messages:
        if not isinstance(m["content"], str):
            raise UserError("recurlm's chat format takes text messages only")
        body = encode(m["content"]) + [end]
        ids += [_special(tok, f"<|{m['role']}|>")] + body
        mask += [0] + [int(m["role"] == "assistant")] * len(body)
    return ids, mask


def render_prompt(tok: Tokenizer, messages: list[dict], markup: bool = False) -> list[int]:
    """The conversation so far followed by the assistant's opening token: what the model continues to answer."""
    ids, _ = render_conversation(tok, messages, markup)
    return ids + [_special(tok, "<|assistant_start|>" if tok.chat_format == "nanochat" else "<|assistant|>")]


def stop_ids(tok: Tokenizer) -> list[int]:
    """The tokens that end an assistant's reply (nanochat also stops at <|bos|>)."""
    return tok.stop_ids if tok.chat_format == "nanochat" else [_special(tok, "<|end|>")]


def parse_reply(tok: Tokenizer, ids: list[int]) -> str:
    """The assistant's text: generated ids up to the first stop token."""
    stops = set(stop_ids(tok))
    end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return tok.decode(ids[:end])
