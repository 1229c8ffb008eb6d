"""Server settings: one frozen dataclass, validated in `__post_init__` (runtime-only, never stored)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shadow_edge.adapter_pack import adapter_pairs
from shadow_edge.errors import InputError
from shadow_edge.runtime.inputs import thread_count

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024  # a 128k-token prompt as JSON text or token ids fits with room to spare
DECODE_NICE = 19  # the decode thread's nice increment (the most): a newcomer's prefill takes the cores first


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} is {value!r}; it must be an integer >= 1")


def finite_seconds(name: str, value, allow_zero: bool = True) -> None:
    """A duration: a finite number > 0 (>= 0 with allow_zero); nan, inf and negatives are refused."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0 \
            or (value == 0 and not allow_zero):
        raise InputError(f"{name} is {value!r}; it must be a finite number " + (">= 0" if allow_zero else "> 0"))


@dataclass(frozen=True)
class ServeOptions:
    """What `shadow-edge serve` serves and how. Every field has a CLI flag of the same name."""

    artifacts: tuple[str, ...] = field(metadata={"help": "artifact directories written by `shadow-edge export`"})
    served_names: tuple[str, ...] = field(default=(), metadata={
        "help": "model names, one per artifact, in order (default: each artifact's directory name)"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=8000, metadata={"help": "TCP port (0 = any free port)"})
    api_key: str | None = field(default=None, metadata={
        "help": "when set, every /v1 request needs `Authorization: Bearer KEY` (else 401)"})
    default_mode: str = field(default="base_shadow", metadata={
        "help": "the mode of a bare model name (an artifact without it uses its first mode)"})
    max_batch: int = field(default=8, metadata={"help": "most requests run together as one left-padded batch"})
    max_queue: int = field(default=64, metadata={"help": "most requests waiting per model; more get 429"})
    threads: int | None = field(default=None, metadata={"help": "onnxruntime threads (default: all cores)"})
    request_timeout_s: float = field(default=600.0, metadata={
        "help": "a request still unfinished this long after it arrived ends with 504"})
    batch_window_ms: float = field(default=5.0, metadata={
        "help": "how long the scheduler waits for more requests before starting a batch"})
    verify: bool = field(default=True, metadata={"help": "check every artifact file's sha256 at load"})
    default_max_tokens: int = field(default=256, metadata={
        "help": "new tokens of a chat request without max_tokens (capped by the context; KV buffers are "
                "preallocated per row, so 'the whole context' would reserve the most memory)"})
    adapters: tuple[tuple[str, str], ...] = field(default=(), metadata={
        "help": "(name, PACK) adapter packs, each served as one more model on the base artifact it was exported "
                "against (serve/adapters.py)"})
    max_body_bytes: int = field(default=DEFAULT_MAX_BODY_BYTES, metadata={
        "help": "largest request body accepted; larger ones get 413 before they are read (Content-Length) or "
                "as soon as the upload passes it"})
    shutdown_grace_s: float = field(default=30.0, metadata={
        "help": "on shutdown, running requests may finish for this long; waiting ones get 503 at once"})
    cors_origins: tuple[str, ...] = field(default=(), metadata={
        "help": "browser origins (scheme://host[:port]) whose pages may call the API, e.g. the page of "
                "`shadow-edge web`; '*' allows any origin; none: no CORS headers"})
    decode_nice: int = field(default=DECODE_NICE, metadata={
        "help": "how much lower the decode thread's OS priority (nice, 0..19) is than the prefill thread's, so a "
                "newcomer's prefill takes the cores first (Linux; 0 = the same priority)"})
    spin_threads: bool = field(default=False, metadata={
        "help": "run the sessions on onnxruntime's process-wide pool, whose threads spin between work items: a "
                "lone request decodes ~18% faster on an otherwise idle machine, but while other processes keep the "
                "cores busy the spinning threads starve the decode thread below them (off: each session has its "
                "own pool of sleeping threads)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "artifacts", tuple(str(a) for a in self.artifacts))
        object.__setattr__(self, "served_names", tuple(self.served_names or ()))
        if not self.artifacts:
            raise InputError("no artifact given; pass at least one artifact directory (shadow-edge serve ART)")
        for art in self.artifacts:
            if not Path(art).is_dir():
                raise InputError(f"{art}: no such artifact directory; create one with `shadow-edge export`")
        if self.served_names and len(self.served_names) != len(self.artifacts):
            raise InputError(f"--served-name is given {len(self.served_names)} times for {len(self.artifacts)} "
                             "artifacts; give one name per artifact, in the same order")
        for name in self.names:
            if not name or ":" in name or "/" in name:
                raise InputError(f"model name {name!r} is not usable; names must be non-empty without ':' or '/' "
                                 "(set one with --served-name)")
        if len(set(self.names)) != len(self.names):
            raise InputError(f"model names {list(self.names)} repeat; give distinct names with --served-name")
        object.__setattr__(self, "adapters", adapter_pairs(self.adapters))
        for name, pack in self.adapters:
            if not name or ":" in name or "/" in name or name in self.names:
                raise InputError(f"adapter name {name!r} is not usable; adapter names are model names: non-empty, "
                                 f"without ':' or '/', and not an artifact's name ({', '.join(self.names)})")
            if not Path(pack).is_dir():
                raise InputError(f"--adapter {name}={pack}: no such adapter pack directory; create one with "
                                 "`shadow-edge export --base B --adapter A --out PACK --against BASE_ART`")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"port is {self.port!r}; it must be an integer in [0, 65535]")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("api_key is empty; give a non-empty key or leave --api-key out")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins or ()))
        for origin in self.cors_origins:
            parts = urlsplit(origin) if isinstance(origin, str) else None
            if origin != "*" and (parts is None or parts.scheme not in ("http", "https") or not parts.netloc
                                  or parts.path or parts.query or parts.fragment):
                raise InputError(f"cors_origin {origin!r} is not an origin; give scheme://host[:port] as the browser "
                                 "shows the page's, e.g. http://127.0.0.1:8080 (no path or trailing /), or '*'")
        _positive_int("max_batch", self.max_batch)
        if not isinstance(self.decode_nice, int) or isinstance(self.decode_nice, bool) \
                or not 0 <= self.decode_nice <= 19:
            raise InputError(f"decode_nice is {self.decode_nice!r}; it must be an integer in [0, 19] (a nice "
                             "increment; 0 = the decode thread at the prefill thread's priority)")
        if not isinstance(self.spin_threads, bool):
            raise InputError(f"spin_threads is {self.spin_threads!r}; it must be True or False")
        _positive_int("max_queue", self.max_queue)
        thread_count(self.threads)  # checked now, before the port is bound and the artifacts load
        _positive_int("default_max_tokens", self.default_max_tokens)
        _positive_int("max_body_bytes", self.max_body_bytes)
        for name in ("request_timeout_s", "batch_window_ms", "shutdown_grace_s"):
            finite_seconds(name, getattr(self, name), allow_zero=name != "request_timeout_s")

    @property
    def names(self) -> tuple[str, ...]:
        """The served model names, one per artifact."""
        return self.served_names or tuple(Path(a).resolve().name for a in self.artifacts)
