"""The server's answers to hostile input (issue 24): each case a 4xx/5xx in OpenAI's JSON shape, the server healthy after.

Loopback only, tiny artifact; nothing here measures time (the event-loop test blocks the tokenizer on an event).
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from serve_fixtures import LiveServer

pytestmark = pytest.mark.integration  # a live server

LIMIT = 64 * 1024  # --max-body-bytes of the module's server: small, so the oversized bodies stay small too


@pytest.fixture(scope="module")
def server(tiny_artifact):
    with LiveServer(tiny_artifact, served_names=("tiny",), max_body_bytes=LIMIT, batch_window_ms=0) as srv:
        yield srv


def post(srv, path: str, body=None, **kw) -> httpx.Response:
    return httpx.post(f"{srv.url}{path}", json=body, timeout=30, **kw)


def error_of(r: httpx.Response, status: int) -> dict:
    """The OpenAI error object of a response that must have `status`; the server must still be healthy."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def healthy(srv) -> bool:
    return httpx.get(f"{srv.url}/health", timeout=10).json()["status"] == "ok"


def test_deeply_nested_json_is_a_400_not_a_500(server):
    nested = b'{"model": "tiny", "prompt": "Hi", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    err = error_of(post(server, "/v1/completions", content=nested), 400)
    assert "nests deeper" in err["message"]
    assert healthy(server)


@pytest.mark.parametrize("field,value", [
    ("max_tokens", True), ("stream", "yes"), ("prompt", [True, False]), ("ignore_eos", "yes"),
    ("temperature", "0.5"), ("seed", 1.5), ("stop", 5), ("stream_options", {"include_usage": 1}),
])
def test_wrong_json_types_are_refused_not_coerced(server, field, value):
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 2, field: value}
    if field == "stream_options":
        body["stream"] = True
    err = error_of(post(server, "/v1/completions", body), 400)
    assert err["param"].split(".")[0] == field and field in err["message"]


@pytest.mark.parametrize("field,value", [
    ("response_format", {"type": "json_object"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
    ("tools", [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]),
    ("tool_choice", "auto"), ("functions", [{"name": "f"}]), ("function_call", "auto"), ("top_logprobs", 2),
])
def test_unsupported_chat_fields_are_refused_by_name(server, field, value):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, field: value}
    err = error_of(post(server, "/v1/chat/completions", body), 400)
    assert err["param"] == field and field in err["message"] and "not supported" in err["message"]


def test_the_off_values_of_unsupported_fields_are_accepted(server, tiny_rt):
    messages = [{"role": "user", "content": "Hi"}]
    r = post(server, "/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 3,
                                              "temperature": 0, "response_format": {"type": "text"}, "tools": [],
                                              "tool_choice": "none", "n": 1, "presence_penalty": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == tiny_rt.generate(messages, chat=True,
                                                                            max_new_tokens=3).text


def test_text_prompt_longer_than_the_context_is_413(server, tiny_rt):
    for path, body in [("/v1/completions", {"prompt": "hello " * (2 * tiny_rt.max_positions)}),
                       ("/v1/chat/completions", {"messages": [{"role": "user",
                                                               "content": "hello " * (2 * tiny_rt.max_positions)}]})]:
        err = error_of(post(server, path, {"model": "tiny", **body}), 413)
        assert err["code"] == "context_length_exceeded" and str(tiny_rt.max_positions) in err["message"]
    assert healthy(server)


def test_oversized_bodies_are_refused_early(server):
    big = b'{"model": "tiny", "prompt": "' + b"a" * (LIMIT + 1) + b'"}'
    err = error_of(post(server, "/v1/completions", content=big), 413)  # by its Content-Length
    assert err["code"] == "request_too_large" and "Content-Length" in err["message"] and str(LIMIT) in err["message"]

    def chunks():  # no Content-Length (chunked upload): refused once the count passes the limit
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(2 * LIMIT // 4096):
            yield b"a" * 4096
        yield b'"}'

    err = error_of(post(server, "/v1/completions", content=chunks()), 413)
    assert err["code"] == "request_too_large" and f"more than {LIMIT}" in err["message"]
    ok = post(server, "/v1/completions", {"model": "tiny", "prompt": "Hi " * 100, "max_tokens": 2})
    assert ok.status_code == 200, ok.text  # a body under the limit still works, on the same server
    assert healthy(server)


def test_tokenizing_runs_off_the_event_loop(server, monkeypatch):
    """While one request's prompt is being tokenized, /health and other requests still answer."""
    codec = server.app.state.shadow.engines["tiny"].rt.codec
    started, release, encode = threading.Event(), threading.Event(), codec.encode

    def slow_encode(text, add_special_tokens=True):
        if "SLOW" in text:
            started.set()
            release.wait(30)
        return encode(text, add_special_tokens)

    monkeypatch.setattr(codec, "encode", slow_encode)
    answer = {}
    slow = threading.Thread(target=lambda: answer.update(r=post(server, "/v1/completions", {
        "model": "tiny", "prompt": "SLOW prompt", "max_tokens": 2})))
    slow.start()
    try:
        assert started.wait(30), "the slow request never reached the tokenizer"
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # the loop is free
        fast = post(server, "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 2})
        assert fast.status_code == 200, fast.text
    finally:
        release.set()
        slow.join(30)
    assert answer["r"].status_code == 200, answer["r"].text


def test_models_retrieve_and_openai_shaped_errors_everywhere(server, monkeypatch):
    c = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    assert c.models.retrieve("tiny:shadow_only").id == "tiny:shadow_only"
    assert c.models.retrieve("tiny").id == "tiny"  # a bare name: its default mode
    with pytest.raises(openai.NotFoundError) as info:
        c.models.retrieve("nope:shadow_only")
    assert info.value.body["code"] == "model_not_found"
    assert error_of(httpx.get(f"{server.url}/v1/models/tiny:fast"), 404)["param"] == "model"
    err = error_of(httpx.get(f"{server.url}/v2/everything"), 404)
    assert "GET /v2/everything" in err["message"] and "/v1/chat/completions" in err["message"]
    r = httpx.delete(f"{server.url}/v1/models")
    assert error_of(r, 405)["code"] == "method_not_allowed" and r.headers["allow"] == "GET"
    # a bug inside a route is a 500 in the same shape (the traceback goes to the server's log)
    monkeypatch.setattr(server.app.state.shadow, "model_card", lambda model: 1 / 0)
    assert "ZeroDivisionError" in error_of(httpx.get(f"{server.url}/v1/models/tiny"), 500)["message"]
    monkeypatch.undo()
    assert healthy(server)


def test_queued_requests_get_503_json_when_the_server_stops(tiny_artifact):
    """SIGTERM (uvicorn's handler sets should_exit): requests still waiting get a 503 in OpenAI's shape at once.
    The long batch window keeps all of them waiting for batch partners, so they are queued when the stop begins."""
    body = {"model": "tiny", "prompt": "The river", "max_tokens": 4}
    answers: dict[int, httpx.Response] = {}
    with LiveServer(tiny_artifact, served_names=("tiny",), max_batch=8, batch_window_ms=600_000, grace_s=5) as srv:
        with httpx.Client(timeout=60) as client:
            def ask(i: int) -> None:
                answers[i] = client.post(f"{srv.url}/v1/completions", json=body)

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while srv.metric("shadow_edge_queue_depth", model="tiny") < 3:
                assert time.monotonic() < deadline, "the requests never queued up"
                time.sleep(0.01)
            srv.server.should_exit = True
            for t in threads:
                t.join(60)
    assert len(answers) == 3
    for r in answers.values():
        assert "shutting down" in error_of(r, 503)["message"]


def test_cli_busy_port_and_bad_grace_are_one_error_line(tiny_artifact, capsys):
    from shadow_edge.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(tiny_artifact), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"127.0.0.1:{port}" in err and "in use" in err and len(err.splitlines()) == 1
    for grace in ("nan", "inf", "-5"):
        assert main(["serve", str(tiny_artifact), f"--shutdown-grace={grace}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "shutdown_grace" in err and len(err.splitlines()) == 1
    assert main(["serve", str(tiny_artifact), "--max-body-bytes", "0"]) == 2
    assert "max_body_bytes" in capsys.readouterr().err
