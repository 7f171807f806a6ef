"""`recurlm serve` live on 127.0.0.1: the official openai client, continuous batching (a request's greedy tokens do
not depend on who else is in the batch), disconnects, the bounded queue, errors in OpenAI's shape, the API key."""

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from live import Server, client

from recurlm.inference.engine import Engine
from recurlm.text.prompting import Prompter


@pytest.fixture(scope="module")
def server():
    s = Server(max_batch=64, max_queue=64)
    yield s
    s.stop()


def ask(server, question, **extra):
    messages = [{"role": "user", "content": question}]
    return client(server).chat.completions.create(model="tiny", messages=messages, max_tokens=12, extra_body=extra)


def test_openai_client_chat_stream_completion_and_models(server):
    reply = ask(server, "What is 2 + 2?")
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    usage = reply.usage.model_dump()
    assert usage["recurrence_steps"] >= 2 * usage["completion_tokens"]  # r = 2 for every token
    stream = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=12, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    assert all(c.choices[0].model_extra["recurrence_steps"] == 2 for c in chunks[:-1])
    done = client(server).completions.create(model="tiny", prompt="12+", max_tokens=5)
    n, reason = done.usage.completion_tokens, done.choices[0].finish_reason
    assert done.object == "text_completion" and 1 <= n <= 5 and (reason == "length") == (n == 5)
    assert [m.id for m in client(server).models.list().data] == ["tiny"]


def test_fifty_concurrent_streams_each_equal_to_its_solo_output(server):
    requests = [
        (
            f"What is {i} + {i % 7}?",
            {"recurrences": 1 + i % 4, "exit": ["none", "kl:0.1", "latent:0.2", "argmax:1", "entropy:0.05"][i % 5]},
            3 + i % 11,
        )
        for i in range(50)
    ]

    def run(request, stream):
        question, extra, n = request
        out = client(server).chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": question}],
            max_tokens=n,
            stream=stream,
            extra_body=extra,
        )
        if not stream:
            return out.choices[0].message.content
        return "".join(c.choices[0].delta.content or "" for c in out)

    def engine_alone(request):  # the same request on the engine, alone in its batch
        question, extra, n = request
        ids = Prompter(server.tok, server.configs).messages([{"role": "user", "content": question}])
        policy = server.configs.inference.override(**extra)
        out = Engine(server.model).generate([ids], n, policy, stop_tokens=server.tok.stop_ids)
        return server.tok.decode(out.tokens[0])

    solo = [engine_alone(r) for r in requests]
    assert [run(r, False) for r in requests] == solo
    with ThreadPoolExecutor(50) as pool:
        together = list(pool.map(lambda r: run(r, True), requests))
    assert together == solo
    assert len(set(solo)) > 10  # the requests really differ


def test_a_client_that_goes_away_frees_its_row(server):
    body = {"messages": [{"role": "user", "content": "What is 1 + 1?"}], "max_tokens": 60, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert httpx.get(server.url + "/health").json()["active"] == 1
    for _ in range(100):
        if httpx.get(server.url + "/health").json()["active"] == 0:
            break
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").json()["active"] == 0


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "bard", "content": "x"}, {"role": "user", "content": "hi"}]},
            "messages",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
            "temperature",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 200}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}, "model"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "exit": "soon"}, "exit"),
        ("/v1/completions", {"prompt": 42}, "prompt"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_lives(server, path, body, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert ask(server, "What is 1 + 1?").choices[0].message.content is not None


def test_a_full_queue_answers_429_with_retry_after():
    s = Server(max_batch=1, max_queue=1)
    engine = s.app.state.batcher.engine
    decode = engine.decode
    engine.decode = lambda *a: time.sleep(0.05) or decode(*a)  # a slow model: the first request holds the batch
    body = {"messages": [{"role": "user", "content": "What is 3 + 4?"}], "max_tokens": 60, "stream": True}
    try:
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body) as first:
            lines = first.iter_lines()  # kept: dropping the iterator would close the stream
            next(lines)  # decoding: the batch is full
            with httpx.stream("POST", s.url + "/v1/chat/completions", json=body) as second:  # waits in the queue
                assert second.status_code == 200
                third = httpx.post(s.url + "/v1/chat/completions", json=body)
                assert third.status_code == 429 and third.headers["retry-after"] == "1"
                assert third.json()["error"]["code"] == "rate_limit_exceeded"
    finally:
        s.stop()


def test_api_key_guards_every_endpoint_but_health():
    s = Server(api_key="sesame")
    try:
        assert httpx.get(s.url + "/v1/models").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            client(s).models.list()
    finally:
        s.stop()


def test_stop_strings_end_the_reply_before_them_and_seeds_repeat_samples(server):
    def complete(**extra):
        out = client(server).completions.create(model="tiny", prompt="12+", max_tokens=20, **extra)
        return out.choices[0].text, out.choices[0].finish_reason

    full, _ = complete()
    stop = next(c for c in full[2:] if c.isascii() and c.isalnum())  # random bytes: an ASCII one is whole
    cut = full.index(stop)
    assert complete(stop=[stop]) == (full[:cut], "stop")
    streamed = client(server).completions.create(model="tiny", prompt="12+", max_tokens=20, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[:cut]
    sampled = [complete(temperature=1.0, seed=s)[0] for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # the system's: nothing downloaded


needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="no Debian chromium (scripts/setup.sh installs it)"
)


@needs_chromium
def test_web_chat_asks_for_the_key_of_a_keyed_server():
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    s = Server(api_key="sesame")
    page = browser()
    try:
        page.get(s.url + "/")
        wait = WebDriverWait(page, 30)
        # the page asks once, on the first 401; until it does, the wait polls (a bare switch_to.alert raises at once)
        prompt = wait.until(expected_conditions.alert_is_present())
        prompt.send_keys("sesame")
        prompt.accept()
        wait.until(lambda b: b.find_element(By.ID, "model").text == "tiny")
        page.find_element(By.ID, "text").send_keys("What is 2 + 2?\n")
        meta = wait.until(lambda b: b.find_elements(By.ID, "last-meta"))[0]
        assert "recurrences per token" in meta.text and "error" not in meta.text
        page.refresh()  # the key is remembered: no second question
        wait.until(lambda b: b.find_element(By.ID, "model").text == "tiny")
    finally:
        page.quit()
        s.stop()


@needs_chromium
def test_web_chat_in_a_real_browser_streams_a_reply_shaded_by_steps(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser()
    try:
        page.get(server.url + "/")
        wait = WebDriverWait(page, 30)
        wait.until(lambda b: b.find_element(By.ID, "model").text == "tiny")
        page.execute_script("document.getElementById('r').value = 3; document.getElementById('r').oninput()")
        page.find_element(By.ID, "text").send_keys("What is 2 + 2?\n")
        meta = wait.until(lambda b: b.find_elements(By.ID, "last-meta"))[0]
        tokens = page.find_elements(By.CSS_SELECTOR, ".assistant .tok")
        assert len(tokens) >= 1 and {t.get_attribute("data-steps") for t in tokens} == {"3"}  # r = 3 for every token
        assert all("rgba" in t.get_attribute("style") for t in tokens)  # shaded by the steps it used
        assert "mean 3.00 recurrences" in meta.text
        page.save_screenshot(str(tmp_path / "web-chat.png"))
        assert (tmp_path / "web-chat.png").stat().st_size > 5000
    finally:
        page.quit()


TRACE_REPLY = [("<THINK>", 1), ("<STEP>", 1), ("7 + 8", 2), (" = 15", 3), ("</STEP>", 1), ("<STEP>", 1),
               ("47 + 38 = 85", 4), ("</STEP>", 1), ("</THINK>", 1), ("<ANS>", 2), ("85", 2),
               ("</ANS>", 1)]  # fmt: skip


@needs_chromium
def test_web_chat_folds_the_thinking_and_shades_steps_within_the_reply(server, tmp_path):
    """A reasoning trace, streamed as the server streams it, shows as a collapsed thinking block with the answer
    plain beneath; shades span the reply's own range of steps (1 to 4 here), with a legend and a bar per token."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chunks = [{"choices": [{"index": 0, "delta": {"content": t}, "recurrence_steps": k}]} for t, k in TRACE_REPLY]
    chunks[-1]["choices"][0]["finish_reason"] = "stop"
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page = browser()
    try:
        page.get(server.url + "/")
        wait = WebDriverWait(page, 30)
        wait.until(lambda b: b.find_element(By.ID, "model").text == "tiny")
        page.execute_script(  # the chat endpoint answers with this stream: the page's rendering is what is tested
            "const real = window.fetch; window.fetch = (path, options) => path === '/v1/chat/completions'"
            " ? Promise.resolve(new Response(arguments[0], {headers: {'Content-Type': 'text/event-stream'}}))"
            " : real(path, options);",
            sse,
        )
        page.find_element(By.ID, "text").send_keys("What is 47 + 38?\n")
        wait.until(lambda b: b.find_elements(By.ID, "last-meta"))
        thinking = page.find_element(By.CSS_SELECTOR, ".assistant details.thinking")
        assert thinking.get_attribute("open") is None  # folded once the thinking ends
        steps = page.execute_script("return [...document.querySelectorAll('.thinking .step')].map(s => s.textContent)")
        assert steps == ["7 + 8 = 15", "47 + 38 = 85"]
        assert page.find_element(By.CSS_SELECTOR, ".assistant .answer").text == "85"
        assert "<" not in page.find_element(By.CSS_SELECTOR, ".assistant").get_attribute("textContent")  # no tags
        shades = {t.get_attribute("data-steps"): t.value_of_css_property("background-color")
                  for t in page.find_elements(By.CSS_SELECTOR, ".assistant .tok")}  # fmt: skip
        assert set(shades) == {"2", "3", "4"} and len(set(shades.values())) == 3  # 2 and 3 steps look different
        legend = page.find_elements(By.CSS_SELECTOR, ".legend span")
        assert [s.text for s in legend] == ["1", "2", "3", "4"]
        assert len(page.find_elements(By.CSS_SELECTOR, ".bar i")) == len(TRACE_REPLY)
        thinking.find_element(By.TAG_NAME, "summary").click()  # unfolds on a click
        assert thinking.get_attribute("open") is not None
        page.save_screenshot(str(tmp_path / "thinking.png"))
        errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no console errors (the favicon included)
    finally:
        page.quit()
