"""No input breaks the server: each request found to hang it, fail other requests, leak its row or answer a 500
(issue 26) gets a 4xx in OpenAI's shape or a correct reply, and the server goes on serving everyone else."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from live import Server, client, free_port

JSON = {"content-type": "application/json"}
HI = [{"role": "user", "content": "What is 1 + 1?"}]


@pytest.fixture(scope="module")
def server():
    s = Server(max_batch=8, max_queue=8, max_body=2**20)
    yield s
    s.stop()


def post(server, path, body, headers=JSON, **kw):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30, **kw)


def chat(server, **fields):
    return post(server, "/v1/chat/completions", {"messages": HI, "max_tokens": 8, **fields})


def idle(server):
    """The server has nothing in flight (waits for rows that are ending), and a normal request is served."""
    for _ in range(200):
        health = httpx.get(server.url + "/health").json()
        if health["active"] == 0 and health["waiting"] == 0 and server.app.state.batcher.in_flight == 0:
            break
        time.sleep(0.05)
    assert server.app.state.batcher.in_flight == 0 and health["active"] == 0
    return chat(server).status_code == 200


def assert_openai_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    "body, param",
    [
        (b"[" * 100_000, None),  # nested brackets: a RecursionError in the JSON parser
        (b'{"messages": [], "max_tokens": 1' + b"0" * 5000 + b"}", None),  # a 5000-digit integer
        (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": NaN}', "top_p"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "temperature"),
        ({"messages": HI, "top_p": 0}, "top_p"),  # was silently 1.0
        ({"messages": HI, "temperature": 3}, "temperature"),
        ({"messages": HI, "exit": "kl:nan"}, "exit"),
        ({"messages": HI, "exit": "latent:-1"}, "exit"),
        ({"messages": HI, "exit": "argmax:0.5"}, "exit"),
        ({"messages": HI, "exit": "gate:0.5"}, "exit"),  # the model has no learned exit gate
        ({"messages": HI, "recurrences": 0}, "recurrences"),
        ({"messages": HI, "recurrences": 10**6}, "recurrences"),
        ({"messages": HI, "logprobs": True}, "logprobs"),
        ({"messages": HI, "top_logprobs": 2}, "logprobs"),
        ({"messages": HI, "kv_budget": 7}, "kv_budget"),
        ({"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]}, "messages"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),  # a lone surrogate
    ],
)
def test_malformed_chat_requests_get_a_400_and_the_server_lives(server, body, param):
    assert_openai_error(post(server, "/v1/chat/completions", body), 400, param)
    assert idle(server)


def test_completions_errors_name_the_prompt(server):
    assert_openai_error(post(server, "/v1/completions", b'{"prompt": "12\\udfff+"}'), 400, "prompt")
    assert_openai_error(post(server, "/v1/completions", {"prompt": "x" * 200}), 400, "prompt")  # past the context
    assert_openai_error(post(server, "/v1/completions", {"prompt": ""}), 400, "prompt")


def test_unknown_routes_methods_media_types_and_sizes_in_openai_shape(server):
    assert_openai_error(httpx.get(server.url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(server.url + "/v1/chat/completions"), 405)
    # a cross-origin page can POST text/plain without a CORS preflight: such a body is refused, not parsed
    plain = post(server, "/v1/chat/completions", {"messages": HI}, headers={"content-type": "text/plain"})
    assert_openai_error(plain, 415)
    assert_openai_error(post(server, "/v1/chat/completions", {"messages": HI}, headers={}), 415)
    assert post(server, "/v1/chat/completions", {"messages": HI, "max_tokens": 2}, headers={
        "content-type": "application/json; charset=utf-8"}).status_code == 200  # fmt: skip
    big = {"messages": [{"role": "user", "content": "x" * 2**20}]}
    assert_openai_error(post(server, "/v1/chat/completions", big), 413)  # over --max-body (1 MiB here)

    def chunked():  # no content-length: the limit holds on the bytes that arrive
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(2**11):
            yield b"x" * 1024
        yield b'"}]}'

    response = httpx.post(server.url + "/v1/chat/completions", content=chunked(), headers=JSON, timeout=30)
    assert_openai_error(response, 413)
    assert idle(server)


def test_an_overlong_prompt_is_refused_before_it_is_tokenised(server, monkeypatch):
    """A prompt that cannot fit is refused by its length in characters (a 10 MB one took 39 s to tokenise)."""
    calls = []
    monkeypatch.setattr(server.tok, "encode", lambda text: calls.append(text) or [])
    prompt = "7" * (2**20 - 100)
    assert_openai_error(post(server, "/v1/completions", {"prompt": prompt}), 400, "prompt")
    assert calls == []


def test_tokenising_does_not_hold_the_event_loop(server, monkeypatch):
    """A prompt being tokenised (here: held until the test lets it go) leaves /health and other requests
    answering."""
    release, started = threading.Event(), threading.Event()
    encode = server.tok.encode

    def slow(text):
        if text.startswith("HOLD"):
            started.set()
            assert release.wait(30)
        return encode(text)

    monkeypatch.setattr(server.tok, "encode", slow)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(post, server, "/v1/completions", {"prompt": "HOLD 1+1=", "max_tokens": 2})
        assert started.wait(30)
        assert httpx.get(server.url + "/health", timeout=5).json()["status"] == "ok"
        assert post(server, "/v1/completions", {"prompt": "2+2=", "max_tokens": 2}).status_code == 200
        assert not held.done()
        release.set()
        assert held.result().status_code == 200


def test_extreme_temperatures_and_seeds_answer_and_leave_nothing_behind():
    """temperature 1e-300 once made NaN probabilities (its request hung, the others got 500s, its rows were never
    counted back: four of them left the server answering 429 for good); a seed past 64 bits hung its request."""
    s = Server(max_batch=2, max_queue=2)
    try:
        greedy = chat(s).json()["choices"][0]["message"]["content"]
        bodies = [{"temperature": 1e-300}, {"temperature": 5e-324}, {"temperature": 1e-38, "top_p": 1e-9}] * 2
        bodies += [{"temperature": 1.0, "seed": 2**64}, {"temperature": 1.0, "seed": -(10**30)}]
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda b: chat(s, **b), bodies))
        assert {r.status_code for r in replies} <= {200, 429}
        served = [(b, r.json()) for b, r in zip(bodies, replies, strict=True) if r.status_code == 200]
        assert served
        for body, reply in served:
            if body["temperature"] < 1e-30:
                assert reply["choices"][0]["message"]["content"] == greedy  # a vanishing temperature is greedy
        for body in bodies[-2:]:  # any integer seeds: the same seed, the same sample
            first, again = chat(s, **body), chat(s, **body)
            assert first.status_code == 200 and first.json()["choices"] == again.json()["choices"]
        assert idle(s)
    finally:
        s.stop()


def test_a_request_that_fails_ends_alone(monkeypatch):
    """A row that cannot start gets its error (an event in its stream, OpenAI-shaped); the others' replies are
    untouched and nothing stays counted in flight."""
    s = Server(max_batch=8, max_queue=8)
    try:
        poison = s.tok.encode("POISON")
        engine = s.app.state.batcher.engine
        start = engine.start

        def failing(prompts, *args, **kwargs):
            if any(poison == p[i : i + len(poison)] for p in prompts for i in range(len(p))):
                raise RuntimeError("boom")
            return start(prompts, *args, **kwargs)

        def ask(question, stream=False):
            body = {"messages": [{"role": "user", "content": question}], "max_tokens": 6, "stream": stream}
            return post(s, "/v1/chat/completions", body)

        solo = [ask(f"What is {i} + 3?").json()["choices"][0]["message"]["content"] for i in range(6)]
        monkeypatch.setattr(engine, "start", failing)
        questions = [f"What is {i} + 3?" for i in range(6)] + ["POISON", "POISON"]
        with ThreadPoolExecutor(len(questions)) as pool:
            replies = list(pool.map(lambda q: ask(q, stream=True), questions))
        events = [[json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")] for r in replies]
        texts = ["".join(c["choices"][0]["delta"].get("content", "") for c in e if c.get("choices")) for e in events]
        assert texts[:6] == solo
        for e in events[6:]:
            assert e[-1]["error"]["message"] == "error: boom" and e[-1]["error"]["type"] == "server_error"
        assert idle(s)
    finally:
        s.stop()


def test_typed_special_tokens_are_text(server):
    """Only the template inserts special tokens: '<|eos|>' or '</INST>' typed in content are ordinary tokens."""
    tok = server.tok

    def prompt_tokens(content):
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 1}
        return post(server, "/v1/chat/completions", body).json()["usage"]["prompt_tokens"]

    for typed in ("<|eos|>", "</INST>", "<|bos|>"):
        ids = tok.encode(typed)
        assert len(ids) > 1 and tok.token_id(typed) not in ids and tok.decode(ids) == typed
        assert prompt_tokens(f"a{typed}") == prompt_tokens("a") + len(ids)
    completion = post(server, "/v1/completions", {"prompt": "<|eos|>", "max_tokens": 1}).json()
    assert completion["usage"]["prompt_tokens"] == len(tok.bos_ids) + len(tok.encode("<|eos|>"))


def test_content_as_text_parts_is_the_same_question(server):
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 2?"}]
    as_parts = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": parts}]})
    as_text = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "What is 2 + 2?"}]})
    assert as_parts.status_code == 200
    assert as_parts.json()["choices"] == as_text.json()["choices"]


def test_stream_chunks_carry_the_role_first_and_usage_last(server):
    chunks = list(
        client(server).chat.completions.create(
            model="tiny", messages=HI, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-1])
    *replies, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 5 and last.usage.total_tokens > 5
    assert all(c.usage is None for c in replies) and replies[-1].choices[0].finish_reason == "length"
    plain = list(client(server).chat.completions.create(model="tiny", messages=HI, max_tokens=5, stream=True))
    assert all(c.choices and c.usage is None for c in plain)  # no usage chunk unless asked


def test_unseeded_sampling_varies_and_reports_its_seed(server):
    def sample(**extra):
        reply = client(server).completions.create(
            model="tiny", prompt="12+", max_tokens=16, temperature=1.0, extra_body=extra
        )
        return reply.choices[0].text, reply.model_extra["seed"]

    (a, seed_a), (b, seed_b) = sample(), sample()
    assert a != b and seed_a != seed_b
    assert sample(seed=seed_a) == (a, seed_a)  # the reported seed redraws the reply


def test_the_schema_documents_the_bodies_behind_the_key():
    s = Server(api_key="sesame")
    try:
        assert_openai_error(httpx.get(s.url + "/openapi.json"), 401)
        schema = httpx.get(s.url + "/openapi.json", headers={"Authorization": "Bearer sesame"}).json()
        bodies = schema["components"]["schemas"]
        assert {"ChatRequest", "CompletionRequest", "Message"} <= set(bodies)
        assert "messages" in bodies["ChatRequest"]["required"] and "top_p" in bodies["ChatRequest"]["properties"]
        assert set(schema["paths"]) >= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"}
        assert httpx.get(s.url + "/").status_code == 200  # the page is public; what it fetches is not
        assert_openai_error(httpx.get(s.url + "/defaults"), 401)
    finally:
        s.stop()


# `recurlm serve` with a model that takes 0.5 s a token and never ends on its own (the 10-step model's tokens
# differ between CPUs, and one may be its end token): a 20-token request is in flight for 10 s
SLOW_SERVE = """
import sys, time
from recurlm.cli import main
from recurlm.inference.engine import Engine
from recurlm.text.tokenizer import Tokenizer
decode = Engine.decode
Engine.decode = lambda self, *a: time.sleep(0.5) or decode(self, *a)
Tokenizer.stop_ids = property(lambda self: [])
main(sys.argv[1:])
"""


def test_sigterm_stops_a_busy_server_within_five_seconds(run_dir):
    """Requests in flight end (their streams get a 'shutting down' error) and the process exits, even with a client
    that never reads its stream."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", SLOW_SERVE, "serve", "--checkpoint", str(run_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        assert "serving" in proc.stderr.readline()
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url + "/health")
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        body = {"prompt": "1+1=", "max_tokens": 20, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as read:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as unread:
                lines = read.iter_lines()
                assert next(lines).startswith("data: ")  # decoding, 0.5 s a token
                assert unread.status_code == 200
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=5)
                rest = list(lines)
        assert any("shutting down" in line for line in rest)
    finally:
        proc.kill()
