"""Issue 8: one runtime shared by threads; per-call results (streams, last_result) never cross threads."""

from __future__ import annotations

import threading

import numpy as np

from runtime_fixtures import tiny_artifact  # noqa: F401  (fixture)
from shadow_edge.runtime import ShadowRuntime

PROMPTS = [f"thread prompt {i} about {w}" for i, w in enumerate(["rivers", "mills", "stones", "birds",
                                                                   "roads", "boats", "songs", "fields"])]
MODES = ["shadow_only", "base_shadow", "cascade"]


def _run_threads(n: int, work) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(i):
        try:
            start.wait()
            work(i)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


def test_concurrent_streams_keep_their_own_results(tiny_artifact):
    # A fresh runtime: sessions are created lazily by the racing threads (under the runtime's lock).
    rt = ShadowRuntime.load(tiny_artifact, threads=1, modes=())
    serial = {(p, m): rt.generate(p, mode=m, max_new_tokens=4).token_ids for p in PROMPTS for m in MODES}
    rt = ShadowRuntime.load(tiny_artifact, threads=1, modes=())

    def work(i):
        for k in range(25):
            prompt, mode = PROMPTS[(i + k) % len(PROMPTS)], MODES[k % len(MODES)]
            stream = rt.stream(prompt, mode=mode, max_new_tokens=4)
            text = "".join(stream)
            assert stream.result.token_ids == serial[(prompt, mode)], (i, k)
            assert stream.result.text == text and stream.result.mode == mode
            assert rt.last_result is stream.result  # per thread: never another thread's stream

    assert _run_threads(8, work) == []


def test_concurrent_generate_and_forward_match_serial(tiny_artifact):
    rt = ShadowRuntime.load(tiny_artifact, threads=1)
    ids = [[5, 6, 7, 8], [9, 10, 11, 12]]
    ref_logits = rt.forward(ids, mode="base_shadow")
    ref = rt.generate(PROMPTS[:3], mode="shadow_only", max_new_tokens=5, do_sample=True, seed=7).token_ids

    def work(i):
        for _ in range(10):
            np.testing.assert_array_equal(rt.forward(ids, mode="base_shadow"), ref_logits)
            assert rt.generate(PROMPTS[:3], mode="shadow_only", max_new_tokens=5, do_sample=True,
                               seed=7).token_ids == ref

    assert _run_threads(6, work) == []


def test_one_stream_advanced_from_two_threads_is_serialized(tiny_artifact):
    rt = ShadowRuntime.load(tiny_artifact, threads=1, modes=("shadow_only",))
    ref = rt.generate(PROMPTS[0], mode="shadow_only", max_new_tokens=24)
    stream = rt.stream(PROMPTS[0], mode="shadow_only", max_new_tokens=24)
    pieces: list[str] = []
    lock = threading.Lock()

    def work(i):
        for piece in stream:
            with lock:
                pieces.append(piece)

    assert _run_threads(2, work) == []
    assert stream.result.token_ids == ref.token_ids and len("".join(pieces)) == len(ref.text)


def test_runtimes_loaded_by_concurrent_threads_share_one_pool(monkeypatch):
    """The process-wide onnxruntime pool is created once even when two threads ask at the same moment
    (onnxruntime refuses a second creation; the loser used to fall back to a private pool)."""
    import time

    from shadow_edge.runtime import session

    calls = []

    def create_pool(intra, inter):  # stands in for onnxruntime's: slow, and refuses a second creation
        calls.append(intra)
        if len(calls) > 1:
            raise RuntimeError("Global thread pools have already been created")
        time.sleep(0.2)

    monkeypatch.setattr(session, "_pool_threads", None)
    monkeypatch.setattr(session.ort, "set_global_thread_pool_sizes", create_pool)
    options = []
    assert _run_threads(2, lambda i: options.append(session.session_options(1))) == []
    assert calls == [1] and [o.use_per_session_threads for o in options] == [False, False]


def test_sessions_on_pools_of_their_own_give_the_same_tokens(tiny_artifact):
    """spin_threads=False in a process's first runtime (what `serve` does): every session, lazily loaded ones
    included, runs on a pool of its own whose threads sleep between work items; the tokens are the shared pool's.
    In a fresh process: this one's process-wide pool exists already."""
    import json
    import subprocess
    import sys

    import pytest

    from shadow_edge.errors import InputError

    code = """
import json, sys
from shadow_edge.runtime import ShadowRuntime
rt = ShadowRuntime.load(sys.argv[1], threads=2, spin_threads=False)
tokens = {m: rt.generate(sys.argv[2], mode=m, max_new_tokens=6).token_ids for m in sys.argv[3:]}
options = [g.session.get_session_options() for g in rt._graphs.values()]
print(json.dumps({"tokens": tokens, "own": [o.use_per_session_threads for o in options],
                  "threads": [o.intra_op_num_threads for o in options],
                  "spin": [o.get_session_config_entry("session.intra_op.allow_spinning") for o in options]}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(tiny_artifact), PROMPTS[0], *MODES], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    got = json.loads(out.splitlines()[-1])
    assert got["own"] and set(got["own"]) == {True} and set(got["threads"]) == {2} and set(got["spin"]) == {"0"}
    shared = ShadowRuntime.load(tiny_artifact, threads=1)
    for mode in MODES:
        assert got["tokens"][mode] == shared.generate(PROMPTS[0], mode=mode, max_new_tokens=6).token_ids
    with pytest.raises(InputError, match="spin_threads is 'no'"):
        ShadowRuntime.load(tiny_artifact, spin_threads="no")
