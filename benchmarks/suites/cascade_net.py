"""Edge-cloud cascade over loopback with an injected network delay: latency and bytes per escalated request.

A `shadow-edge serve` subprocess is the cloud; this process is the device (shadow_only runtime +
the urllib escalation client). Between them a small TCP proxy delays every chunk by half the
added round-trip time in each direction (`--delays 0,20,100` ms of RTT) and counts the bytes
it forwards (TCP payload: HTTP headers + bodies). Per delay:
  - escalated: the device's cascade with threshold 1 (every request escalates): total, shadow
    and remote latency, bytes up/down per request;
  - server only: the same request sent straight to the server's base_shadow (no shadow pass);
  - mixed: threshold = the median shadow confidence (about half escalate): mean latency.
Greedy, `--max-tokens` new tokens, token-id prompts; medians over `--prompts` prompts x `--reps`,
the delays interleaved per prompt so that each sees the same machine load.

    python -m benchmarks.suites.cascade_net --artifact /work/cache/artifacts/qwen3-0.6b-shape --max-tokens 16 \\
        --json benchmarks/results/cascade_net/w1.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.lib.timing import run_rounds
from benchmarks.suites.load import Server, make_prompts


def say(message: str) -> None:
    print(f"[cascade_net] {message}", file=sys.stderr, flush=True)


class DelayProxy:
    """127.0.0.1 TCP proxy to `upstream_port`; each chunk is forwarded `rtt_ms / 2` after it arrived."""

    def __init__(self, upstream_port: int, rtt_ms: float):
        self.upstream, self.delay = upstream_port, rtt_ms / 2e3
        self.up = self.down = 0  # bytes client -> server, server -> client
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, c_reader, c_writer) -> None:
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._pump(c_reader, s_writer, "up"), self._pump(s_reader, c_writer, "down"))

    async def _pump(self, reader, writer, direction: str) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def send():
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        while True:
            data = await reader.read(65536)
            setattr(self, direction, getattr(self, direction) + len(data))
            queue.put_nowait((time.perf_counter() + self.delay, data))
            if not data:
                break
        await sender

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def server_only(url: str, prompt: list[int], max_tokens: int) -> float:
    body = json.dumps({"model": "m:base_shadow", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        json.loads(r.read())
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--delays", default="0,20,100", help="added round-trip times in ms (default 0,20,100)")
    p.add_argument("--prompts", type=int, default=6, help="prompts per measurement (default 6)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--reps", type=int, default=3, help="passes over the prompts (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from shadow_edge.runtime import ShadowRuntime
    from shadow_edge.runtime.remote import Escalation, remote_cascade

    vocab = json.loads((args.artifact / "manifest.json").read_text())["model"]["vocab_size"]
    prompts = make_prompts(args.prompts, vocab, seed=1)
    server = Server(args.artifact, args.threads, max_batch=1, max_queue=8, window_ms=0)
    rows = []
    try:
        server.wait_ready()
        rt = ShadowRuntime.load(args.artifact, threads=args.threads, verify=False, modes=("shadow_only",))
        kw = dict(max_new_tokens=args.max_tokens)
        confidences = [remote_cascade(rt, pr, Escalation(server.url, model="m:base_shadow"), cascade_threshold=0.0,
                                      **kw).confidence for pr in prompts]  # also warms both sides up
        median_conf = statistics.median(confidences)
        delays = [float(x) for x in args.delays.split(",")]
        proxies = {rtt: DelayProxy(server.port, rtt) for rtt in delays}

        def one_delay(proxy):  # round r sends prompts[r % len(prompts)]: its call count is the round
            calls = []

            def run() -> dict:
                pr = prompts[len(calls) % len(prompts)]
                calls.append(None)
                esc = Escalation(f"http://127.0.0.1:{proxy.port}/v1", model="m:base_shadow", timeout_s=600)
                up0, down0 = proxy.up, proxy.down
                out = remote_cascade(rt, pr, esc, cascade_threshold=1.0, **kw)
                if not out.escalated:
                    raise SystemExit(f"a request with cascade threshold 1.0 did not escalate: {out.reason}")
                return {"esc": (out, proxy.up - up0, proxy.down - down0),
                        "direct": server_only(f"http://127.0.0.1:{proxy.port}", pr, args.max_tokens),
                        "mixed": remote_cascade(rt, pr, esc, cascade_threshold=median_conf, **kw)}
            return run

        # interleaved: every delay sees the same machine load, their order rotated per prompt (benchmarks.lib.timing)
        result = run_rounds({str(rtt): one_delay(proxy) for rtt, proxy in proxies.items()},
                            reps=args.reps * len(prompts), warmup=0)
        samples = {rtt: {part: [smp.value[part] for smp in result.samples[str(rtt)]]
                         for part in ("esc", "direct", "mixed")} for rtt in delays}
        for proxy in proxies.values():
            proxy.close()
        for rtt in delays:
            outs = [o for o, _, _ in samples[rtt]["esc"]]
            mixed = samples[rtt]["mixed"]
            row = {"rtt_ms": rtt, "escalated_total_ms": statistics.median(o.total_ms for o in outs),
                   "escalated_shadow_ms": statistics.median(o.shadow_ms for o in outs),
                   "escalated_remote_ms": statistics.median(o.remote_ms for o in outs),
                   "bytes_up": statistics.median(u for _, u, _ in samples[rtt]["esc"]),
                   "bytes_down": statistics.median(d for _, _, d in samples[rtt]["esc"]),
                   "client_counted_bytes": statistics.median(o.bytes_sent + o.bytes_received for o in outs),
                   "server_only_ms": statistics.median(samples[rtt]["direct"]),
                   "mixed_threshold": median_conf, "mixed_escalated_share": statistics.mean(o.escalated for o in mixed),
                   "mixed_mean_ms": statistics.mean(o.total_ms for o in mixed)}
            rows.append(row)
            say(f"RTT +{rtt:g} ms: escalated {row['escalated_total_ms']:.0f} ms (shadow "
                f"{row['escalated_shadow_ms']:.0f} + server {row['escalated_remote_ms']:.0f}), {row['bytes_up']:.0f} B "
                f"up / {row['bytes_down']:.0f} B down; server only {row['server_only_ms']:.0f} ms; mixed "
                f"({row['mixed_escalated_share']:.0%} escalated) mean {row['mixed_mean_ms']:.0f} ms")
    finally:
        server.stop()
    record = {"artifact": str(args.artifact), "max_tokens": args.max_tokens, "prompts": args.prompts,
              "reps": args.reps, "threads": args.threads, "load_avg_at_end": os.getloadavg(), "rows": rows,
              "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
