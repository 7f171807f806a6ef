"""The server's request bodies (pydantic models: they are also the OpenAPI schema) and what a request asks of the
model: its inference policy, token budget, stop strings and seed. A field's range is checked here or, for the
inference policy's own fields, by `InferencePolicy` itself (config.py), so each rule has one home."""

import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from recurlm.config import EXIT_HELP, InferencePolicy, ModelConfig, check_exit_fits
from recurlm.errors import UserError

MAX_RECURRENCES = 64  # a request's r: one client cannot buy unbounded compute per token


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        self.status, self.message, self.param, self.code = status, message, param, code


class StreamOptions(BaseModel):
    include_usage: bool = False


class ContentPart(BaseModel):
    """OpenAI's text part ({'type': 'text', 'text': ...}); nanochat's assistant parts are 'python' and
    'python_output' (a calculator call and its result)."""

    type: Literal["text", "python", "python_output"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class Common(BaseModel):
    """Fields both endpoints take. Fields OpenAI defines that do not change what recurlm computes (user, penalties
    at their defaults...) are accepted and ignored; NaN and infinity are never numbers."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=1, description="only 1")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, description="any integer; unseeded sampled requests draw one and report it")
    logprobs: bool | int | None = Field(None, description="not supported: only false, 0 or null")
    top_logprobs: int | None = Field(None, description="not supported: only 0 or null")
    recurrences: int | None = Field(None, ge=1, le=MAX_RECURRENCES, description="r (with an exit: its cap)")
    exit: str | None = Field(None, description=f"adaptive exit: {EXIT_HELP}")
    kv_budget: int | None = Field(None, ge=1, description="must be the server's own (recurlm serve --kv-budget)")


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Common):
    prompt: str = Field(min_length=1)


class Asked:
    """What a validated request asks for: policy, budget, stop strings and seed."""

    def __init__(self, body: Common, base: InferencePolicy, room: int, default_tokens: int, model: ModelConfig):
        if body.logprobs or body.top_logprobs:
            raise APIError(400, "logprobs are not supported by this server", "logprobs")
        if body.kv_budget not in (None, base.kv_budget):
            raise APIError(400, f"this server runs kv_budget {base.kv_budget} (start it with --kv-budget)", "kv_budget")
        try:
            self.policy = base.override(
                recurrences=body.recurrences, exit=body.exit, temperature=body.temperature, top_p=body.top_p
            )
            check_exit_fits(self.policy.exit, model)
        except UserError as e:
            raise APIError(400, str(e), "exit" if "exit" in str(e) else None) from None
        self.max_tokens = body.max_tokens or min(room, default_tokens)
        if self.max_tokens > room:
            raise APIError(
                400, f"max_tokens {self.max_tokens} runs past the context ({room} tokens left)", "max_tokens"
            )
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        if len(stop) > 4 or not all(stop):
            raise APIError(400, "'stop' must be a non-empty string or up to 4 of them", "stop")
        self.stop = stop
        # OpenAI's unseeded requests vary: a sampled request without a seed draws one (and the reply reports it)
        sampled = self.policy.temperature > 0
        self.seed = body.seed if body.seed is not None else secrets.randbits(63) if sampled else 0
