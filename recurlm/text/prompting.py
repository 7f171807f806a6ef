"""How a checkpoint is asked: the one place a question becomes token ids.

A chat-format model gets the whole conversation in its chat template; a task model gets the user's question in its
tasks' prompt template (MiniAxion's `<INST>{}</INST>`), and a question one of its tasks recognises is answered in
that task's normal form (the addition model's sums). What a user types is text: only the templates put special
tokens around it. Task examples are the project's own text and keep their special tokens (`example_ids`).
"""

from recurlm.config import RunConfig
from recurlm.errors import UserError
from recurlm.tasks import Example, Task
from recurlm.tasks.runs import task_from_configs, trained_task_names
from recurlm.text.chat import checked, render_prompt
from recurlm.text.tokenizer import Tokenizer


def example_ids(tok: Tokenizer, prompt: str) -> list[int]:
    """A task example's prompt (the project's own text, special tokens included) as the model trained on it: BOS and
    the prompt, or for a nanochat chat model the prompt as a user turn awaiting the reply."""
    if tok.chat_format == "nanochat":
        return render_prompt(tok, [{"role": "user", "content": prompt}], markup=True)
    return tok.bos_ids + tok.encode_markup(prompt)


def example_question(tok: Tokenizer, ex: Example) -> str:
    """An example's prompt as this model is asked it: a chat model gets a task's chat wording where it has one
    (nanochat's multiple-choice message)."""
    return ex.meta["chat"] if tok.chat_format == "nanochat" and ex.meta and "chat" in ex.meta else ex.prompt


def text_parts(message: dict) -> dict:
    """A user or system message whose content is OpenAI's list of text parts, with the parts joined (other part
    types are refused). Assistant messages keep their parts: nanochat's calculator calls are parts too."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list) or message.get("role") == "assistant":
        return message
    if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        raise UserError("a message's content parts must each be {'type': 'text', 'text': ...}")
    return {**message, "content": "".join(p["text"] for p in content)}


class Prompter:
    """How one run is asked: its chat format (decided by its tokenizer) or its tasks' template."""

    def __init__(self, tok: Tokenizer, configs: RunConfig):
        self.tok = tok
        self.tasks = [task_from_configs(name, configs) for name in trained_task_names(configs)]
        self.chat = tok.chat_format == "nanochat" or (not self.tasks and tok.chat_format == "recurlm")
        templates = {t.prompt_template for t in self.tasks}
        self.template = templates.pop() if len(templates) == 1 else "{}"
        self.max_new_tokens = max([t.max_new_tokens for t in self.tasks], default=256)

    def question(self, text: str) -> tuple[list[int], Task | None]:
        """A task model's prompt ids for one question, and the task that recognises it (if any)."""
        head, _, tail = self.template.partition("{}")
        ids = self.tok.bos_ids + self.tok.encode_markup(head) + self.tok.encode(text) + self.tok.encode_markup(tail)
        return ids, next((t for t in self.tasks if t.recognises(self.template.format(text))), None)

    def messages(self, messages: list[dict]) -> list[int]:
        """Prompt ids for a conversation awaiting the assistant's reply."""
        messages = checked([text_parts(m) for m in messages]) if isinstance(messages, list) else messages
        if not isinstance(messages, list) or not messages:
            raise UserError("the conversation needs at least one message")
        if self.chat:
            return render_prompt(self.tok, messages)
        last = messages[-1]
        if last.get("role") != "user" or not isinstance(last.get("content"), str):
            raise UserError("the last message must be the user's, with a text content")
        if not last["content"]:
            raise UserError("the last message is empty")
        return self.question(last["content"])[0]

    def completion(self, text: str) -> list[int]:
        """A plain continuation of `text` (the completions API, lm-eval): BOS and the text."""
        return self.tok.bos_ids + self.tok.encode(text)
