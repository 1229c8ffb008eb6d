"""Edge-cloud cascade over the network: the device escalates to a live `shadow-edge serve`, and falls back to
its shadow answer (with the reason) when the server is down, slow, erroring or answers garbage."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from serve_fixtures import LiveServer, free_port
from shadow_edge.cli import main
from shadow_edge.errors import InputError
from shadow_edge.runtime.remote import Escalation, remote_cascade

pytestmark = pytest.mark.integration  # a live server

KEY = "sk-cloud"
PROMPT = "The river runs"


@pytest.fixture(scope="module")
def cloud(tiny_artifact):
    with LiveServer(tiny_artifact, served_names=("cloud",), api_key=KEY) as srv:
        yield srv


class _Fake(BaseHTTPRequestHandler):
    """behaviour: "slow" (sleeps before answering), "error" (HTTP 500, OpenAI shape), "garbage" (200, not JSON),
    "models_null" / "models_list" (GET /v1/models answers {"data": null} / a JSON list), "cut_short" (the answer's
    body ends before its Content-Length), "other_vocab" (its model publishes another vocabulary and answers an
    empty text). Bodies it received are kept in `server.received`."""

    def _send(self, status: int, body: bytes, length: int | None = None):
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (slow)
            pass

    def do_GET(self):  # noqa: N802
        kind = self.server.behaviour
        listing = {"models_null": {"data": None}, "models_list": [{"id": "x"}],
                   "other_vocab": {"data": [{"id": "other:base_shadow", "shadow_edge": {"vocab_size": 7,
                                                                                         "tokenizer_sha256": "0"}}]}}
        if kind not in listing:
            return self._send(404, b"{}")
        self._send(200, json.dumps(listing[kind]).encode())

    def do_POST(self):  # noqa: N802  (http.server's naming)
        self.server.received.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
        kind = self.server.behaviour
        if kind == "slow":
            time.sleep(1.5)
        if kind == "cut_short":
            return self._send(200, b'{"choices": [{"text": "a long ans', length=500)
        status, body = {"slow": (200, b"{}"), "garbage": (200, b"<html>oops</html>"),
                        "error": (500, json.dumps({"error": {"message": "model crashed"}}).encode()),
                        "other_vocab": (200, json.dumps({"choices": [{"text": "", "finish_reason": "stop"}]}).encode()),
                        }.get(kind, (200, b"{}"))
        self._send(status, body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    servers = []

    def start(behaviour: str) -> str:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
        srv.behaviour, srv.received = behaviour, []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    start.servers = servers
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_unsure_answers_escalate_to_the_server(cloud, tiny_rt):
    remote = Escalation(cloud.url + "/v1", api_key=KEY)  # model: the server's first *:base_shadow
    out = remote_cascade(tiny_rt, PROMPT, remote, max_new_tokens=10, cascade_threshold=1.0)
    local = tiny_rt.generate(PROMPT, mode="cascade", max_new_tokens=10, cascade_threshold=1.0)
    assert out.escalated and out.answered_by == "remote" and out.reason == "escalated"
    assert out.text == local.text  # the server's base_shadow answer, exactly
    assert out.shadow_text == tiny_rt.generate(PROMPT, mode="shadow_only", max_new_tokens=10).text
    assert out.confidence == pytest.approx(local.confidence)  # scored like the in-process cascade
    assert out.remote_model == "cloud:base_shadow" and out.remote_usage["completion_tokens"] == len(local.token_ids)
    assert out.bytes_sent > 0 and out.bytes_received > 0 and out.remote_ms > 0
    chat = remote_cascade(tiny_rt, "Hi", remote, max_new_tokens=6, chat=True, cascade_threshold=1.0)
    assert chat.escalated and chat.text == tiny_rt.generate("Hi", chat=True, mode="base_shadow", max_new_tokens=6).text
    sure = remote_cascade(tiny_rt, PROMPT, remote, max_new_tokens=10, cascade_threshold=0.0)
    assert not sure.escalated and sure.reason == "confident" and sure.remote_ms is None and sure.bytes_sent == 0
    assert sure.text == out.shadow_text


@pytest.mark.parametrize("behaviour,reason", [("down", "server unreachable"), ("slow", "server too slow"),
                                              ("error", "server error: HTTP 500"), ("garbage", "bad response"),
                                              ("bad_key", "server error: HTTP 401")])
def test_fallback_keeps_the_shadow_answer(behaviour, reason, cloud, tiny_rt, fake_server):
    if behaviour == "down":
        url = f"http://127.0.0.1:{free_port()}/v1"
    elif behaviour == "bad_key":
        url = cloud.url
    else:
        url = fake_server(behaviour)
    remote = Escalation(url, api_key="wrong", model="cloud:base_shadow", timeout_s=0.3)
    out = remote_cascade(tiny_rt, PROMPT, remote, max_new_tokens=8, cascade_threshold=1.0)
    shadow = tiny_rt.generate(PROMPT, mode="shadow_only", max_new_tokens=8)
    assert not out.escalated and out.answered_by == "shadow_only" and out.reason.startswith(reason), out.reason
    assert out.text == out.shadow_text == shadow.text and out.remote_ms is not None
    if behaviour == "error":
        assert "model crashed" in out.reason


def test_cli_run_escalates_and_survives_a_dead_server(capsys, cloud, tiny_artifact):
    args = ["run", str(tiny_artifact), "--mode", "cascade", "--prompt", PROMPT, "--max-new-tokens", "6",
            "--cascade-threshold", "1", "--threads", "1", "--json"]
    assert main(args + ["--escalate-to", cloud.url, "--api-key", KEY]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answered_by"] == "remote" and out["cascade"]["reason"] == ["escalated"]
    assert main(args + ["--escalate-to", f"http://127.0.0.1:{free_port()}", "--escalate-timeout", "0.5"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["answered_by"] == "shadow_only" and "server unreachable" in captured.err
    assert main(["run", str(tiny_artifact), "--mode", "shadow_only", "--prompt", "Hi", "--escalate-to",
                 cloud.url]) == 2
    assert "escalate_to applies to mode 'cascade' only" in capsys.readouterr().err


def test_escalation_settings_are_validated():
    for kw, text in [({"url": "ftp://x"}, "http"), ({"url": "http://h:1", "timeout_s": 0}, "timeout_s"),
                     ({"url": "http://h:1", "model": ""}, "model"), ({"url": "http://h:1", "timeout_s": float("nan")},
                                                                     "timeout_s"),
                     ({"url": "http://[::1/v1"}, "malformed"), ({"url": "http://h:x/v1"}, "malformed"),
                     ({"url": "http://h:1", "api_key": "a\nb"}, "control character")]:
        with pytest.raises(InputError, match=text):
            Escalation(**kw)
    assert Escalation("http://h:1/").url == "http://h:1/v1" and Escalation("http://h:1/v1").url == "http://h:1/v1"


@pytest.mark.parametrize("behaviour,model,reason", [
    ("models_null", None, "bad response"), ("models_list", None, "bad response"), ("cut_short", "m", "bad response"),
    ("other_vocab", None, "empty answer")])
def test_odd_servers_fall_back_to_the_shadow(behaviour, model, reason, tiny_rt, fake_server):
    """Issue 24: {"data": null} or a JSON list from /v1/models, a body cut short, and a server of another vocabulary
    answering nothing never crash the client nor replace the shadow's answer."""
    url = fake_server(behaviour)
    out = remote_cascade(tiny_rt, [5, 6, 7], Escalation(url, model=model, timeout_s=5), max_new_tokens=6,
                         cascade_threshold=1.0)
    shadow = tiny_rt.generate([5, 6, 7], mode="shadow_only", max_new_tokens=6)
    assert not out.escalated and out.reason.startswith(reason), out.reason
    assert out.text == shadow.text and out.shadow_token_ids == shadow.token_ids
    if behaviour == "other_vocab":  # its vocabulary differs: the prompt went as text, never as our token ids
        sent = fake_server.servers[-1].received[0]
        assert sent["model"] == "other:base_shadow" and sent["prompt"] == tiny_rt.codec.tokenizer.decode(
            [5, 6, 7], skip_special_tokens=False)


def test_same_vocabulary_sends_token_ids(cloud, tiny_rt):
    """The server publishes its vocabulary in /v1/models; equal to ours, the prompt goes as token ids and the
    answer's ids run through our token loop: exactly in-process base_shadow's answer."""
    listing = json.loads(urllib_get(cloud.url + "/v1/models", KEY))
    ident = listing["data"][0]["shadow_edge"]
    assert ident == {"vocab_size": tiny_rt.vocab_size,
                     "tokenizer_sha256": tiny_rt.manifest.files["tokenizer.json"]["sha256"]}
    out = tiny_rt.generate([[5, 6, 7], [9, 10]], mode="cascade", max_new_tokens=6, cascade_threshold=1.0,
                           escalate_to=cloud.url, api_key=KEY)
    base = tiny_rt.generate([[5, 6, 7], [9, 10]], mode="base_shadow", max_new_tokens=6)
    assert out.answered_by == ["remote", "remote"] and out.token_ids == base.token_ids and out.text == base.text


def urllib_get(url: str, key: str) -> str:
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


@pytest.mark.parametrize("flags,words", [
    (["--escalate-timeout", "nan"], "escalate_timeout is nan"), (["--escalate-timeout", "inf"], "escalate_timeout"),
    (["--escalate-to", "http://[::1/v1"], "malformed"), (["--escalate-to", "http://127.0.0.1:port/v1"], "malformed"),
    (["--api-key", "sk-1\nX-Evil: 1"], "control character")])
def test_bad_escalation_flags_are_one_line(flags, words, tiny_artifact, capsys):
    """Issue 24: these crashed with tracebacks; now `error: ...` and exit 2."""
    args = ["run", str(tiny_artifact), "--mode", "cascade", "--prompt", PROMPT, "--max-new-tokens", "2",
            "--threads", "1", "--escalate-to", "http://127.0.0.1:9/v1"]
    assert main(args + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
