"""The one token loop of a row: eos, stop strings, streaming text, finish reasons, limits, deadline, cancel.

Every path that turns tokens into an answer goes through `RowLoop`: the runtime's strategies
(`strategies/base.consume`, so `generate`, `stream` and both stages of the cascade, local or remote)
and the server's scheduler (`serve/engine.py`, continuous batching). A row ends at an eos token
(kept), when a stop string appears in its text (cut before it), at its token limit, past its
deadline or when its `Control` is cancelled, whichever comes first; its text pieces join to its
final text and never split a UTF-8 character (`text.TextStream`).
"""

from __future__ import annotations

import time

import numpy as np

from shadow_edge.runtime.text import TextStream

TICK = (-1, "")  # yielded by a strategy's piece generator after each step: a point where it may be paused
ENDED_BY_CONTROL = ("timeout", "cancelled", "shutdown")  # finish reasons that are not an answer's end


class Control:
    """A request's deadline (time.monotonic()) and cancellation, read by its rows between steps."""

    def __init__(self, deadline: float | None = None):
        self.deadline = deadline
        self.reason: str | None = None  # "cancelled" (client gone) or "shutdown" once cancelled

    def cancel(self, reason: str = "cancelled") -> None:
        if self.reason is None:
            self.reason = reason

    def stopped(self, now: float | None = None) -> str | None:
        """Why the request must stop now (cancelled, shutdown, timeout), or None."""
        if self.reason is not None:
            return self.reason
        if self.deadline is not None and (time.monotonic() if now is None else now) > self.deadline:
            return "timeout"
        return None


class RowLoop:
    """One row: `push(token)` appends a token and returns its new text; `finish` is set once the row ends."""

    def __init__(self, codec, max_new_tokens: int, stop: tuple[str, ...] = (), eos=(), incremental: bool = True,
                 control: Control | None = None):
        self.limit, self.eos, self.control = max_new_tokens, frozenset(int(t) for t in eos), control
        self.stream = TextStream(codec, tuple(stop), incremental)
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish: str | None = None  # eos | stop | length | timeout | cancelled | shutdown
        self.closed = False

    @property
    def done(self) -> bool:
        return self.finish is not None

    def push(self, token: int, logprob: float | None = None) -> str:
        """Append one token unless the row is done; returns the text it made safe to emit."""
        if self.done:
            return ""
        token = int(token)
        self.ids.append(token)
        if logprob is not None:
            self.logprobs.append(float(logprob))
        if token in self.eos:
            self.finish = "eos"
            return ""
        piece = self.stream.push(token)
        if self.stream.stopped:
            self.finish = "stop"
        elif len(self.ids) >= self.limit:
            self.finish = "length"
        return piece

    def poll(self, now: float | None = None) -> bool:
        """End the row if its control says stop (deadline, cancel, shutdown); True when that ended it now."""
        if self.done or self.control is None:
            return False
        reason = self.control.stopped(now)
        if reason is not None:
            self.finish = reason
            return True
        return False

    def end(self, reason: str = "length") -> None:
        """End a row its strategy stopped feeding (e.g. out of steps)."""
        if self.finish is None:
            self.finish = reason

    def close(self) -> str:
        """The rest of the row's text (once); afterwards `text` is final."""
        if self.closed:
            return ""
        self.closed = True
        self.end()
        return self.stream.finish()

    @property
    def text(self) -> str:
        return self.stream.emitted

    @property
    def answered(self) -> bool:
        """The row ended as an answer (not by deadline, cancellation or shutdown)."""
        return self.finish not in ENDED_BY_CONTROL

    def confidence(self) -> float:
        """Geometric mean of the probabilities of the row's tokens (0 with none)."""
        return float(np.exp(np.mean(self.logprobs))) if self.logprobs else 0.0
