"""Schemathesis against the server's own OpenAPI schema: a few hundred generated requests (valid bodies, and bodies
that break the schema), none answered with a 5xx, an error event in a stream, or a hang; every error in OpenAI's
shape; and the server idle after them."""

import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from live import Server
from schemathesis import GenerationMode

OPERATIONS = [
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/v1/models", "GET"),
    ("/defaults", "GET"),
    ("/health", "GET"),
]


@pytest.fixture(scope="module")
def live():
    s = Server(max_batch=8, max_queue=8)
    s.schema = schemathesis.openapi.from_dict(httpx.get(s.url + "/openapi.json").json())
    yield s
    s.stop()


def test_the_schema_lists_every_operation(live):
    assert sorted((op.ok().path, op.ok().method.upper()) for op in live.schema.get_all_operations()) == sorted(
        OPERATIONS
    )


POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# POST bodies that fit the schema and bodies that break it; a GET has only its path
CASES = [(p, m, mode, 60) for p, m in OPERATIONS if m == "POST" for mode in (POSITIVE, NEGATIVE)]
CASES += [(p, m, POSITIVE, 5) for p, m in OPERATIONS if m == "GET"]


@pytest.mark.parametrize("path, method, mode, examples", CASES)
def test_no_generated_request_gets_a_server_error(live, path, method, mode, examples):
    @given(case=live.schema[path][method].as_strategy(mode))
    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(base_url=live.url, timeout=30)
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text[:500]
        assert '"server_error"' not in response.text  # a stream's error event: a row that failed after its 200

    check()


def test_the_fuzzed_server_is_idle_and_serving(live):
    for _ in range(100):
        if live.app.state.batcher.in_flight == 0:
            break
        time.sleep(0.05)
    assert live.app.state.batcher.in_flight == 0 and httpx.get(live.url + "/health").json()["active"] == 0
    body = {"messages": [{"role": "user", "content": "What is 1 + 1?"}], "max_tokens": 3}
    assert httpx.post(live.url + "/v1/chat/completions", json=body).status_code == 200
