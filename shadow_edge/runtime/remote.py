"""Edge-cloud cascade over the network: the device's detached shadow answers; unsure answers go to a server.

    from shadow_edge.runtime import ShadowRuntime
    from shadow_edge.runtime.remote import Escalation, remote_cascade
    rt = ShadowRuntime.load("shadow-art/")                 # may hold only the shadow graphs
    out = remote_cascade(rt, "Hi", Escalation("http://server:8000/v1", api_key="KEY"), max_new_tokens=32)
    out.text, out.answered_by, out.reason, out.confidence, out.shadow_ms, out.remote_ms

The shadow generates (shadow_only) and scores its answer like the in-process cascade (geometric
mean of its chosen tokens' probabilities). Below `cascade_threshold` the same request (text,
chat messages or token ids; same max_tokens, sampling, seed, stop) goes to an OpenAI-compatible
server (`shadow-edge serve`) with the standard library's urllib: no new dependency, no torch.
When the server is unreachable, slower than `timeout_s` or answers an error, the shadow's
answer is returned, marked not escalated, with the reason. Never a crash, never a lost answer.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from shadow_edge.errors import InputError
from shadow_edge.runtime.strategies.base import registry
from shadow_edge.runtime.strategies.cascade import silent

SHADOW = "shadow_only"
REMOTE = "remote"
USER_AGENT = "shadow-edge-escalation/1"


@dataclass(frozen=True)
class Escalation:
    """Where unsure answers go: an OpenAI-compatible base URL (`http://host:port/v1`), its key and model."""

    url: str
    api_key: str | None = None
    model: str | None = None  # None: the server's first `*:base_shadow` model (else its first model)
    timeout_s: float = 10.0  # connect and each read; past it the shadow answers

    def __post_init__(self) -> None:
        parts = urlsplit(self.url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(f"escalation URL {self.url!r} is not an http(s) URL; give the server's base URL, e.g. "
                             "http://127.0.0.1:8000/v1")
        base = self.url.rstrip("/")
        object.__setattr__(self, "url", base if base.endswith("/v1") else base + "/v1")
        if not isinstance(self.timeout_s, (int, float)) or isinstance(self.timeout_s, bool) or self.timeout_s <= 0:
            raise InputError(f"escalation timeout_s is {self.timeout_s!r}; it must be a number of seconds > 0")
        if self.model is not None and not self.model:
            raise InputError("escalation model is empty; give a served model id (GET /v1/models) or leave it out")


@dataclass(frozen=True)
class RemoteCascadeResult:
    """What the device returns. answered_by: "shadow_only" or "remote"; reason says why (always set)."""

    text: str
    finish_reason: str  # stop | length | eos (eos only for shadow answers)
    answered_by: str
    escalated: bool
    reason: str  # "confident", "escalated", or why the server could not answer
    confidence: float  # the shadow's, in [0, 1]
    threshold: float
    shadow_text: str
    shadow_token_ids: list[int]
    shadow_ms: float
    remote_ms: float | None  # None when the server was not asked
    total_ms: float
    bytes_sent: int  # HTTP request (headers + body) of the escalation; 0 when none
    bytes_received: int  # HTTP response (status line + headers + body)
    remote_model: str | None = None
    remote_usage: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _Unanswered(Exception):
    """The server did not answer usefully; the message is the fallback reason."""


def remote_cascade(rt, prompt, escalation: Escalation, max_new_tokens: int = 32, do_sample: bool = False,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                   stop=None, chat: bool = False, cascade_threshold: float = 0.5) -> RemoteCascadeResult:
    """Answer `prompt` (one text, chat conversation or id list) on the device; escalate when unsure."""
    t0 = time.perf_counter()
    opts = rt.options(SHADOW, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop, None, chat,
                      cascade_threshold)
    batch = rt.encode(prompt, opts.chat, opts.max_new_tokens)
    if not batch.single:
        raise InputError("remote_cascade takes one prompt; call it once per prompt")
    ids, text, finish, conf = _shadow_answer(rt, batch, opts)
    shadow_ms = (time.perf_counter() - t0) * 1e3
    common = dict(confidence=conf, threshold=opts.cascade_threshold, shadow_text=text, shadow_token_ids=ids,
                  shadow_ms=shadow_ms)
    if conf >= opts.cascade_threshold:
        return RemoteCascadeResult(text, finish, SHADOW, False, "confident", **common, remote_ms=None,
                                   total_ms=shadow_ms, bytes_sent=0, bytes_received=0)
    t1 = time.perf_counter()
    wire = [0, 0]
    try:
        model = escalation.model or _default_model(escalation, wire)
        body = _request_body(rt, prompt, opts, model)
        path = "/chat/completions" if opts.chat else "/completions"
        answer = _post(escalation, path, body, wire)
        remote_text, remote_finish = _answer_text(answer, opts.chat)
    except _Unanswered as e:
        return RemoteCascadeResult(text, finish, SHADOW, False, str(e), **common,
                                   remote_ms=(time.perf_counter() - t1) * 1e3,
                                   total_ms=(time.perf_counter() - t0) * 1e3, bytes_sent=wire[0],
                                   bytes_received=wire[1], remote_model=escalation.model)
    remote_ms = (time.perf_counter() - t1) * 1e3
    return RemoteCascadeResult(remote_text, remote_finish, REMOTE, True, "escalated", **common, remote_ms=remote_ms,
                               total_ms=(time.perf_counter() - t0) * 1e3, bytes_sent=wire[0],
                               bytes_received=wire[1], remote_model=model, remote_usage=answer.get("usage"))


def _answer_text(answer: dict, chat: bool) -> tuple[str, str]:
    try:
        choice = answer["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (KeyError, IndexError, TypeError) as e:
        raise _Unanswered(f"bad response: no answer text in it ({type(e).__name__}: {e})") from None
    if not isinstance(text, str):
        raise _Unanswered(f"bad response: the answer's text is {type(text).__name__}")
    return text, choice.get("finish_reason") or "stop"


def _shadow_answer(rt, batch, opts) -> tuple[list[int], str, str, float]:
    """The shadow_only pass, keeping each chosen token's log-probability: (ids, text, finish, confidence)."""
    rows = silent(registry()[SHADOW].run(rt, batch.input_ids, batch.attention_mask, opts, False, want_logprobs=True))
    return rows.ids[0], rows.text[0], rows.finish[0], rows.confidence(0)


def _request_body(rt, prompt, opts, model: str) -> dict:
    body = {"model": model, "max_tokens": opts.max_new_tokens, "temperature": opts.temperature if not opts.greedy
            else 0.0, "top_p": opts.top_p, "stream": False}
    if opts.chat:
        body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    else:
        body["prompt"] = prompt if isinstance(prompt, str) else [int(t) for t in prompt]
    if opts.seed is not None:
        body["seed"] = opts.seed
    if opts.top_k:
        body["top_k"] = opts.top_k
    if opts.stop:
        body["stop"] = list(opts.stop)
    return body


def _default_model(escalation: Escalation, wire: list[int]) -> str:
    ids = [m.get("id") for m in _call(escalation, "/models", None, wire).get("data", []) if isinstance(m, dict)]
    if not ids:
        raise _Unanswered("bad response: the server lists no models")
    return next((i for i in ids if str(i).endswith(":base_shadow")), ids[0])


def _post(escalation: Escalation, path: str, body: dict, wire: list[int]) -> dict:
    return _call(escalation, path, json.dumps(body).encode(), wire)


def _call(escalation: Escalation, path: str, data: bytes | None, wire: list[int]) -> dict:
    """One HTTP request; counts bytes on the wire (HTTP headers + bodies) into `wire` [sent, received]."""
    url = escalation.url + path
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}
    if escalation.api_key:
        headers["Authorization"] = f"Bearer {escalation.api_key}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    parts = urlsplit(url)
    head = f"{req.get_method()} {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + (f"Content-Length: {len(data)}\r\n" if data else "") + "\r\n"
    wire[0] += len(head.encode()) + len(data or b"")
    try:
        with urllib.request.urlopen(req, timeout=escalation.timeout_s) as resp:
            raw = resp.read()
            wire[1] += _response_size(resp, raw)
    except urllib.error.HTTPError as e:
        raw = e.read() or b""
        wire[1] += _response_size(e, raw)
        raise _Unanswered(f"server error: HTTP {e.code} from {url}: {_error_message(raw)}") from None
    except (socket.timeout, TimeoutError):
        raise _Unanswered(f"server too slow: no answer from {url} within {escalation.timeout_s:g} s") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise _Unanswered(f"server too slow: no answer from {url} within {escalation.timeout_s:g} s") from None
        raise _Unanswered(f"server unreachable: {url} ({e.reason})") from None
    except (ConnectionError, OSError) as e:
        raise _Unanswered(f"server unreachable: {url} ({e})") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Unanswered(f"bad response: {url} answered {len(raw)} bytes that are not JSON") from None


def _response_size(resp, raw: bytes) -> int:
    status = f"HTTP/1.1 {getattr(resp, 'status', getattr(resp, 'code', 0))} {getattr(resp, 'reason', '')}\r\n"
    return len(status.encode()) + len(str(resp.headers).encode()) + len(raw)


def _error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])[:200]
    except Exception:  # not OpenAI's error shape: show the start of the body
        return raw[:200].decode("utf-8", "replace") or "(empty body)"
