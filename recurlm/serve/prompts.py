"""How a checkpoint is asked, shared by the terminal chat and the server: a chat-format model gets the whole
conversation; a task model gets the user's last message in its tasks' prompt format (MiniAxion's `<INST>…</INST>`),
and a prompt one of its tasks recognises is answered in that task's normal form (the addition model's sums)."""

from recurlm.chat import checked, is_nanochat, render_prompt
from recurlm.data import prompt_ids, task_from_configs, trained_task_names
from recurlm.errors import UserError
from recurlm.tasks import Task


class Prompter:
    def __init__(self, tok, configs: dict):
        self.tok = tok
        self.tasks = [task_from_configs(name, configs) for name in trained_task_names(configs)]
        self.chat = is_nanochat(tok) or (not self.tasks and tok.token_id("<|user|>") is not None)
        templates = {t.prompt_template for t in self.tasks}
        self.template = templates.pop() if len(templates) == 1 else "{}"
        self.max_new_tokens = max([t.max_new_tokens for t in self.tasks], default=256)

    def question(self, text: str) -> tuple[list[int], Task | None]:
        """A task model's prompt ids for one question, and the task that recognises it (if any)."""
        head = self.template.split("{}")[0]
        prompt = text if text.startswith(head) else self.template.format(text)
        return prompt_ids(self.tok, prompt), next((t for t in self.tasks if t.recognises(prompt)), None)

    def messages(self, messages: list[dict]) -> list[int]:
        """Prompt ids for a conversation awaiting the assistant's reply."""
        if self.chat:
            return render_prompt(self.tok, messages)
        last = checked(messages)[-1] if messages else None
        if not isinstance(last, dict) or last.get("role") != "user" or not isinstance(last.get("content"), str):
            raise UserError("the last message must be the user's, with a text content")
        if not last["content"]:
            raise UserError("the last message is empty")
        return self.question(last["content"])[0]
