"""Where a newcomer's time to first token goes under staggered load, in-process, and the decode thread's priority A/B.

    python -m benchmarks.profile.serve_ttft ART [--nice 0,10] [--rounds 3] [--clients 16] [--requests 48]
        [--max-tokens 48] [--max-tokens-spread 0] [--stagger-ms 50] [--lone 8] [--threads 2] [--spin-threads]

The serve engine (`shadow_edge/serve/engine.py`) without HTTP: `--clients` client threads send `--requests`
base_shadow requests (token-id prompts of 8..24 tokens, `--max-tokens` new tokens, eos ignored, greedy; with
`--max-tokens-spread S` request k asks for `--max-tokens` + a number drawn for k from -S..S, the same in every level,
so that requests which start together need not end together), client i
starting i x `--stagger-ms` after the first and waiting a random 0..`--stagger-ms` before each later one (the load
suite's arrivals). Each round runs a lone level first (one client, `--lone` requests: the reference TTFT), then one
level per `--nice` value (the engine's `decode_nice`: how much lower the decode thread's OS priority is than the
prefill thread's), in an order that reverses every round, so load changes fall on every variant alike.

Per level: TTFT p50/p90 (arrival in the engine to the first token), its parts (medians): `queue` arrival to
admission (a slot and a place in the prefill queue), `pf_wait` admission to the start of its prefill, `pf` the
prefill itself (the first token is sent right after it); aggregate tokens/s; the ratios to the round's lone level;
and outputs equal to the lone level's for the same prompt (greedy; over the shorter of the two). One JSON line per
level to stdout. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

from benchmarks.suites.load import same_start, spread_lengths
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.token_loop import Control
from shadow_edge.serve import engine as serve_engine
from shadow_edge.serve import slots
from shadow_edge.serve.metrics import Metrics


class _Job(serve_engine.Job):
    """A job that signals its end and records when it was admitted and prefilled."""

    def report(self, kind, payload):
        if kind in ("end", "error"):
            self.__dict__["ended"].set()


def _instrument() -> None:
    """Stamp each job when it joins a batch (admission) and when its prefill starts and ends."""
    join, prefill = slots.SlotBatch.join, slots.SlotBatch.prefill

    def timed_join(self, row, ids):
        row.job.__dict__["t_admit"] = time.monotonic()
        return join(self, row, ids)

    def timed_prefill(self, n):
        n.row.job.__dict__["t_pf0"] = time.monotonic()
        prefill(self, n)
        n.row.job.__dict__["t_pf1"] = time.monotonic()

    slots.SlotBatch.join, slots.SlotBatch.prefill = timed_join, timed_prefill


def level(rt, prompts, clients: int, max_tokens: list[int], stagger_s: float, nice: int) -> dict:
    """One load level: len(max_tokens) requests, request k asking for max_tokens[k] new tokens."""
    requests = len(max_tokens)
    engine = serve_engine.Engine("m", rt, 16, 4 * requests, 0.0, Metrics(), decode_nice=nice)
    jobs: dict[int, _Job] = {}

    def client(i: int, mine: list[int]) -> None:
        rng = np.random.default_rng(i)
        time.sleep(i * stagger_s)
        for m, k in enumerate(mine):
            if m:
                time.sleep(float(rng.random()) * stagger_s)
            opts = rt.options("base_shadow", max_tokens[k], eos=(), control=Control(time.monotonic() + 3600))
            job = _Job(prompts[k % len(prompts)], opts)
            job.__dict__["ended"] = threading.Event()
            engine.submit(job)
            job.ended.wait()
            jobs[k] = job

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i, list(range(requests))[i::clients])) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    engine.close(0)
    done = list(jobs.values())

    def med(f) -> float:
        return round(float(np.median([1e3 * f(j) for j in done])), 1)

    ttft = [1e3 * (j.first_token_at - j.arrived) for j in done]
    return {"clients": clients, "nice": nice, "ttft_p50": round(float(np.median(ttft)), 1),
            "ttft_p90": round(float(np.percentile(ttft, 90)), 1), "queue": med(lambda j: j.t_admit - j.arrived),
            "pf_wait": med(lambda j: j.t_pf0 - j.t_admit), "pf": med(lambda j: j.t_pf1 - j.t_pf0),
            "tok_s": round(sum(len(j.token_ids) for j in done) / wall, 1),
            "errors": sum(j.finish_reason not in ("length", "stop") for j in done),
            "ids": {k: j.token_ids for k, j in jobs.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", help="artifact directory (base_shadow)")
    p.add_argument("--nice", default="0,10", help="decode_nice values to compare (comma-separated)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--max-tokens-spread", type=int, default=0, metavar="S",
                   help="request k asks for --max-tokens plus a number drawn for k from -S..S (default 0: all alike)")
    p.add_argument("--stagger-ms", type=float, default=50.0)
    p.add_argument("--lone", type=int, default=8, help="requests of the lone level (one client)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spin-threads", action="store_true",
                   help="onnxruntime's spinning process-wide pool (serve --spin-threads); default: the server's "
                        "sessions on pools of sleeping threads")
    a = p.parse_args(argv)
    if not 0 <= a.max_tokens_spread < a.max_tokens:
        p.error(f"--max-tokens-spread {a.max_tokens_spread}: expected 0 <= S < --max-tokens ({a.max_tokens})")
    lengths = spread_lengths(a.max_tokens, a.max_tokens_spread, a.requests)  # request k's
    _instrument()
    rt = ShadowRuntime.load(a.artifact, threads=a.threads, verify=False, spin_threads=a.spin_threads)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, rt.vocab_size - 10, size=int(rng.integers(8, 25))).tolist() for _ in range(16)]
    level(rt, prompts, 1, [4, 4], 0.0, 0)  # warm-up
    reference: dict[int, list[int]] = {}
    variants = [int(x) for x in a.nice.split(",")]
    for r in range(a.rounds):
        lone = level(rt, prompts, 1, [a.max_tokens + a.max_tokens_spread] * a.lone, a.stagger_ms / 1e3, 0)
        for k, ids in lone.pop("ids").items():
            reference.setdefault(k % len(prompts), ids)
        print(json.dumps({"round": r, "lone": lone, "load": os.getloadavg()[0]}), flush=True)
        for nice in variants if r % 2 == 0 else variants[::-1]:
            many = level(rt, prompts, a.clients, lengths, a.stagger_ms / 1e3, nice)
            ids = many.pop("ids")
            many["mismatched"] = sum(not same_start(reference.setdefault(k % len(prompts), t), t)
                                     for k, t in ids.items())
            many["ttft_vs_lone"] = round(many["ttft_p50"] / lone["ttft_p50"], 2)
            many["tok_s_vs_lone"] = round(many["tok_s"] / lone["tok_s"], 2)
            print(json.dumps({"round": r, **many, "load": os.getloadavg()[0],
                              "time": time.strftime("%H:%M:%S", time.gmtime())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
