"""`recurlm serve`: an OpenAI-compatible HTTP API over the continuous batcher (FastAPI), and a web chat at /.

POST /v1/chat/completions and /v1/completions (`stream: true` gives server-sent events in OpenAI's chunk format,
ending with `data: [DONE]`), GET /v1/models, GET /health, GET /openapi.json. Besides OpenAI's fields a request may
set `recurrences` and `exit` ("kl:0.01", "latent:0.05", "none"); `usage` adds `recurrence_steps`, and every
streamed chunk carries the steps its token used. Every error has OpenAI's shape and a 4xx status (5xx only for a
defect); no request can stop the worker or another request.
"""

import asyncio
import json
import time
import uuid
from email.message import Message as MimeType
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from recurlm.config import RunConfig
from recurlm.errors import UserError
from recurlm.serve.batcher import Batcher, Busy, Job
from recurlm.serve.requests import APIError, Asked, ChatRequest, Common, CompletionRequest
from recurlm.text.prompting import Prompter

PAGE = Path(__file__).parent / "static" / "index.html"  # the web chat: one static page, no build step
PUBLIC = {"/", "/health"}  # everything else needs the API key, when the server has one
MAX_BODY = 4 * 2**20


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    kind = {401: "authentication_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(error_body(message, kind, param, code), status, headers=headers)


class Gate:
    """An ASGI middleware in front of every route: the API key, JSON bodies only (a cross-origin `text/plain` POST,
    which a browser sends without asking, is refused), and at most `max_body` bytes, read here and handed on."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = None
        if self.api_key and scope["path"] not in PUBLIC and headers.get("authorization") != f"Bearer {self.api_key}":
            refusal = error_response(401, "missing or wrong API key", code="invalid_api_key")
        elif scope["method"] == "POST":
            mime = MimeType()
            mime["content-type"] = headers.get("content-type", "")
            if mime.get_content_type() != "application/json":
                refusal = error_response(415, "the body must be application/json", code="unsupported_media_type")
            elif int(headers.get("content-length", "0") or 0) > self.max_body:
                refusal = error_response(413, f"the body is larger than {self.max_body} bytes", code="too_large")
        if refusal is None and scope["method"] == "POST":
            body, more = b"", True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body:
                    refusal = error_response(413, f"the body is larger than {self.max_body} bytes", code="too_large")
                    break
            if refusal is None:
                receive = replay(body, receive)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)


def replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then the client's own messages (its disconnect)."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


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


def create_app(
    model,
    tok,
    configs: RunConfig,
    model_name: str,
    max_batch=64,
    max_queue=256,
    api_key: str | None = None,
    max_body: int = MAX_BODY,
) -> FastAPI:
    base = configs.inference
    batcher = Batcher(model, tok, max_batch, max_queue)
    prompter, context = Prompter(tok, configs), model.cfg.seq_len
    app = FastAPI(title="recurlm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.add_middleware(Gate, api_key=api_key, max_body=max_body)

    @app.exception_handler(Exception)
    async def unexpected(_, e: Exception):  # a defect, not the client's: still an answer in OpenAI's shape
        return error_response(500, f"internal error: {e}")

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return error_response(e.status, e.message, e.param, e.code, headers)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):  # 404, 405, a body that is not JSON...
        return error_response(e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":  # its location is a character offset, not a parameter
            return error_response(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        message = first.get("msg", "invalid request")
        return error_response(400, f"{'.'.join(where) + ': ' if where else ''}{message}", where[0] if where else None)

    def check_model(body: Common):
        if body.model not in (None, model_name):
            message = f"model {body.model!r} does not exist (this server has {model_name!r})"
            raise APIError(404, message, "model", "model_not_found")

    # The longest text a prompt can hold: a token covers at most this many characters, so longer text cannot fit
    # and is refused before it is tokenised (a 10 MB prompt took 39 s to tokenise).
    longest = context * tok.longest_token

    async def encode(param: str, texts: list[str], fn, *args) -> list[int]:
        if sum(len(t) for t in texts) > longest:
            raise APIError(400, f"the prompt is longer than the context ({context} tokens)", param)
        try:
            ids = await asyncio.to_thread(fn, *args)  # off the event loop: /health answers meanwhile
        except UserError as e:
            raise APIError(400, str(e), param) from None
        if len(ids) >= context:
            raise APIError(400, f"the prompt has {len(ids)} tokens; the context is {context}", param)
        return ids

    async def run(body: Common, prompt: list[int], chat: bool):
        asked = Asked(body, base, context - len(prompt), prompter.max_new_tokens, model.cfg)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(prompt, asked.max_tokens, asked.policy, asked.seed)
        job.emit = lambda *e: loop.call_soon_threadsafe(events.put_nowait, e)
        try:
            batcher.submit(job)
        except Busy:
            raise APIError(429, "the server is busy: retry shortly", code="rate_limit_exceeded") from None
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created, text = int(time.time()), StopText(tok, asked.stop)
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created}
        head |= {"model": model_name, "seed": asked.seed}  # the seed: extra field, so a sampled reply can be redrawn
        first = True

        def chunk(piece: str, steps: int | None, reason: str | None) -> dict:
            nonlocal first
            if chat:
                delta = {"content": piece} if piece or reason is None else {}
                if first:
                    delta = {"role": "assistant", **delta}
                choice = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": piece, "finish_reason": reason}
            first = False
            if steps is not None:
                choice["recurrence_steps"] = steps  # extra field: the recurrences this token used
            return {**head, "choices": [choice]}

        async def events_of():
            n_tokens, n_steps = 0, 0
            try:
                while True:
                    token, steps, reason = await events.get()
                    n_steps += steps
                    if reason is not None:
                        if reason.startswith("error"):
                            raise APIError(500 if "shutting down" not in reason else 503, reason)
                        yield text.finish(), None, "stop" if reason == "stop" else "length", n_tokens, n_steps
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

        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage

            async def sse():
                try:
                    async for piece, steps, reason, n_tokens, n_steps in events_of():
                        yield f"data: {json.dumps(chunk(piece, steps, reason))}\n\n"
                        if reason is not None and include_usage:  # OpenAI: a last chunk of its own, no choices
                            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage(n_tokens, n_steps)})}\n\n"
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
        return {
            **head,
            "object": "chat.completion" if chat else "text_completion",
            "choices": [choice],
            "usage": usage(*counts),
        }

    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        check_model(body)
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        texts = [m["content"] if isinstance(m["content"], str) else "" for m in messages]
        texts += [p["text"] for m in messages if isinstance(m["content"], list) for p in m["content"]]
        return await run(body, await encode("messages", texts, prompter.messages, messages), True)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest):
        check_model(body)
        return await run(body, await encode("prompt", [body.prompt], prompter.completion, body.prompt), False)

    @router.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "recurlm"}]}

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def web_chat():  # public: the page holds no data; its requests carry the key the user types
        return PAGE.read_text()

    @router.get("/defaults")
    async def defaults():  # the web chat's starting settings: the checkpoint's policy
        return {"recurrences": base.recurrences, "exit": base.exit, "temperature": base.temperature}

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi():
        return app.openapi()

    @router.get("/health")
    async def health():
        return {"status": "ok", "active": batcher.active, "waiting": batcher.waiting.qsize()}

    app.include_router(router)
    return app
