"""The cascade's network stage: unsure answers go to a `shadow-edge serve` (or any OpenAI-compatible server).

    rt = ShadowRuntime.load("shadow-art/", modes=("shadow_only",))   # may hold only the shadow graphs
    out = rt.generate("Hi", mode="cascade", escalate_to="http://server:8000/v1", api_key="KEY")
    out.text, out.answered_by, out.stats.reason, out.stats.remote

`RemoteStage` is the cascade's second stage when `escalate_to` is given (strategies/cascade.py
runs the shadow pass, the decision and the result either way). It first reads the server's
model list: when the model publishes its vocabulary (`shadow_edge.vocab_size` and the sha256 of
its tokenizer.json, as `shadow-edge serve` does) and it equals this artifact's, the row's prompt
token ids are sent and the answer's token ids run through this runtime's token loop (eos, stop
strings, limits, text), so the answer equals in-process base_shadow's. Otherwise the prompt's
text (decoded here, chat template included) is sent to /v1/completions and the answer's text
is taken. The standard library's urllib only: no new dependency, no torch.
When the server is unreachable, slower than `timeout_s`, answers an error, something that is
not an answer, or an empty answer, the shadow's answer stands and `reason` says why. Never a
crash, never a lost answer. `remote_cascade` is the one-prompt shortcut of earlier releases.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from shadow_edge.errors import InputError
from shadow_edge.runtime.result import Timings
from shadow_edge.runtime.token_loop import TICK, RowLoop

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
        fix = "give the server's base URL, e.g. http://127.0.0.1:8000/v1"
        if not isinstance(self.url, str) or not self.url:
            raise InputError(f"escalation URL {self.url!r} is not an http(s) URL; {fix}")
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018  (raises ValueError on a port that is not a number in 0..65535)
        except ValueError as e:
            raise InputError(f"escalation URL {self.url!r} is malformed ({e}); {fix}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"escalation URL {self.url!r} is not an http(s) URL; {fix}")
        if any(ord(c) < 33 or ord(c) == 127 for c in self.url):
            raise InputError(f"escalation URL {self.url!r} contains spaces or control characters; {fix}")
        base = self.url.rstrip("/")
        object.__setattr__(self, "url", base if base.endswith("/v1") else base + "/v1")
        t = self.timeout_s
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
            raise InputError(f"escalation timeout_s is {t!r}; it must be a finite number of seconds > 0")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise InputError("escalation model is empty; give a served model id (GET /v1/models) or leave it out")
        if self.api_key is not None:
            if not isinstance(self.api_key, str) or not self.api_key.strip():
                raise InputError("api_key is empty; give the server's key or leave it out")
            if any(ord(c) < 32 or ord(c) == 127 for c in self.api_key):
                raise InputError("api_key contains a control character (e.g. a newline); it would break the HTTP "
                                 "header: give the key alone, without line breaks")


class _Unanswered(Exception):
    """The server did not answer usefully; the message is the fallback reason."""


class RemoteStage:
    """The cascade's second stage over HTTP (see the module docstring)."""

    name = REMOTE

    def __init__(self, escalation: Escalation):
        self.escalation = escalation

    def answer(self, rt, ids, mask, low: list[int], opts, incremental: bool):
        """Ask the server for rows `low` (one request each); yields pieces of answered rows, returns
        ({row: (ids, text, finish, info)}, timings). info: {"remote": figures, "fallback": reason or absent}."""
        out, t_start, first_ms, per_token = {}, time.perf_counter(), None, []
        wire, t0 = [0, 0], time.perf_counter()
        try:
            known: tuple | _Unanswered = self._model(rt, wire)  # one model listing for all rows
        except _Unanswered as e:
            known = e
        for r in low:
            info: dict = {}
            try:
                if isinstance(known, _Unanswered):
                    raise known
                model, same_vocab = known
                prompt = [int(t) for t, m in zip(ids[r], mask[r]) if m]
                loop = RowLoop(rt.codec, opts.max_new_tokens, opts.stop,
                               opts.eos if opts.eos is not None else rt.eos_ids, incremental, opts.control)
                body = self._body(rt, prompt, opts, model, same_vocab)
                answer = _call(self.escalation, "/completions", json.dumps(body).encode(), wire)
                info["remote"] = {"model": model, "usage": answer.get("usage") if isinstance(answer, dict) else None}
                pieces = []
                if same_vocab:
                    for tok in _answer_ids(answer, rt.vocab_size):
                        pieces.append(loop.push(tok))
                        if loop.done:
                            break
                    pieces.append(loop.close())
                    got = (loop.ids, loop.text, loop.finish)
                else:
                    text, finish = _answer_text(answer)
                    got, pieces = ([], text, finish), [text]
                if not got[1]:
                    raise _Unanswered("empty answer: the server's answer has no text; the shadow's answer stands")
                for piece in pieces:
                    if piece:
                        yield r, piece
                out[r] = (*got, info)
            except _Unanswered as e:
                info["fallback"] = str(e)
                out[r] = ([], "", "length", info)
            ms = (time.perf_counter() - t0) * 1e3
            info.setdefault("remote", {"model": self.escalation.model, "usage": None})
            info["remote"].update(ms=ms, bytes_sent=wire[0], bytes_received=wire[1])
            first_ms = ms if first_ms is None else first_ms
            per_token.append(ms)
            wire, t0 = [0, 0], time.perf_counter()
            yield TICK
        return out, Timings(first_ms or (time.perf_counter() - t_start) * 1e3, per_token[1:], 1)

    def _model(self, rt, wire: list[int]) -> tuple[str, bool]:
        """(model id, whether it publishes this artifact's vocabulary): token ids are sent only then."""
        esc = self.escalation
        try:
            listing = _call(esc, "/models", None, wire)
        except _Unanswered:
            if esc.model is None:
                raise
            return esc.model, False  # a plain OpenAI server may not list models: send text
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            if esc.model is None:
                raise _Unanswered(f"bad response: {esc.url}/models is not a model list (OpenAI's "
                                  "{\"data\": [...]}); name the model with escalate_model") from None
            return esc.model, False
        entries = {m.get("id"): m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}
        if esc.model is None:
            if not entries:
                raise _Unanswered("bad response: the server lists no models")
            model = next((i for i in entries if i.endswith(":base_shadow")), next(iter(entries)))
        else:
            model = esc.model
        ident = (entries.get(model) or {}).get("shadow_edge")
        if not isinstance(ident, dict):
            return model, False
        local_tok = rt.manifest.files.get("tokenizer.json", {}).get("sha256")
        same = ident.get("vocab_size") == rt.vocab_size and ident.get("tokenizer_sha256") == local_tok
        return model, bool(same)

    def _body(self, rt, prompt: list[int], opts, model: str, same_vocab: bool) -> dict:
        body = {"model": model, "max_tokens": opts.max_new_tokens, "temperature": 0.0 if opts.greedy
                else opts.temperature, "top_p": opts.top_p, "stream": False}
        if same_vocab:
            body["prompt"] = prompt
            if opts.eos is not None and not opts.eos:
                body["ignore_eos"] = True
        else:
            if not rt.has_tokenizer:
                raise _Unanswered("the server does not publish its model's vocabulary and this artifact has no "
                                  "tokenizer, so the prompt cannot be sent as text; the shadow's answer stands")
            body["prompt"] = rt.codec.tokenizer.decode(prompt, skip_special_tokens=False)
            if opts.stop:
                body["stop"] = list(opts.stop)
        if opts.seed is not None:
            body["seed"] = opts.seed
        if opts.top_k:
            body["top_k"] = opts.top_k
        return body


def _answer_ids(answer, vocab_size: int) -> list[int]:
    ext = answer.get("shadow_edge") if isinstance(answer, dict) else None
    ids = ext.get("token_ids") if isinstance(ext, dict) else None
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size
                                            for t in ids):
        raise _Unanswered("bad response: no token ids of this vocabulary in the answer (shadow_edge.token_ids)")
    return ids


def _answer_text(answer) -> tuple[str, str]:
    try:
        choice = answer["choices"][0]
        text = choice["text"]
    except (KeyError, IndexError, TypeError) as e:
        raise _Unanswered(f"bad response: no answer text in it ({type(e).__name__}: {e})") from None
    if not isinstance(text, str):
        raise _Unanswered(f"bad response: the answer's text is {type(text).__name__}")
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    return text, finish if isinstance(finish, str) else "stop"


def _call(escalation: Escalation, path: str, data: bytes | None, wire: list[int]):
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
    slow = f"server too slow: no answer from {url} within {escalation.timeout_s:g} s"
    try:
        with urllib.request.urlopen(req, timeout=escalation.timeout_s) as resp:
            raw = resp.read()
            wire[1] += _response_size(resp, raw)
    except urllib.error.HTTPError as e:
        try:
            raw = e.read() or b""
        except (OSError, http.client.HTTPException):
            raw = b""
        wire[1] += _response_size(e, raw)
        raise _Unanswered(f"server error: HTTP {e.code} from {url}: {_error_message(raw)}") from None
    except (socket.timeout, TimeoutError):
        raise _Unanswered(slow) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise _Unanswered(slow) from None
        raise _Unanswered(f"server unreachable: {url} ({e.reason})") from None
    except http.client.IncompleteRead as e:
        raise _Unanswered(f"bad response: {url} closed the connection after {len(e.partial)} bytes of the "
                          "answer (cut short)") from None
    except (http.client.HTTPException, ValueError) as e:  # malformed status line / headers, bad chunking
        raise _Unanswered(f"bad response: {url} answered something that is not HTTP ({type(e).__name__}: "
                          f"{str(e)[:120]})") from None
    except (ConnectionError, OSError) as e:
        raise _Unanswered(f"server unreachable: {url} ({e})") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise _Unanswered(f"bad response: {url} answered {len(raw)} bytes that are not JSON") from None


def _response_size(resp, raw: bytes) -> int:
    status = f"HTTP/1.1 {getattr(resp, 'status', getattr(resp, 'code', 0))} {getattr(resp, 'reason', '')}\r\n"
    return len(status.encode()) + len(str(resp.headers).encode()) + len(raw)


def _error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])[:200]
    except Exception:  # not OpenAI's error shape: show the start of the body
        return raw[:200].decode("utf-8", "replace") or "(empty body)"


# ---- the one-prompt shortcut (earlier releases' API) --------------------------------------------

@dataclass(frozen=True)
class RemoteCascadeResult:
    """What `remote_cascade` returns. answered_by: "shadow_only" or "remote"; reason says why (always set)."""

    text: str
    finish_reason: str
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
    bytes_sent: int  # HTTP requests (headers + bodies) of the escalation; 0 when none
    bytes_received: int  # HTTP responses (status lines + headers + bodies)
    remote_model: str | None = None
    remote_usage: dict | None = None
    token_ids: list[int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def remote_cascade(rt, prompt, escalation: Escalation, max_new_tokens: int = 32, do_sample: bool = False,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                   stop=None, chat: bool = False, cascade_threshold: float = 0.5) -> RemoteCascadeResult:
    """Answer one prompt with the shadow; escalate to `escalation` when unsure (`rt.generate(mode="cascade",
    escalate_to=...)` for one prompt, as a flat record)."""
    out = rt.generate(prompt, mode="cascade", max_new_tokens=max_new_tokens, do_sample=do_sample,
                      temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop, chat=chat,
                      cascade_threshold=cascade_threshold, escalate_to=escalation)
    if not isinstance(out.text, str):
        raise InputError("remote_cascade takes one prompt; call it once per prompt")
    s, remote = out.stats, out.stats.remote[0] or {}
    shadow_ms = s.stages["shadow_only"].total_ms
    remote_ms = remote.get("ms")
    return RemoteCascadeResult(
        out.text, out.finish_reason, s.answered_by[0], s.answered_by[0] == REMOTE, s.reason[0], s.confidence[0],
        s.threshold, s.shadow_text[0], s.shadow_token_ids[0], shadow_ms, remote_ms, out.timings.total_ms,
        remote.get("bytes_sent", 0), remote.get("bytes_received", 0), remote.get("model"), remote.get("usage"),
        list(out.token_ids))
