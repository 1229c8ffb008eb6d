"""`shadow-edge web`'s settings: one frozen dataclass, validated in `__post_init__` (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shadow_edge.errors import InputError


@dataclass(frozen=True)
class WebOptions:
    """How the page behaves; every field has a `shadow-edge web` flag of the same name."""

    threshold: float = field(default=0.5, metadata={
        "help": "escalate when the shadow's confidence (geometric mean of its tokens' probabilities) is below"})
    max_new_tokens: int = field(default=32, metadata={"help": "the page's default number of new tokens"})
    escalate_to: str | None = field(default=None, metadata={
        "help": "default `shadow-edge serve` URL (http://host:port/v1); unset: the page runs offline"})
    escalate_timeout_s: float = field(default=30.0, metadata={"help": "seconds the page waits for the server"})
    force: bool = field(default=False, metadata={"help": "replace a directory this command wrote before"})
    verify: bool = field(default=True, metadata={"help": "check the artifact files' sha256 before reading them"})
    node_modules: Path | None = field(default=None, metadata={
        "help": "npm node_modules holding the page's JavaScript (default: web/node_modules of the checkout)"})

    def __post_init__(self) -> None:
        t = self.threshold
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 <= t <= 1.0:
            raise InputError(f"--threshold is {t!r}; it must be a number in [0, 1] (0: never escalate)")
        m = self.max_new_tokens
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise InputError(f"--max-new-tokens is {m!r}; it must be an integer >= 1")
        s = self.escalate_timeout_s
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not s > 0:
            raise InputError(f"--escalate-timeout is {s!r}; it must be a number of seconds > 0")
        if self.escalate_to is not None:
            parts = urlsplit(self.escalate_to)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise InputError(f"--escalate-to {self.escalate_to!r} is not an http(s) URL; give the server's base "
                                 "URL, e.g. http://127.0.0.1:8000/v1")
