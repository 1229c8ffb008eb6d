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

KEY = "sk-cloud"
PROMPT = "The river runs"


@pytest.fixture(scope="module")
def cloud(tiny_artifact):
    with LiveServer(tiny_artifact, served_names=("cloud",), api_key=KEY) as srv:
        yield srv


class _Fake(BaseHTTPRequestHandler):
    """behaviour: "slow" (sleeps before answering), "error" (HTTP 500, OpenAI shape), "garbage" (200, not JSON)."""

    def do_POST(self):  # noqa: N802  (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        kind = self.server.behaviour
        if kind == "slow":
            time.sleep(1.5)
        status, body = {"slow": (200, b"{}"), "garbage": (200, b"<html>oops</html>"),
                        "error": (500, json.dumps({"error": {"message": "model crashed"}}).encode())}[kind]
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (slow)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    servers = []

    def start(behaviour: str) -> str:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
        srv.behaviour = behaviour
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

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
    assert out["answered_by"] == "remote" and out["escalated"] is True
    assert main(args + ["--escalate-to", f"http://127.0.0.1:{free_port()}", "--escalate-timeout", "0.5"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["answered_by"] == "shadow_only" and "server unreachable" in captured.err
    assert main(["run", str(tiny_artifact), "--mode", "shadow_only", "--prompt", "Hi", "--escalate-to",
                 cloud.url]) == 2
    assert "--escalate-to needs --mode cascade" in capsys.readouterr().err


def test_escalation_settings_are_validated():
    for kw, text in [({"url": "ftp://x"}, "http"), ({"url": "http://h:1", "timeout_s": 0}, "timeout_s"),
                     ({"url": "http://h:1", "model": ""}, "model")]:
        with pytest.raises(InputError, match=text):
            Escalation(**kw)
    assert Escalation("http://h:1/").url == "http://h:1/v1" and Escalation("http://h:1/v1").url == "http://h:1/v1"
