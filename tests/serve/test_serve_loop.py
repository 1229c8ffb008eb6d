"""The server's one token loop and continuous batching (issue 24): late requests join a running batch, every
mode ends within one step on its deadline, cancellation or shutdown, and outputs equal the lone `generate`."""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from serve_fixtures import LiveServer
from shadow_edge.runtime.strategies import base
from shadow_edge.runtime.strategies.base import StepRecord, StepStrategy, register
from shadow_edge.runtime.token_loop import Control
from shadow_edge.serve.engine import Engine, Job
from shadow_edge.serve.metrics import Metrics
from shadow_edge.serve.options import ServeOptions
from shadow_edge.serve.slots import SlotBatch

MODES = ("shadow_only", "base_shadow", "cascade", "speculative")
PROMPTS = ["The river", "Every morning the baker", "Trains", "A tokenizer turns text into numbers and back",
           "The library", "She opened the window and looked at the", "Memory", "Small models are fast"]


@pytest.fixture(scope="module")
def server(tiny_artifact):
    with LiveServer(tiny_artifact, served_names=("tiny",), max_batch=4, batch_window_ms=0) as srv:
        yield srv


def sse(srv, body: dict, on_first=None, path: str = "/v1/completions") -> list:
    """The data items of a streamed request ('[DONE]' as a string); `on_first()` runs after the first text."""
    items = []
    with httpx.stream("POST", f"{srv.url}{path}", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            items.append(data if data == "[DONE]" else json.loads(data))
            if on_first is not None and isinstance(items[-1], dict) and items[-1].get("choices") \
                    and items[-1]["choices"][0].get("text"):
                on_first()
                on_first = None
    return items


@pytest.mark.integration
def test_a_late_request_gets_tokens_before_an_earlier_long_one_finishes(server, tiny_rt):
    long_body = {"model": "tiny:shadow_only", "prompt": "The river", "max_tokens": 400, "temperature": 0,
                 "ignore_eos": True}
    short_done_while_long_ran = []
    long_finished = threading.Event()

    def late():
        r = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
            "model": "tiny:shadow_only", "prompt": "Every morning the baker", "max_tokens": 4, "temperature": 0})
        short_done_while_long_ran.append((r.status_code, not long_finished.is_set(), r.json()))

    late_thread = threading.Thread(target=late)
    items = sse(server, long_body, on_first=late_thread.start)
    long_finished.set()
    late_thread.join(60)
    status, in_time, answer = short_done_while_long_ran[0]
    assert status == 200 and in_time, "the late request waited for the long one"
    want = tiny_rt.generate("Every morning the baker", mode="shadow_only", max_new_tokens=4)
    assert answer["choices"][0]["text"] == want.text
    text = "".join(i["choices"][0]["text"] for i in items if isinstance(i, dict) and i["choices"])
    assert items[-1] == "[DONE]" and text == tiny_rt.generate("The river", mode="shadow_only", max_new_tokens=400,
                                                               eos=()).text


@pytest.mark.integration
def test_staggered_requests_of_every_mode_equal_the_lone_generate(server, tiny_rt):
    rng = random.Random(0)
    jobs = []
    for i in range(16):
        mode = MODES[i % 4]
        kw = dict(max_tokens=rng.randint(1, 24), temperature=0)
        if i % 3 == 1:
            kw.update(temperature=0.8, top_p=0.9, seed=i)
        jobs.append((mode, PROMPTS[i % len(PROMPTS)], kw))

    def ask(job):
        mode, prompt, kw = job
        time.sleep(rng.random() * 0.2)  # staggered arrivals
        r = httpx.post(f"{server.url}/v1/completions", json={"model": f"tiny:{mode}", "prompt": prompt, **kw},
                       timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["shadow_edge"]["token_ids"]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, jobs))
    for (mode, prompt, kw), ids in zip(jobs, got):
        sampling = dict(do_sample=True, temperature=kw["temperature"], top_p=kw["top_p"], seed=kw["seed"]) \
            if kw["temperature"] else {}
        assert ids == tiny_rt.generate(prompt, mode=mode, max_new_tokens=kw["max_tokens"], **sampling).token_ids


@pytest.mark.parametrize("merged", [False, True], ids=["split", "merged"])
def test_slot_batch_joins_shifts_compacts_and_chunks(tiny_rt, merged):
    """Rows join mid-run with prompts longer and shorter than the shared slot axis, prefill in chunks of 3, the
    buffers compact and grow: every row's greedy tokens equal its lone generate (split or merged step graphs)."""
    step_graph = tiny_rt.step_graph("base_shadow") if merged else None
    assert step_graph is not None or not merged
    batch = SlotBatch(tiny_rt.pipeline("base_shadow"), max_rows=3, pad_id=tiny_rt.pad_id, chunk=3, merged=step_graph)
    prompts = [tiny_rt.codec.encode(p) for p in ("Trains", PROMPTS[3], "The river", PROMPTS[5], "Memory")]
    limits = [30, 12, 40, 9, 20]
    got: dict[int, list[int]] = {}
    waiting = list(range(len(prompts)))
    while waiting or not batch.idle:
        if waiting and batch.free > 0 and (batch.idle or len(got.get(0, [])) % 5 == 2):
            i = waiting.pop(0)
            batch.join(i, prompts[i])
        for n in batch.prefill_some(budget=3):
            tok = int(np.argmax(n.logits[0]))
            got[n.row] = [tok]
            batch.seat(n, tok)
        if not batch.running:
            continue
        logits, occupied, _ = batch.step()
        for slot in occupied:
            i = batch.rows[slot]
            tok = int(np.argmax(logits[slot]))
            got[i].append(tok)
            if len(got[i]) >= limits[i]:
                batch.leave(slot)
            else:
                batch.tokens[slot] = tok
    for i, p in enumerate(prompts):
        assert got[i] == tiny_rt.generate(p, mode="base_shadow", max_new_tokens=limits[i], eos=()).token_ids, i


class _Collected(Job):
    """A job whose reports are collected in a list (no event loop)."""

    def report(self, kind, payload):
        self.__dict__.setdefault("reports", []).append((kind, payload))


class _StepLimit(Control):
    """A control that says "timeout" after `n` polls: deterministic, every step polls it once per row."""

    def __init__(self, n: int):
        super().__init__(time.monotonic() + 600)
        self.n, self.polls = n, 0

    def stopped(self, now=None):
        self.polls += 1
        return "timeout" if self.polls > self.n else super().stopped(now)


def _wait(job, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while job.finish_reason is None:
        assert time.monotonic() < deadline, "the job never ended"
        time.sleep(0.005)
    return job.__dict__.get("reports", [])


@pytest.fixture
def engine(tiny_rt):
    e = Engine("tiny", tiny_rt, 4, 16, 0.0, Metrics())
    yield e
    e.close(0)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_ends_on_its_deadline_within_a_step(engine, tiny_rt, mode):
    opts = tiny_rt.options(mode, 300, eos=(), control=_StepLimit(6), cascade_threshold=1.0) if mode == "cascade" \
        else tiny_rt.options(mode, 300, eos=(), control=_StepLimit(6))
    job = _Collected(tiny_rt.codec.encode("The river"), opts)
    engine.submit(job)
    reports = _wait(job)
    assert job.finish_reason == "error" and reports[-1][0] == "error" and reports[-1][1].status == 504
    assert len(job.token_ids) < 60  # ended within a step or round of the deadline, not after 300 tokens


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_stops_when_cancelled_or_shut_down(tiny_rt, mode):
    engine = Engine("tiny", tiny_rt, 4, 16, 0.0, Metrics())
    extra = {"cascade_threshold": 1.0} if mode == "cascade" else {}
    cancelled = _Collected(tiny_rt.codec.encode("The river"), tiny_rt.options(mode, 400, eos=(), control=Control(),
                                                                            **extra))
    running = _Collected(tiny_rt.codec.encode("Every morning"), tiny_rt.options(mode, 400, eos=(),
                                                                               control=Control(), **extra))
    engine.submit(cancelled)
    engine.submit(running)
    cancelled.control.cancel()
    assert _wait(cancelled) == [] or cancelled.finish_reason == "cancelled"
    assert cancelled.finish_reason == "cancelled" and len(cancelled.token_ids) < 400
    engine.stop_accepting(0.0)  # shutdown with no grace: the running request ends with 503 within one step
    reports = _wait(running)
    assert running.finish_reason == "error" and reports[-1][1].status == 503 and len(running.token_ids) < 400
    engine._thread.join(30)
    assert not engine._thread.is_alive()


@pytest.mark.integration
@pytest.mark.parametrize("mode", MODES)
def test_shutdown_ends_a_running_stream_with_an_error_chunk_and_done(tiny_artifact, mode):
    srv = LiveServer(tiny_artifact, served_names=("tiny",), grace_s=0.0).__enter__()
    body = {"model": f"tiny:{mode}", "messages": [{"role": "user", "content": "Tell me about trains"}],
            "max_tokens": 400, "temperature": 0, "ignore_eos": True}
    items = []
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                items.append(line[6:])
                if len(items) == 1:  # the stream is open: stop the server now
                    srv.server.should_exit = True
    srv.thread.join(30)
    assert not srv.thread.is_alive(), "the server outlived its shutdown"
    assert items[-1] == "[DONE]"
    error = json.loads(items[-2])["error"]
    assert error["code"] == "unavailable" and "shut" in error["message"]


@pytest.mark.integration
def test_timeout_of_every_mode_is_a_504(tiny_artifact):
    with LiveServer(tiny_artifact, served_names=("tiny",), request_timeout_s=0.001) as srv:
        for mode in MODES:
            body = {"model": f"tiny:{mode}", "prompt": "The river", "max_tokens": 400, "ignore_eos": True}
            r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
            items = sse(srv, body)
            assert items[-1] == "[DONE]" and items[-2]["error"]["code"] == "timeout"


class _Slow(StepStrategy):
    """One token per step, 20 ms each (no model): a request that surely outlives its client."""

    name, order = "slow_echo", 61

    def steps(self, rt, ids, mask, opts, sampler, eos_ids, want_logprobs, state, stats):
        for _ in range(opts.max_new_tokens):
            if state.done.all():
                return
            time.sleep(0.02)
            yield StepRecord([[] if state.done[r] else [int(ids[r, -1])] for r in range(ids.shape[0])], None, 20.0)


@pytest.mark.integration
def test_a_dropped_non_streaming_client_is_cancelled(tiny_artifact):
    register(_Slow())
    try:
        with LiveServer(tiny_artifact, served_names=("tiny",)) as srv:
            labels = dict(model="tiny", mode="slow_echo")
            body = {"model": "tiny:slow_echo", "prompt": [3, 4], "max_tokens": 500, "ignore_eos": True}
            with pytest.raises(httpx.TimeoutException):
                httpx.post(f"{srv.url}/v1/completions", json=body, timeout=0.5)
            deadline = time.monotonic() + 20
            while srv.metric("shadow_edge_requests_total", status="cancelled", **labels) == 0 \
                    or srv.metric("shadow_edge_generated_tokens_total", **labels) == 0:
                assert time.monotonic() < deadline, "the dropped request was never cancelled"
                time.sleep(0.05)
            assert srv.metric("shadow_edge_generated_tokens_total", **labels) < 500
    finally:
        del base._REGISTRY["slow_echo"]


def test_a_job_without_a_control_runs_and_bad_options_are_refused_at_once(engine, tiny_rt):
    """A Job's options without a Control get one (no deadline) instead of killing the worker threads; options that
    are not GenerationOptions, or a control that is not a Control, are a TypeError in the caller's thread."""
    prompt = tiny_rt.codec.encode("The river")
    job = _Collected(prompt, tiny_rt.options("base_shadow", 5, eos=()))
    assert isinstance(job.control, Control) and job.control.deadline is None and job.timeout_s == float("inf")
    engine.submit(job)
    reports = _wait(job)
    assert job.finish_reason == "length" and reports[-1][0] == "end"
    assert job.token_ids == tiny_rt.generate(prompt, mode="base_shadow", max_new_tokens=5, eos=()).token_ids
    assert engine._thread.is_alive() and engine._prefiller.is_alive()
    with pytest.raises(TypeError, match="GenerationOptions"):
        Job(prompt, {"mode": "base_shadow"})
    with pytest.raises(TypeError, match="token_loop.Control"):
        Job(prompt, tiny_rt.options("base_shadow", 5, control=object()))


class _Broken(StepStrategy):
    """A strategy whose check fails with a bug (not a user error): its request fails, the engine goes on."""

    name, order = "broken_check", 62

    def check(self, rt, opts, prompt_len):
        raise RuntimeError("a bug in the strategy")

    def steps(self, rt, ids, mask, opts, sampler, eos_ids, want_logprobs, state, stats):
        yield from ()


def test_a_request_that_fails_to_start_is_a_500_and_the_engine_goes_on(engine, tiny_rt):
    register(_Broken())
    try:
        prompt = tiny_rt.codec.encode("The river")
        bad = _Collected(prompt, tiny_rt.options("broken_check", 4, control=Control()))
        engine.submit(bad)
        reports = _wait(bad)
        assert bad.finish_reason == "error" and reports[-1][1].status == 500 and "a bug" in reports[-1][1].message
        good = _Collected(prompt, tiny_rt.options("shadow_only", 4, eos=(), control=Control()))
        engine.submit(good)
        _wait(good)
        assert good.finish_reason == "length" and len(good.token_ids) == 4
    finally:
        del base._REGISTRY["broken_check"]


@pytest.mark.skipif(not hasattr(os, "setpriority") or sys.platform != "linux", reason="per-thread nice is Linux's")
@pytest.mark.parametrize("increment", [0, 3])
def test_the_decode_thread_runs_below_the_prefill_thread(tiny_rt, increment):
    """The decode thread lowers its own priority by `decode_nice` (a newcomer's prefill takes the cores first);
    the prefill thread and the caller keep theirs; 0 leaves every thread as it was."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    engine = Engine("tiny", tiny_rt, 4, 16, 0.0, Metrics(), decode_nice=increment)
    try:
        deadline = time.monotonic() + 10
        while increment and engine.decode_niced is None:
            assert time.monotonic() < deadline, "the decode thread never lowered its priority"
            time.sleep(0.01)
        decode = os.getpriority(os.PRIO_PROCESS, engine._thread.native_id)
        assert decode == min(19, own + increment) and engine.decode_niced == (decode if increment else None)
        assert os.getpriority(os.PRIO_PROCESS, engine._prefiller.native_id) == own
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
        job = _Collected(tiny_rt.codec.encode("The river"), tiny_rt.options("base_shadow", 4, eos=()))
        engine.submit(job)
        _wait(job)
        assert job.token_ids == tiny_rt.generate("The river", mode="base_shadow", max_new_tokens=4, eos=()).token_ids
    finally:
        engine.close(0)


def test_decode_nice_and_thread_pools_reach_each_engine(tiny_artifact):
    """By default the decode thread is niced 19 and the sessions have their own pools of sleeping threads."""
    with LiveServer(tiny_artifact, served_names=("tiny",), decode_nice=0, spin_threads=True) as srv:
        engine = srv.app.state.shadow.engines["tiny"]
        assert engine.decode_nice == 0 and engine.rt.spin_threads
    default = ServeOptions((str(tiny_artifact),))
    assert default.decode_nice == 19 and not default.spin_threads
    with LiveServer(tiny_artifact, served_names=("tiny",), decode_nice=default.decode_nice) as srv:  # the fixture's is 0
        engine = srv.app.state.shadow.engines["tiny"]
        assert engine.decode_nice == 19 and not engine.rt.spin_threads
