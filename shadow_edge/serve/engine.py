"""The scheduler of one artifact: a bounded queue and one worker thread that steps every running request.

Plain modes (one graph chain: shadow_only, base_shadow) batch continuously (serve/slots.py): a
request's prompt is prefilled alone by a second thread while the batch decodes (in chunks; its
first token is sent at once), it joins its mode's running batch at the next decode step and
leaves it when it finishes, its slot reused. Other strategies (cascade, speculative, and any registered one) run
one request per stepper through `ShadowRuntime`'s own strategy code, advanced one step (a
decode step, a verify round, a server call) per turn, interleaved with the batches: they are
not batched across requests (speculative: rows accept different numbers of drafts per round,
and onnxruntime's CPU GroupQueryAttention verifies seq > 1 with a past only at batch 1, so its
verify runs row by row anyway; cascade: its second pass reuses its own first pass's prompt cache).
Every row of every mode goes through the runtime's one token loop (`token_loop.RowLoop`): eos,
stop strings, text, finish reasons, its deadline (`--timeout`), its client going away and
shutdown end it within one step. One step runs at a time per artifact; onnxruntime's thread
pools do the parallel work inside it. The decode thread runs at a lower OS priority than the
prefill thread (`decode_nice`, Linux per-thread nice): when both want the cores a newcomer's
prefill goes first, so its time to first token stays near a lone request's. The server loads
its runtimes with pools of sleeping threads (`spin_threads=False`): a spinning pool thread at
normal priority would take the cores from the niced decode thread whenever other processes
leave the server less than the whole machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from shadow_edge.errors import ShadowEdgeError
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.options import GenerationOptions
from shadow_edge.runtime.sampling import Sampler
from shadow_edge.runtime.strategies import strategy
from shadow_edge.runtime.token_loop import Control, RowLoop
from shadow_edge.serve.api_errors import APIError
from shadow_edge.serve.metrics import Metrics
from shadow_edge.serve.options import DECODE_NICE
from shadow_edge.serve.slots import PREFILL_CHUNK, SlotBatch

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # runtime -> OpenAI finish_reason


def lower_thread_priority(increment: int) -> int | None:
    """Raise the calling thread's nice value by `increment` (Linux: nice is per thread; elsewhere, or where the
    OS refuses, nothing changes); returns the thread's nice value after, or None where unchanged."""
    if increment <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return None
    try:
        tid = threading.get_native_id()
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        return nice
    except OSError:
        return None


@dataclass(eq=False)
class Job:
    """One request inside the engine. The worker reports through `events` (an asyncio.Queue of the caller's
    loop): ("text", piece) any number of times, then ("end", self) or ("error", APIError)."""

    ids: list[int]  # the prompt's token ids (chat template applied)
    opts: GenerationOptions  # mode, limits, sampling, stop, eos, adapter, the mode's own options, control
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    arrived: float = field(default_factory=time.monotonic)
    model: str | None = None  # served model name for the metrics (default: the engine's artifact name)
    # filled by the worker
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    first_token_at: float | None = None
    stats: dict | None = None  # the strategy's stats (to_dict), e.g. speculative acceptance, cascade decision

    def __post_init__(self) -> None:
        """Every job has a `Control` (the worker threads read it for each job): options without one get one with
        no deadline; anything else is refused here, in the caller's thread, not in a worker."""
        if not isinstance(self.opts, GenerationOptions):
            raise TypeError(f"Job.opts is a {type(self.opts).__name__}; it must be a GenerationOptions "
                            "(ShadowRuntime.options(...))")
        if self.opts.control is None:
            self.opts = dataclasses.replace(self.opts, control=Control())
        elif not isinstance(self.opts.control, Control):
            raise TypeError(f"Job.opts.control is a {type(self.opts.control).__name__}; it must be a "
                            "token_loop.Control (or None: no deadline)")

    @property
    def mode(self) -> str:
        return self.opts.mode

    @property
    def adapter(self) -> str | None:
        return self.opts.adapter

    @property
    def control(self) -> Control:
        return self.opts.control

    @property
    def timeout_s(self) -> float:
        return math.inf if self.control.deadline is None else self.control.deadline - self.arrived

    @property
    def cancelled(self) -> bool:
        return self.control.reason == "cancelled"

    @cancelled.setter
    def cancelled(self, value: bool) -> None:  # the caller's client went away
        if value:
            self.control.cancel("cancelled")

    def report(self, kind: str, payload) -> None:
        if self.loop is None or self.events is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the caller's loop is closed (server shutting down)
            pass


class _Row:
    """A job's row in a slot batch: its token loop and sampler."""

    def __init__(self, rt: ShadowRuntime, job: Job):
        o = job.opts
        self.job, self.sampler = job, Sampler(o.do_sample, o.temperature, o.top_k, o.top_p, o.seed)
        self.loop = RowLoop(rt.codec, o.max_new_tokens, o.stop, o.eos if o.eos is not None else rt.eos_ids,
                            True, o.control)


class _Solo:
    """One request of a strategy that is not batched, stepped through the runtime's own code."""

    def __init__(self, rt: ShadowRuntime, job: Job):
        self.job = job
        self.gen = rt.pieces(job.ids, job.opts)
        self.rows = None

    def step(self) -> bool:
        """Advance to the next step boundary, reporting text; True when the request is over (`rows` set)."""
        while True:
            try:
                r, piece = next(self.gen)
            except StopIteration as done:
                self.rows = done.value
                return True
            if r < 0:
                return False
            if self.job.first_token_at is None:
                self.job.first_token_at = time.monotonic()
            self.job.report("text", piece)


class Engine:
    """One artifact's runtime, its waiting queue and the worker thread that steps the running requests."""

    def __init__(self, name: str, rt: ShadowRuntime, max_batch: int, max_queue: int, batch_window_ms: float,
                 metrics: Metrics, prefill_chunk: int | None = None, grace_s: float = 30.0,
                 decode_nice: int = DECODE_NICE):
        """decode_nice: how much lower than the prefill thread the decode thread runs (OS nice increment; 0 =
        the same priority)."""
        self.name, self.rt, self.metrics, self.grace_s = name, rt, metrics, grace_s
        self.decode_nice = decode_nice
        self.decode_niced: int | None = None  # the decode thread's nice value once it lowered it
        self.max_batch, self.max_queue, self.window = max_batch, max_queue, batch_window_ms / 1e3
        self.prefill_chunk = prefill_chunk
        self._pending: deque[Job] = deque()
        self._batches: dict[tuple[str, str | None], SlotBatch] = {}
        self._solos: list[_Solo] = []
        self._cv = threading.Condition()
        self._closing = False
        self._cut_at: float | None = None  # shutdown: running requests end with 503 after this
        self._to_prefill: deque = deque()  # (batch, newcomer) in arrival order, for the prefill thread
        self._thread = threading.Thread(target=self._work, name=f"shadow-edge-engine-{name}", daemon=True)
        self._prefiller = threading.Thread(target=self._prefill_work, name=f"shadow-edge-prefill-{name}",
                                           daemon=True)
        self._thread.start()
        self._prefiller.start()

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

    def stop_accepting(self, grace_s: float | None = None) -> None:
        """The server begins to stop: `begin_close` with this engine's shutdown grace."""
        self.begin_close(self.grace_s if grace_s is None else grace_s)

    def begin_close(self, grace_s: float) -> None:
        """Refuse new work, fail waiting jobs with 503, and end running ones with 503 after `grace_s`
        (each within one step); returns at once."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cut_at = time.monotonic() + max(0.0, grace_s)
            waiting, self._pending = list(self._pending), deque()
            self.metrics.queue_depth.labels(self.name).set(0)
            self._cv.notify_all()
        for job in waiting:
            job.finish_reason = "error"
            job.report("error", APIError(503, "the server is shutting down and this request had not started; "
                                              "retry on another instance"))

    def close(self, grace_s: float = 0.0) -> None:
        """`begin_close`, then wait for the worker (running requests end within one step past the grace)."""
        self.begin_close(grace_s)
        self._thread.join(max(0.0, grace_s) + 30)
        self._prefiller.join(5)

    # ---- worker side ---------------------------------------------------------------------------
    def _work(self) -> None:
        """The decode thread: seats prefilled newcomers, steps the batches and the solo requests. It runs at a lower
        OS priority than the prefill thread (`decode_nice`): when both run, a newcomer's prefill gets the cores
        first and the batch decodes with what is left (and at full speed when nothing is prefilled)."""
        self.decode_niced = lower_thread_priority(self.decode_nice)
        while True:
            with self._cv:
                self._admit()
                self._cut()
                if not self._busy():
                    if self._closing and not self._pending and not any(b.joining for b in self._batches.values()):
                        return
                    self._cv.wait(0.05 if self._closing else self._next_admission())
                    continue
            self._turn()

    def _prefill_work(self) -> None:
        """The prefill thread: runs each newcomer's prompt alone (onnxruntime runs sessions concurrently) while
        the batch decodes, chooses and sends its first token, and marks it ready to be seated."""
        while True:
            with self._cv:
                self._admit()
                self._cut()
                item = None
                while self._to_prefill and item is None:
                    batch, n = self._to_prefill.popleft()
                    item = (batch, n) if n in batch.joining else None
                if item is None:
                    if self._closing and not self._pending:
                        return
                    self._cv.wait(0.05 if self._closing else self._next_admission())
                    continue
                n.status = "prefilling"
            batch, n = item
            row, error = n.row, None
            try:
                if not row.loop.poll():
                    batch.prefill(n)
                    n.first = int(row.sampler(n.logits)[0])
                    self._push(row, n.first)
            except Exception as e:  # this request fails; the others go on
                error = e
            with self._cv:
                if n not in batch.joining:  # its batch failed meanwhile (and reported it)
                    continue
                if error is not None or row.loop.done:
                    batch.joining.remove(n)
                else:
                    n.status = "ready"
                self._cv.notify_all()
            if error is not None:
                self._fail([row.job], _api_error(error))
            elif row.loop.done:
                self._end_row(row)

    def _cut(self) -> None:
        """Past the shutdown grace: every running request ends (503) at its next step."""
        if self._cut_at is not None and time.monotonic() >= self._cut_at:
            for job in self._running_jobs():
                job.control.cancel("shutdown")

    def _busy(self) -> bool:
        """Work for the decode thread: solo requests, running rows, or newcomers ready to be seated."""
        return bool(self._solos) or any(b.running or any(n.status == "ready" for n in b.joining)
                                        for b in self._batches.values())

    def _running_jobs(self) -> list[Job]:
        jobs = [s.job for s in self._solos]
        for b in self._batches.values():
            jobs += [r.job for _, r in b.running] + [n.row.job for n in b.joining]
        return jobs

    def _next_admission(self) -> float | None:
        """Seconds until the oldest waiting job's batch window ends (None: nothing waits)."""
        if not self._pending:
            return None
        return max(0.001, self._pending[0].arrived + self.window - time.monotonic())

    def _admit(self) -> None:
        """Move waiting jobs (FIFO) into a batch with a free slot or a solo stepper; drop cancelled/expired ones."""
        now, keep = time.monotonic(), deque()
        solos = len(self._solos)
        for job in self._pending:
            try:
                placed = self._place(job, now, solos)
            except Exception as e:  # this request fails (400 for a ShadowEdgeError); the worker goes on
                self._fail([job], _api_error(e))
                continue
            solos += placed == "solo"
            if placed is None:
                keep.append(job)
        self._pending = keep
        self.metrics.queue_depth.labels(self.name).set(len(self._pending))

    def _place(self, job: Job, now: float, solos: int) -> str | None:
        """Where a waiting job goes now: "dropped" (cancelled/expired), "batch" (a free slot of its mode's batch;
        queued for prefill), "solo" (a stepper of its own), or None (it keeps waiting)."""
        why = job.control.stopped(now)
        if why is not None:
            self._drop(job, why, now)
            return "dropped"
        if now < job.arrived + self.window:
            return None
        if strategy(job.mode).batchable:
            key = (job.mode, job.adapter)
            batch = self._batches.get(key)
            if batch is None:
                chunk = PREFILL_CHUNK if self.prefill_chunk is None else self.prefill_chunk
                merged = self.rt.step_graph(job.mode) if job.adapter is None else None
                batch = self._batches[key] = SlotBatch(self.rt.pipeline(job.mode, job.adapter), self.max_batch,
                                                       self.rt.pad_id, chunk, merged)
            if batch.free <= 0:
                return None
            self._to_prefill.append((batch, batch.join(_Row(self.rt, job), job.ids)))
            self._cv.notify_all()
            return "batch"
        if solos >= self.max_batch:
            return None
        self._solos.append(_Solo(self.rt, job))
        return "solo"

    def _drop(self, job: Job, why: str, now: float) -> None:
        job.finish_reason = "cancelled" if why == "cancelled" else "error"
        if why == "timeout":
            job.report("error", APIError(504, f"the request waited {now - job.arrived:.1f} s in the queue, past its "
                                              f"timeout of {job.timeout_s:g} s"))

    def _turn(self) -> None:
        """One round: seat prefilled newcomers and run one decode step of each batch, one step of each solo."""
        for key, batch in list(self._batches.items()):
            try:
                with self.rt.using(key[1]):
                    self._step_batch(batch)
            except Exception as e:  # never let one bad batch kill the worker
                self._fail_batch(batch, e)
        for solo in list(self._solos):
            try:
                if solo.step():
                    self._solos.remove(solo)
                    self._finish_solo(solo)
            except Exception as e:
                self._solos.remove(solo)
                self._fail([solo.job], _api_error(e))

    def _step_batch(self, batch: SlotBatch) -> None:
        with self._cv:  # seat the newcomers the prefill thread finished (a slot was kept for each)
            for n in [n for n in batch.joining if n.status == "ready"]:
                batch.joining.remove(n)
                batch.seat(n, n.first)
        for slot, row in batch.running:
            if row.loop.poll():
                batch.leave(slot)
                self._end_row(row)
        if not batch.running:
            return
        logits, occupied, ms = batch.step()
        model, mode = self.model(batch.rows[occupied[0]].job), batch.rows[occupied[0]].job.mode
        self.metrics.token_latency.labels(model, mode).observe(ms / 1e3)
        self.metrics.batch_size.labels(model, mode).observe(len(occupied))
        for slot in occupied:
            row = batch.rows[slot]
            tok = int(row.sampler(logits[slot:slot + 1])[0])
            self._push(row, tok)
            if row.loop.done:
                batch.leave(slot)
                self._end_row(row)
            else:
                batch.tokens[slot] = tok

    def _push(self, row: _Row, tok: int) -> None:
        job = row.job
        first = job.first_token_at is None
        if first:
            job.first_token_at = time.monotonic()
        piece = row.loop.push(tok)
        # the first token always sends a chunk (its text may be held back: part of a UTF-8 character, a special
        # token, a stop string's prefix), so a stream's first chunk is its time to first token; without a
        # tokenizer every token sends one (empty) chunk
        if piece or first or (not self.rt.has_tokenizer and tok not in row.loop.eos):
            job.report("text", piece)

    def _end_row(self, row: _Row) -> None:
        job, loop = row.job, row.loop
        piece = loop.close() if loop.answered else ""
        if piece:
            job.report("text", piece)
        job.token_ids, job.text = loop.ids, loop.text
        self._end(job, loop.finish)

    def _finish_solo(self, solo: _Solo) -> None:
        job, rows = solo.job, solo.rows
        job.token_ids, job.text = list(rows.ids[0]), rows.text[0]
        if job.first_token_at is None:
            job.first_token_at = time.monotonic()
        if rows.stats is not None:
            job.stats = rows.stats.row(0) if hasattr(rows.stats, "row") else rows.stats.to_dict()
            self.metrics.count_stats(self.model(job), job.mode, rows.stats)
        self.metrics.batch_size.labels(self.model(job), job.mode).observe(1)
        self._end(job, rows.finish[0])

    def _end(self, job: Job, reason: str) -> None:
        """Report a finished job: its answer, or the error its control ended it with."""
        self.metrics.tokens.labels(self.model(job), job.mode).inc(len(job.token_ids))
        if reason == "timeout":
            job.finish_reason = "error"
            job.report("error", APIError(504, f"the request ran past its timeout of {job.timeout_s:g} s after "
                                              f"{len(job.token_ids)} tokens"))
        elif reason == "shutdown":
            job.finish_reason = "error"
            job.report("error", APIError(503, f"the server shut down while generating (after {len(job.token_ids)} "
                                              "tokens); retry on another instance"))
        elif reason == "cancelled":
            job.finish_reason = "cancelled"
        else:
            job.finish_reason = FINISH.get(reason, reason)
            job.report("end", job)

    def _fail_batch(self, batch: SlotBatch, e: Exception) -> None:
        with self._cv:
            jobs = [r.job for _, r in batch.running] + [n.row.job for n in batch.joining]
            for slot, _ in batch.running:
                batch.leave(slot)
            batch.joining.clear()
        self._fail(jobs, _api_error(e))

    def _fail(self, jobs: list[Job], error: APIError) -> None:
        for job in jobs:
            if job.finish_reason is None:
                job.finish_reason = "error"
                job.report("error", error)


def _api_error(e: Exception) -> APIError:
    if isinstance(e, ShadowEdgeError):
        return APIError(400, str(e))
    return APIError(500, f"generation failed: {type(e).__name__}: {e}")
