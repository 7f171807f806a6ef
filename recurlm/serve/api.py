"""`recurlm serve`: an OpenAI-compatible HTTP API over the continuous batcher (FastAPI), and a web chat at /.

POST /v1/chat/completions and /v1/completions (`stream: true` gives server-sent events in OpenAI's chunk format,
ending with `data: [DONE]`), GET /v1/models, GET /health. Besides OpenAI's fields a request may set `recurrences`,
`exit` ("kl:0.01", "latent:0.05", "none") and `kv_budget`; `usage` adds `recurrence_steps`, and every streamed chunk
carries the steps its token used. Errors have OpenAI's shape and a 4xx status; the worker survives every request.
"""

import asyncio
import json
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from recurlm.config import InferencePolicy
from recurlm.errors import UserError
from recurlm.exits import parse_exit
from recurlm.serve.batcher import Batcher, Busy
from recurlm.serve.batcher import Request as Job
from recurlm.serve.prompts import Prompter
from recurlm.tokenizer import BOS

PAGE = Path(__file__).parent / "static" / "index.html"  # the web chat: one static page, no build step


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _number(body: dict, name: str, kind, default, lo=None, hi=None):
    value = body.get(name, default)
    if value is None:
        return default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise APIError(400, f"'{name}' must be an integer", name)
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise APIError(400, f"'{name}' must be a number", name)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise APIError(400, f"'{name}' must be {bounds}, got {value}", name)
    return value


class StopText:
    """Text released as tokens come, holding back what could be the start of a stop string; OpenAI's replies end
    before the stop string."""

    def __init__(self, tok, stop: list[str]):
        self.tok, self.stop, self.ids, self.sent, self.done = tok, stop, [], 0, False

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            self.done = True
            return self._release(text[:cut])
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._release(text[: len(text) - hold] if not text.endswith("\ufffd") else text[: self.sent])

    def finish(self) -> str:
        return "" if self.done else self._release(self.tok.decode(self.ids))

    def _release(self, upto: str) -> str:
        piece = upto[self.sent :]
        self.sent = max(self.sent, len(upto))
        return piece


def create_app(model, tok, configs: dict, model_name: str, max_batch=64, max_queue=256, api_key: str | None = None):
    base: InferencePolicy = configs["inference"]
    batcher = Batcher(model, tok, max_batch, max_queue)
    prompter, tok_context = Prompter(tok, configs), model.cfg.seq_len
    app = FastAPI(title="recurlm", docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    @app.exception_handler(Exception)
    async def unexpected(_, e: Exception):  # a defect, not the client's: still an answer in OpenAI's shape
        return JSONResponse(error_body(f"internal error: {e}", "server_error"), 500)

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        kind = {401: "authentication_error"}.get(
            e.status, "invalid_request_error" if e.status < 500 else "server_error"
        )
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse(error_body(e.message, kind, e.param, e.code), e.status, headers=headers)

    def authorise(request: Request):  # a dependency, not a middleware: those hide a stream's disconnect
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError(401, "missing or wrong API key", code="invalid_api_key")

    guarded = APIRouter(dependencies=[Depends(authorise)])

    async def read_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object")
        if body.get("model") not in (None, model_name):
            raise APIError(
                404,
                f"model {body.get('model')!r} does not exist (this server has {model_name!r})",
                "model",
                "model_not_found",
            )
        if _number(body, "n", int, 1) != 1:
            raise APIError(400, "only n = 1 is supported", "n")
        return body

    def policy_of(body: dict) -> InferencePolicy:
        r = _number(body, "recurrences", int, base.recurrences, 1, 64)
        exit_spec = body.get("exit", base.exit)
        try:
            parse_exit(exit_spec if isinstance(exit_spec, str) else "?")
        except UserError as e:
            raise APIError(400, str(e), "exit") from None
        budget = _number(body, "kv_budget", int, base.kv_budget, 1)
        if budget != base.kv_budget:
            raise APIError(400, f"this server runs kv_budget {base.kv_budget} (start it with --kv-budget)", "kv_budget")
        temperature = _number(body, "temperature", float, base.temperature, 0, 2)
        top_p = _number(body, "top_p", float, base.top_p, 0, 1)
        return base.override(recurrences=r, exit=exit_spec, temperature=temperature, top_p=top_p or 1.0)

    async def run(body: dict, prompt: list[int], chat: bool):
        if len(prompt) >= tok_context:
            raise APIError(400, f"the prompt has {len(prompt)} tokens; the context is {tok_context}", "messages")
        room = tok_context - len(prompt)
        max_tokens = _number(body, "max_tokens", int, min(room, prompter.max_new_tokens), 1)
        if max_tokens > room:
            raise APIError(400, f"max_tokens {max_tokens} runs past the context ({room} tokens left)", "max_tokens")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
            raise APIError(400, "'stop' must be a string or up to 4 strings", "stop")
        policy, seed = policy_of(body), _number(body, "seed", int, 0)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(prompt, max_tokens, policy, lambda *e: loop.call_soon_threadsafe(events.put_nowait, e), seed)
        try:
            batcher.submit(job)
        except Busy:
            raise APIError(429, "the server is busy: retry shortly", code="rate_limit_exceeded") from None
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created, text = int(time.time()), StopText(tok, stop)

        def chunk(piece: str, steps: int | None, reason: str | None) -> dict:
            if chat:
                delta = {"content": piece} if piece or reason is None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": reason}
                obj = "chat.completion.chunk"
            else:
                choice, obj = {"index": 0, "text": piece, "finish_reason": reason}, "text_completion"
            if steps is not None:
                choice["recurrence_steps"] = steps  # extra field: the recurrences this token used
            return {"id": rid, "object": obj, "created": created, "model": model_name, "choices": [choice]}

        async def events_of():
            n_tokens, n_steps = 0, 0
            try:
                while True:
                    token, steps, reason = await events.get()
                    n_steps += steps
                    if reason is not None:
                        finish = "length" if reason == "length" else "stop"
                        if reason.startswith("error"):
                            raise APIError(500, reason)
                        yield text.finish(), None, finish, n_tokens, n_steps
                        return
                    n_tokens += 1
                    piece = text.add(token)
                    if text.done:
                        job.cancelled = True
                        yield piece, steps, "stop", n_tokens, n_steps
                        return
                    yield piece, steps, None, n_tokens, n_steps
            finally:
                job.cancelled = True  # a client that went away frees its row at the next step

        def usage(n_tokens, n_steps):
            return {
                "prompt_tokens": len(prompt),
                "completion_tokens": n_tokens,
                "total_tokens": len(prompt) + n_tokens,
                "recurrence_steps": n_steps,
            }

        if body.get("stream"):

            async def sse():
                try:
                    async for piece, steps, reason, n_tokens, n_steps in events_of():
                        out = chunk(piece, steps, reason)
                        if reason is not None:
                            out["usage"] = usage(n_tokens, n_steps)
                        yield f"data: {json.dumps(out)}\n\n"
                except APIError as e:  # the status line has gone out: the error travels as an event
                    yield f"data: {json.dumps(error_body(e.message, 'server_error'))}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")
        pieces, reason, counts = [], "stop", (0, 0)
        async for piece, _, r, *totals in events_of():
            pieces.append(piece)
            reason, counts = r or reason, totals
        content = "".join(pieces)
        choice = {"index": 0, "finish_reason": reason}
        choice |= {"message": {"role": "assistant", "content": content}} if chat else {"text": content}
        obj = "chat.completion" if chat else "text_completion"
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model_name,
            "choices": [choice],
            "usage": usage(*counts),
        }

    @guarded.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' must be a non-empty list", "messages")
        try:
            prompt = prompter.messages(messages)
        except UserError as e:
            raise APIError(400, str(e), "messages") from None
        return await run(body, prompt, True)

    @guarded.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "'prompt' must be a non-empty string", "prompt")
        bos = tok.token_id(BOS)
        return await run(body, ([bos] if bos is not None else []) + tok.encode(prompt), False)

    @guarded.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "recurlm"}]}

    @guarded.get("/", response_class=HTMLResponse)
    async def web_chat():
        return PAGE.read_text()

    @guarded.get("/defaults")
    async def defaults():  # the web chat's starting settings: the checkpoint's policy
        return {"recurrences": base.recurrences, "exit": base.exit, "temperature": base.temperature}

    app.include_router(guarded)

    @app.get("/health")
    async def health():
        return {"status": "ok", "active": batcher.active, "waiting": batcher.waiting.qsize()}

    return app
