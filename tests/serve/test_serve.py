"""`shadow-edge serve` through the official `openai` client against a live uvicorn server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai import OpenAI

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from serve_fixtures import LiveServer
from shadow_edge.serve.options import ServeOptions

pytestmark = pytest.mark.integration  # a live server

KEY = "sk-test"
PROMPTS = ["The river", "Every morning the baker", "Trains leave the station", "A tokenizer turns text",
           "The library is open", "She opened the window", "Memory bandwidth decides", "Small models are fast",
           "The weather today", "He asked for a cup", "Children walk to school", "In the evening the lights",
           "Questions are welcome", "The cache keeps the keys", "A good engineer measures", "When the device"]


@pytest.fixture(scope="module")
def server(tiny_artifact):
    with LiveServer(tiny_artifact, served_names=("tiny",), api_key=KEY, batch_window_ms=50) as srv:
        yield srv


def client(srv, key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0, timeout=60)


def post(srv, path: str, body: dict, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{srv.url}{path}", json=body, headers=headers, timeout=60)


def test_models_list_every_mode(server, tiny_rt):
    ids = [m.id for m in client(server).models.list()]
    assert ids == [f"tiny:{m}" for m in tiny_rt.modes] and "tiny:cascade" in ids
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["models"] == ids


@pytest.mark.parametrize("mode", ["shadow_only", "base_shadow", "cascade", "speculative"])
def test_completions_greedy_equal_runtime(server, tiny_rt, mode):
    want = tiny_rt.generate("The river runs", mode=mode, max_new_tokens=12)
    c = client(server)
    got = c.completions.create(model=f"tiny:{mode}", prompt="The river runs", max_tokens=12, temperature=0)
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.prompt_tokens, len(want.token_ids))
    assert got.usage.total_tokens == want.prompt_tokens + len(want.token_ids)
    assert got.model == f"tiny:{mode}" and got.shadow_edge["mode"] == mode
    assert got.shadow_edge["token_ids"] == want.token_ids
    if mode == "speculative":
        counts = ("rounds", "drafted", "accepted", "draft_lengths", "acceptance_rate")
        assert {k: got.shadow_edge["speculative"][k] for k in counts} == \
            {k: want.speculative.to_dict()[k] for k in counts}
        assert server.metric("shadow_edge_speculative_drafted_tokens_total", model="tiny") >= want.speculative.drafted
    if mode == "cascade":
        assert got.shadow_edge["cascade"]["answered_by"] == want.answered_by
        assert got.shadow_edge["cascade"]["confidence"] == pytest.approx(want.confidence)
    stream = c.completions.create(model=f"tiny:{mode}", prompt="The river runs", max_tokens=12, temperature=0,
                                  stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_chat_stream_and_not_equal_runtime(server, tiny_rt):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about trains"}]
    want = tiny_rt.generate(messages, chat=True, mode="base_shadow", max_new_tokens=10)
    c = client(server)
    got = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert got.choices[0].message.content == want.text and got.choices[0].message.role == "assistant"
    assert got.usage.prompt_tokens == want.prompt_tokens and got.model == "tiny:base_shadow"
    chunks = list(c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                            stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and chunks[-1].usage is None
    # the mode as an extra body field
    extra = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                      extra_body={"mode": "shadow_only"})
    assert extra.choices[0].message.content == tiny_rt.generate(messages, chat=True, mode="shadow_only",
                                                                 max_new_tokens=10).text


def test_stop_strings_and_seeded_sampling(server, tiny_rt):
    full = tiny_rt.generate("Every morning", mode="shadow_only", max_new_tokens=24, eos=()).text
    stop = full[6:9]
    want = tiny_rt.generate("Every morning", mode="shadow_only", max_new_tokens=24, eos=(), stop=[stop, "zzzq"])
    assert want.finish_reason == "stop"
    c = client(server)
    kw = dict(model="tiny:shadow_only", prompt="Every morning", max_tokens=24, temperature=0, stop=[stop, "zzzq"],
              extra_body={"ignore_eos": True})
    got = c.completions.create(**kw)
    assert got.choices[0].text == want.text and got.choices[0].finish_reason == "stop"
    assert "".join(ch.choices[0].text for ch in c.completions.create(**kw, stream=True)) == want.text
    sampled = tiny_rt.generate("Every morning", mode="base_shadow", max_new_tokens=16, do_sample=True,
                               temperature=0.8, top_p=0.9, seed=3)
    got = c.completions.create(model="tiny", prompt="Every morning", max_tokens=16, temperature=0.8, top_p=0.9,
                               seed=3)
    assert got.choices[0].text == sampled.text


def test_16_concurrent_clients_get_their_own_answers(server, tiny_rt):
    want = [tiny_rt.generate(p, mode="base_shadow", max_new_tokens=8).text for p in PROMPTS]
    c = client(server)
    labels = dict(model="tiny", mode="base_shadow")
    before = [server.metric("shadow_edge_batch_size_count", **labels),
              server.metric("shadow_edge_batch_size_bucket", le="1.0", **labels)]

    def ask(prompt: str) -> str:
        return c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, PROMPTS))
    assert got == want
    steps = server.metric("shadow_edge_batch_size_count", **labels) - before[0]
    single = server.metric("shadow_edge_batch_size_bucket", le="1.0", **labels) - before[1]
    assert steps > single  # some decode steps ran several requests' rows together


@pytest.mark.parametrize("body,param", [
    ({"n": 2}, "n"), ({"temperature": -1}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 100000}, "max_tokens"),
    ({"stop": [""]}, "stop"), ({"stop": 5}, "stop"), ({"seed": -1}, "seed"), ({"logprobs": 2}, "logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"mode": "fast"}, "mode"), ({"prompt": ""}, "prompt"),
    ({"prompt": [99999]}, "prompt"), ({"prompt": ["a", "b"]}, "prompt"), ({"echo": True}, "echo"),
    ({"stream_options": {"include_usage": True}}, "stream_options"), ({"model": "tiny:shadow_only", "mode":
                                                                        "base_shadow"}, "mode"),
])
def test_each_bad_parameter_is_a_400_naming_it(server, body, param):
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "Hi", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"] and err["type"] == "invalid_request_error"


def test_error_statuses(server, tiny_rt):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    assert post(server, "/v1/completions", {"model": "tiny", "prompt": "Hi"}, key=None).status_code == 401
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="nope", prompt="Hi")
    assert post(server, "/v1/completions", {"model": "tiny:fast", "prompt": "Hi"}).status_code == 404
    long = post(server, "/v1/completions", {"model": "tiny", "prompt": [5] * tiny_rt.max_positions})
    assert long.status_code == 413 and long.json()["error"]["code"] == "context_length_exceeded"
    bad = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json",
                     headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    assert post(server, "/v1/chat/completions", {"model": "tiny", "messages": []}).json()["error"]["param"] \
        == "messages"


def test_disconnected_stream_stops_its_generation(server):
    labels = dict(model="tiny", mode="shadow_only")
    tokens_before = server.metric("shadow_edge_generated_tokens_total", **labels)
    cancelled_before = server.metric("shadow_edge_requests_total", status="cancelled", **labels)
    body = {"model": "tiny:shadow_only", "prompt": "The river", "max_tokens": 500, "stream": True,
            "ignore_eos": True, "temperature": 0}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        next(r.iter_lines())  # the first piece arrived: generation is running; now hang up
    deadline = time.monotonic() + 20
    while server.metric("shadow_edge_requests_total", status="cancelled", **labels) == cancelled_before:
        assert time.monotonic() < deadline, "the server never noticed the disconnect"
        time.sleep(0.02)
    while server.metric("shadow_edge_generated_tokens_total", **labels) == tokens_before:
        assert time.monotonic() < deadline, "the cancelled row never left its batch"
        time.sleep(0.02)
    assert 0 < server.metric("shadow_edge_generated_tokens_total", **labels) - tokens_before < 500


def test_full_queue_is_429_and_shutdown_is_graceful(tiny_artifact):
    # One waiting slot; the scheduler holds the first request for up to 2 s hoping for a batch partner,
    # so the second request deterministically finds the queue full.
    with LiveServer(tiny_artifact, served_names=("tiny",), max_batch=2, max_queue=1, batch_window_ms=2000) as srv:
        c = client(srv)
        first = {}
        t = threading.Thread(target=lambda: first.update(r=c.completions.create(model="tiny", prompt="Hi",
                                                                                 max_tokens=4, temperature=0)))
        t.start()
        deadline = time.monotonic() + 10
        while srv.metric("shadow_edge_queue_depth", model="tiny") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as info:
            c.completions.create(model="tiny", prompt="Hello", max_tokens=4)
        assert info.value.body["code"] == "queue_full"
        t.join(30)
        assert first["r"].choices[0].finish_reason in ("stop", "length")
        # shutdown: new work is refused with 503 while in-flight work is finished
        engine = srv.app.state.shadow.engines["tiny"]
    with pytest.raises(Exception) as closed:
        engine.submit(None)
    assert getattr(closed.value, "status", None) == 503


def test_options_are_validated(tiny_artifact, tmp_path):
    from shadow_edge.errors import InputError

    for kw, field in [({"max_batch": 0}, "max_batch"), ({"port": 70000}, "port"), ({"api_key": " "}, "api_key"),
                      ({"served_names": ("a", "b")}, "--served-name"), ({"served_names": ("a:b",)}, "a:b"),
                      ({"request_timeout_s": 0}, "request_timeout_s"), ({"decode_nice": 20}, "decode_nice"),
                      ({"decode_nice": -1}, "decode_nice"), ({"decode_nice": True}, "decode_nice"),
                      ({"spin_threads": 1}, "spin_threads")]:
        with pytest.raises(InputError, match=field):
            ServeOptions((str(tiny_artifact),), **kw)
    with pytest.raises(InputError, match="no such artifact"):
        ServeOptions((str(tmp_path / "missing"),))


def test_cli_serve_errors_are_one_line(capsys, tmp_path):
    from shadow_edge.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "no such artifact directory" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert "max_batch" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--decode-nice", "20"]) == 2
    assert "decode_nice is 20" in capsys.readouterr().err
