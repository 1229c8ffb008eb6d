"""The scheduler of one artifact: a bounded queue and one worker thread that runs requests in batches.

What the batching does: requests for the same graph mode (shadow_only, base_shadow, ...)
that are waiting when the worker becomes free, plus those arriving within `batch_window_ms`
of the later of the oldest one's arrival and the end of the previous batch (so clients that
got their answers and ask again join together), run as one left-padded batch of up to
`max_batch` rows: one prefill and then one decode step per token for all rows, so the
weights are read once per step for the whole batch. Each row keeps its own prompt, max_tokens, stop strings, eos
handling, sampler (temperature / top_p / top_k / seed) and deadline; a row that finishes
(eos, stop, length, timeout, client gone) answers at once and is fed padding until the
batch ends.

What it does not do: rows do not join a running batch (a request arriving mid-batch waits
for the next one: no continuous batching), finished rows still cost compute until the
longest row ends (no KV compaction), and modes without a single graph chain (cascade,
speculative) run one request at a time through `ShadowRuntime.generate` (their responses
carry the cascade decision or the speculative acceptance). One batch runs
at a time per artifact; onnxruntime's thread pool does the parallel work inside it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from shadow_edge.errors import ShadowEdgeError
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.sampling import Sampler, greedy
from shadow_edge.runtime.strategies.base import LoopState
from shadow_edge.runtime.strategies.plain import decode_n
from shadow_edge.runtime.text import TextStream
from shadow_edge.serve.api_errors import APIError
from shadow_edge.serve.metrics import Metrics

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # runtime -> OpenAI finish_reason


@dataclass(frozen=True)
class Sampling:
    """One request's token choice: greedy when temperature is 0."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sampler(self) -> Sampler:
        return Sampler(not self.greedy, self.temperature, self.top_k, self.top_p, self.seed)


@dataclass(eq=False)
class Job:
    """One request inside the engine. The worker reports through `events` (an asyncio.Queue of the caller's
    loop): ("text", piece) any number of times, then ("end", self) or ("error", APIError)."""

    ids: list[int]  # the prompt's token ids (chat template applied)
    mode: str
    max_tokens: int
    sampling: Sampling
    stops: tuple[str, ...] = ()
    ignore_eos: bool = False
    options: dict = field(default_factory=dict)  # the mode's own options by public name (cascade_threshold, ...)
    timeout_s: float = 600.0
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    arrived: float = field(default_factory=time.monotonic)
    # filled by the worker
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    first_token_at: float | None = None
    stats: dict | None = None  # the strategy's stats of this request (speculative acceptance, cascade decision)
    cancelled: bool = False  # set by the caller when its client went away
    adapter: str | None = None  # the runtime's adapter pack to run with (serve/adapters.py), None: the artifact's own
    model: str | None = None  # served model name for the metrics (default: the engine's artifact name)

    @property
    def deadline(self) -> float:
        return self.arrived + self.timeout_s

    def report(self, kind: str, payload) -> None:
        if self.loop is None or self.events is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the caller's loop is closed (server shutting down)
            pass


class Engine:
    """One artifact's runtime, its waiting queue and the worker thread that batches."""

    def __init__(self, name: str, rt: ShadowRuntime, max_batch: int, max_queue: int, batch_window_ms: float,
                 metrics: Metrics):
        self.name, self.rt, self.metrics = name, rt, metrics
        self.max_batch, self.max_queue, self.window = max_batch, max_queue, batch_window_ms / 1e3
        self.batch_modes = set(rt.manifest.modes)  # one graph chain each: batchable
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._free_since = time.monotonic()  # when the last batch ended
        self._cv = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name=f"shadow-edge-engine-{name}", daemon=True)
        self._thread.start()

    def model(self, job: Job) -> str:
        """The served model name a job's metrics count under (its adapter's, or this artifact's)."""
        return job.model or self.name

    # ---- caller side ---------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job, or raise 429 (queue full) / 503 (shutting down)."""
        with self._cv:
            if self._closing:
                raise APIError(503, "the server is shutting down; retry on another instance")
            if len(self._pending) >= self.max_queue:
                raise APIError(429, f"model {self.name!r} has {len(self._pending)} requests waiting (--max-queue "
                                    f"{self.max_queue}); retry later")
            self._pending.append(job)
            self.metrics.queue_depth.labels(self.name).set(len(self._pending))
            self._cv.notify_all()

    def stop_accepting(self) -> None:
        """Refuse new work (503) and fail waiting jobs with 503; the running batch goes on."""
        with self._cv:
            self._closing = True
            waiting, self._pending = list(self._pending), deque()
            self._cv.notify_all()
        for job in waiting:
            job.report("error", APIError(503, "the server is shutting down and this request had not started; "
                                              "retry on another instance"))

    def close(self, grace_s: float = 0.0) -> None:
        """Stop accepting (see above), let the running batch finish for up to `grace_s`, then cancel it, and stop
        the worker."""
        self.stop_accepting()
        self._thread.join(grace_s)
        with self._cv:
            for job in self._running:
                job.cancelled = True
        self._thread.join()

    # ---- worker side ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            try:
                if jobs[0].mode in self.batch_modes:
                    self._run_batch(jobs)
                else:
                    self._run_single(jobs[0])
            except ShadowEdgeError as e:
                self._fail(jobs, APIError(400, str(e)))
            except Exception as e:  # never let one bad batch kill the worker
                self._fail(jobs, APIError(500, f"generation failed: {type(e).__name__}: {e}"))
            finally:
                with self._cv:
                    self._running, self._free_since = [], time.monotonic()

    def _fail(self, jobs: list[Job], error: APIError) -> None:
        for job in jobs:
            if job.finish_reason is None:
                job.finish_reason = "error"
                job.report("error", error)

    def _next_batch(self) -> list[Job] | None:
        with self._cv:
            while True:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if self._closing and not self._pending:
                    return None
                first = self._pending[0]
                if first.mode in self.batch_modes:  # requests arriving within the window join the batch
                    deadline = max(first.arrived, self._free_since) + self.window
                    while len(self._pending) < self.max_batch and not self._closing \
                            and (left := deadline - time.monotonic()) > 0:
                        self._cv.wait(left)
                    if not self._pending:
                        continue
                jobs = self._pick()
                self.metrics.queue_depth.labels(self.name).set(len(self._pending))
                if jobs:
                    self._running = jobs
                    return jobs

    def _pick(self) -> list[Job]:
        """Take the oldest live job and the waiting jobs of its mode that fit beside it (FIFO)."""
        now, picked, keep = time.monotonic(), [], deque()
        longest = new = 0
        for job in self._pending:
            if job.cancelled or now > job.deadline:
                self._drop(job, now)
                continue
            fits = not picked or (job.mode == picked[0].mode and job.adapter == picked[0].adapter
                                  and job.mode in self.batch_modes
                                  and len(picked) < self.max_batch
                                  and max(longest, len(job.ids)) + max(new, job.max_tokens) <= self.rt.max_positions)
            if fits:
                picked.append(job)
                longest, new = max(longest, len(job.ids)), max(new, job.max_tokens)
            else:
                keep.append(job)
        self._pending = keep
        return picked

    def _drop(self, job: Job, now: float) -> None:
        if job.cancelled:
            job.finish_reason = "cancelled"
        else:
            job.finish_reason = "error"
            job.report("error", APIError(504, f"the request waited {now - job.arrived:.1f} s in the queue, past its "
                                              f"timeout of {job.timeout_s:g} s"))

    def _run_batch(self, jobs: list[Job]) -> None:
        rt, mode, b, model = self.rt, jobs[0].mode, len(jobs), self.model(jobs[0])
        self.metrics.batch_size.labels(model, mode).observe(b)
        t = max(len(j.ids) for j in jobs)
        ids = np.full((b, t), rt.pad_id, dtype=np.int64)  # [b, t] left-padded
        mask = np.zeros((b, t), dtype=np.int64)  # [b, t] 0 on padding
        for r, j in enumerate(jobs):
            ids[r, t - len(j.ids):], mask[r, t - len(j.ids):] = j.ids, 1
        samplers = [j.sampling.sampler() for j in jobs]
        state = LoopState(np.zeros(b, dtype=bool))

        def choose(logits: np.ndarray) -> np.ndarray:  # [b, V] -> [b]: each row with its own sampler
            tokens = greedy(logits)
            for r, s in enumerate(samplers):
                if not s.greedy and not state.done[r]:
                    tokens[r] = s(logits[r:r + 1])[0]
            return tokens

        with self.rt.using(jobs[0].adapter):
            self._decode(jobs, rt.pipeline(mode, jobs[0].adapter), ids, mask, choose, state)

    def _decode(self, jobs: list[Job], pipe, ids: np.ndarray, mask: np.ndarray, choose, state: LoopState) -> None:
        rt = self.rt
        streams = [TextStream(rt.codec, j.stops, incremental=True) for j in jobs]
        eos = set(rt.eos_ids)
        steps = decode_n(pipe, ids, mask, max(j.max_tokens for j in jobs), choose, rt.pad_id, False, state)
        latency = self.metrics.token_latency.labels(self.model(jobs[0]), jobs[0].mode)  # one child per batch
        for i, rec in enumerate(steps):
            now = time.monotonic()
            if i > 0:
                latency.observe(rec.ms / 1e3)
            for r, job in enumerate(jobs):
                if state.done[r]:
                    continue
                tok = rec.tokens[r][0]  # plain decoding: one token per row and step
                job.token_ids.append(tok)
                if job.first_token_at is None:
                    job.first_token_at = now
                if tok in eos and not job.ignore_eos:
                    reason = "stop"
                else:
                    piece = streams[r].push(tok)
                    if piece or not rt.has_tokenizer:  # without a tokenizer, one (empty) chunk per token
                        job.report("text", piece)
                    reason = "stop" if streams[r].stopped else "length" if len(job.token_ids) >= job.max_tokens \
                        else None
                if job.cancelled:
                    reason = "cancelled"
                elif reason is None and now > job.deadline:
                    reason = "timeout"
                if reason is not None:
                    state.done[r] = True
                    self._finish(job, reason, streams[r])
        for r, job in enumerate(jobs):  # the batch was closed early (all rows done) or cancelled
            if not state.done[r]:
                self._finish(job, "cancelled" if job.cancelled else "length", streams[r])

    def _finish(self, job: Job, reason: str, stream: TextStream) -> None:
        self.metrics.tokens.labels(self.model(job), job.mode).inc(len(job.token_ids))
        if reason == "timeout":
            job.finish_reason = "error"
            job.report("error", APIError(504, f"the request ran past its timeout of {job.timeout_s:g} s after "
                                              f"{len(job.token_ids)} tokens"))
            return
        job.finish_reason = reason
        if reason == "cancelled":
            return
        piece = stream.finish()
        if piece:
            job.report("text", piece)
        job.text = stream.emitted
        job.report("end", job)

    def _run_single(self, job: Job) -> None:
        """A mode without one graph chain (cascade, speculative): one request through `ShadowRuntime.generate`."""
        s = job.sampling
        result = self.rt.generate(job.ids, mode=job.mode, max_new_tokens=job.max_tokens, do_sample=not s.greedy,
                                  temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed,
                                  stop=job.stops or None, eos=() if job.ignore_eos else None, adapter=job.adapter,
                                  **job.options)
        job.first_token_at = time.monotonic()
        job.token_ids, job.text = list(result.token_ids), result.text
        job.finish_reason = FINISH.get(result.finish_reason, result.finish_reason)
        model = self.model(job)
        if result.stats is not None:
            job.stats = result.stats.row(0) if hasattr(result.stats, "row") else result.stats.to_dict()
            self.metrics.count_stats(model, job.mode, result.stats)
        self.metrics.batch_size.labels(model, job.mode).observe(1)
        self.metrics.tokens.labels(model, job.mode).inc(len(job.token_ids))
        if job.cancelled:
            job.finish_reason = "cancelled"
            return
        if job.text:
            job.report("text", job.text)
        job.report("end", job)
