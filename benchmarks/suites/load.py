"""Load test of `shadow-edge serve`: a bounded load at several concurrency levels against a server it starts.

Every level sends the same `--requests` requests (default 2 x the highest level); at level c, c
clients send them, each client its share back to back (completions with token-id prompts of
8..24 tokens, `--max-tokens` new tokens with ignore_eos so every request does the same work,
greedy; even requests stream, odd ones do not; `--max-tokens-spread S`: request k asks for `--max-tokens` plus a
number drawn for k from -S..S, the same at every level, so that requests which start together need not end
together). Arrivals are staggered, not all at once: client
i starts i x `--stagger-ms` after the first and waits a random 0..`--stagger-ms` (seeded) before
each later request, so requests keep arriving while others decode (what continuous batching is
for). Reported per level: aggregate generated tokens/s (all tokens / wall time), p50/p99 time to
first token (streamed requests: first chunk) and request latency, errors (must be 0), and whether
every greedy output (token ids, from the response's `shadow_edge.token_ids`) equals the serial
run (level 1, always run) of the same prompt and mode (over the shorter of the two); then the
issue-24 targets: TTFT p50 at the highest level <= 2x the lone request's (level 1), aggregate
tok/s >= 4x one client's, 0 errors. The server is a subprocess on 127.0.0.1.

    python -m benchmarks.suites.load --artifact /work/cache/artifacts/qwen3-0.6b-shape --concurrency 1,4,16 \\
        --requests 24 --max-tokens 32 --max-batch 16 --json benchmarks/results/load/w1-base_shadow.json
    python -m benchmarks.suites.load --artifact ART --modes shadow_only,base_shadow   # mixed modes
    python -m benchmarks.suites.load --artifact /tmp/demo-art --concurrency 1,4,16 --requests 48 --max-tokens 48 \
        --stagger-ms 50 --max-batch 16 --json benchmarks/results/load/demo-staggered.json

Human lines to stderr, JSON (settings, CPU, load average) to --json and stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def say(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


class Server:
    """`shadow-edge serve` in a subprocess on a free loopback port."""

    def __init__(self, artifact: Path, threads: int, max_batch: int, max_queue: int, window_ms: float,
                 server_args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shadow_edge.cli", "serve", str(artifact), "--served-name", "m", "--port",
             str(self.port), "--threads", str(threads), "--max-batch", str(max_batch), "--max-queue", str(max_queue),
             "--batch-window-ms", str(window_ms), "--no-verify", *server_args], env=env)

    def wait_ready(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise SystemExit("the server did not become healthy")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def make_prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, vocab - 10, size=int(rng.integers(8, 25))).tolist() for _ in range(n)]


async def one_request(client: httpx.AsyncClient, url: str, prompt: list[int], mode: str, max_tokens: int,
                      stream: bool) -> dict:
    body = {"model": f"m:{mode}", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    t0 = time.perf_counter()
    ttft, ids, tokens = None, None, 0
    try:
        if stream:
            async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
                if r.status_code != 200:
                    return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        return {"error": data["error"]["message"]}
                    if data.get("choices"):  # a chunk per token (or text piece): the first one is TTFT
                        ttft = ttft if ttft is not None else time.perf_counter() - t0
                        ids = data.get("shadow_edge", {}).get("token_ids", ids)
                    if data.get("usage"):
                        tokens = data["usage"]["completion_tokens"]
        else:
            r = await client.post(f"{url}/v1/completions", json=body)
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {r.text[:200]}"}
            data = r.json()
            ids, tokens = data["shadow_edge"]["token_ids"], data["usage"]["completion_tokens"]
    except httpx.HTTPError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "ids": ids, "tokens": tokens}


async def run_level(url: str, prompts: list[list[int]], modes: list[str], concurrency: int, requests: int,
                    max_tokens: list[int], stagger_s: float = 0.0) -> tuple[dict, dict]:
    """`requests` requests from c clients; request k uses prompt k % len(prompts), mode k % len(modes) and
    max_tokens[k] new tokens; client i starts at i x stagger_s and waits a random 0..stagger_s before each later
    request."""
    jobs = [(k, prompts[k % len(prompts)], modes[k % len(modes)]) for k in range(requests)]
    results: dict[int, dict] = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=httpx.Limits(max_connections=64)) as client:
        async def worker(i, mine):
            rng = np.random.default_rng(i)
            await asyncio.sleep(i * stagger_s)
            for n, (k, prompt, mode) in enumerate(mine):
                if n:
                    await asyncio.sleep(float(rng.random()) * stagger_s)
                results[k] = {**await one_request(client, url, prompt, mode, max_tokens[k], k % 2 == 0),
                              "mode": mode, "prompt": k % len(prompts)}

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i, jobs[i::concurrency]) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = [r for r in results.values() if "error" not in r]
    errors = [r["error"] for r in results.values() if "error" in r]
    lat, ttft = [r["latency"] for r in ok], [r["ttft"] for r in ok if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    summary = {"concurrency": concurrency, "requests": len(jobs), "errors": len(errors), "error_samples": errors[:3],
               "wall_s": wall, "generated_tokens": tokens, "aggregate_tok_s": tokens / wall,
               "ttft_p50_ms": _ms(percentile(ttft, 50)), "ttft_p99_ms": _ms(percentile(ttft, 99)),
               "latency_p50_ms": _ms(percentile(lat, 50)), "latency_p99_ms": _ms(percentile(lat, 99))}
    texts = {(r["prompt"], r["mode"]): r["ids"] for r in ok}
    return summary, texts


def spread_lengths(max_tokens: int, spread: int, requests: int) -> list[int]:
    """Request k's new tokens: max_tokens plus a number drawn for k from -spread..spread (seeded: every level and
    run asks the same)."""
    return [max_tokens + int(d) for d in np.random.default_rng(1).integers(-spread, spread + 1, requests)]


def same_start(a: list[int] | None, b: list[int] | None) -> bool:
    """Greedy with eos ignored: the shorter of two outputs of one prompt is the start of the other."""
    if a is None or b is None:
        return a is b
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def server_ttft(url: str) -> tuple[float, float]:
    """(sum of seconds, count) of the server's TTFT histogram (arrival to first token, measured in the server)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    got = {}
    for line in text.splitlines():
        for kind in ("sum", "count"):
            if line.startswith(f"shadow_edge_time_to_first_token_seconds_{kind}{{"):
                got[kind] = got.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return got.get("sum", 0.0), got.get("count", 0.0)


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f}"


def _ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, required=True, help="artifact directory to serve")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts (default 1,4,16)")
    p.add_argument("--requests", type=int, help="requests per level (default: 2 x the highest level)")
    p.add_argument("--max-tokens", type=int, default=48, help="new tokens per request (default 48)")
    p.add_argument("--max-tokens-spread", type=int, default=0, metavar="S",
                   help="request k asks for --max-tokens plus a number drawn for k from -S..S (default 0: all alike)")
    p.add_argument("--modes", default="base_shadow", help="comma-separated modes, used round-robin")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server onnxruntime threads")
    p.add_argument("--max-batch", type=int, default=16, help="server --max-batch (default 16)")
    p.add_argument("--batch-window-ms", type=float, default=0.0,
                   help="server --batch-window-ms (default 0: with continuous batching a request joins the running "
                        "batch at the next step, waiting adds only to its TTFT)")
    p.add_argument("--stagger-ms", type=float, default=50.0,
                   help="client i starts i x this after the first; each waits up to this before its next request")
    p.add_argument("--decode-nice", type=int, help="server --decode-nice (default: the server's)")
    p.add_argument("--spin-threads", action="store_true", help="server --spin-threads")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if not 0 <= args.max_tokens_spread < args.max_tokens:
        p.error(f"--max-tokens-spread {args.max_tokens_spread}: expected 0 <= S < --max-tokens ({args.max_tokens})")
    levels = sorted({1, *(int(x) for x in args.concurrency.split(","))})  # level 1 is the serial reference
    n_requests = args.requests or 2 * max(levels)
    modes = args.modes.split(",")
    vocab = json.loads((args.artifact / "manifest.json").read_text())["model"]["vocab_size"]
    prompts = make_prompts(min(max(levels), n_requests), vocab)
    max_tokens = spread_lengths(args.max_tokens, args.max_tokens_spread, n_requests)  # request k's
    server = Server(args.artifact, args.threads, args.max_batch, max_queue=4 * max(levels),
                    window_ms=args.batch_window_ms,
                    server_args=(("--decode-nice", str(args.decode_nice)) if args.decode_nice is not None else ())
                    + (("--spin-threads",) if args.spin_threads else ()))
    try:
        say(f"loading {args.artifact} in the server ({server.url})")
        server.wait_ready()
        say("warm-up")
        asyncio.run(run_level(server.url, prompts[:1], modes, 1, 1, [4]))
        serial: dict = {}
        rows = []
        for c in levels:
            before = server_ttft(server.url)
            summary, texts = asyncio.run(run_level(server.url, prompts, modes, c, n_requests, max_tokens,
                                                   args.stagger_ms / 1e3))
            after = server_ttft(server.url)
            n = after[1] - before[1]  # the server's own view: arrival to first token, without HTTP or the client
            summary["server_ttft_mean_ms"] = 1e3 * (after[0] - before[0]) / n if n else None
            serial = serial or texts
            mismatched = [k for k, t in texts.items() if not same_start(serial.get(k), t)]
            summary["greedy_equal_serial"] = not mismatched
            summary["mismatched_outputs"] = len(mismatched)
            rows.append(summary)
            say(f"c={c:>3}: {summary['aggregate_tok_s']:7.1f} tok/s aggregate, TTFT p50/p99 "
                f"{_fmt(summary['ttft_p50_ms'])}/{_fmt(summary['ttft_p99_ms'])} ms, latency p50/p99 "
                f"{_fmt(summary['latency_p50_ms'])}/{_fmt(summary['latency_p99_ms'])} ms, server-side TTFT mean "
                f"{_fmt(summary['server_ttft_mean_ms'])} ms, errors {summary['errors']}, "
                f"greedy = serial: {summary['greedy_equal_serial']}")
    finally:
        server.stop()
    for r in rows:
        r["speedup_vs_1"] = r["aggregate_tok_s"] / rows[0]["aggregate_tok_s"]
        lone = rows[0]["ttft_p50_ms"]
        r["ttft_p50_vs_lone"] = r["ttft_p50_ms"] / lone if lone and r["ttft_p50_ms"] is not None else None
    top = rows[-1]
    targets = {"ttft_p50_le_2x_lone": top["ttft_p50_vs_lone"] is not None and top["ttft_p50_vs_lone"] <= 2.0,
               "aggregate_ge_4x_one_client": top["speedup_vs_1"] >= 4.0,
               "zero_errors": all(r["errors"] == 0 for r in rows),
               "outputs_equal_serial": all(r["greedy_equal_serial"] for r in rows)}
    say(f"targets at c={top['concurrency']}: TTFT p50 {top['ttft_p50_vs_lone']:.2f}x lone, aggregate "
        f"{top['speedup_vs_1']:.2f}x one client; " + ", ".join(f"{k}: {v}" for k, v in targets.items()))
    record = {"artifact": str(args.artifact), "modes": modes, "requests_per_level": n_requests,
              "max_tokens": args.max_tokens, "max_tokens_spread": args.max_tokens_spread,
              "max_tokens_per_request": max_tokens,
              "threads": args.threads, "max_batch": args.max_batch,
              "batch_window_ms": args.batch_window_ms, "stagger_ms": args.stagger_ms, "levels": rows,
              "targets": targets, "cpu": platform.processor(),
              "cores": os.cpu_count(), "python": platform.python_version(),
              "load_avg_at_end": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["levels"], indent=2))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
