"""`shadow-edge serve`: parse the flags, then run the app under uvicorn (or deploy it on Ray Serve)."""

from __future__ import annotations

import argparse
import sys

from shadow_edge.errors import InputError
from shadow_edge.serve.options import DECODE_NICE, DEFAULT_MAX_BODY_BYTES

EPILOG = """\
examples:
  shadow-edge serve art/                                   # http://127.0.0.1:8000/v1
  shadow-edge serve art/ --port 9000 --api-key secret --max-batch 16
  shadow-edge serve a/ b/ --served-name small --served-name big --default-mode shadow_only
  shadow-edge serve art/ --ray --replicas 2 --num-cpus-per-replica 1 --threads 1
  shadow-edge serve base_art/ --adapter support=packs/support --adapter sql=packs/sql   # adapter packs
  shadow-edge serve art/ --cors-origin http://127.0.0.1:8080   # the escalation target of `shadow-edge web`'s page

then, from any OpenAI client:
  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")
  client.chat.completions.create(model="art:base_shadow", messages=[{"role": "user", "content": "Hi"}])

Models are listed as NAME:MODE (GET /v1/models); a bare NAME means --default-mode. Extra body
fields: mode, ignore_eos, top_k, and each mode's own options (see below). GET /health and GET
/metrics (Prometheus).
Request bodies over --max-body-bytes get 413 (request_too_large), prompts longer than the context
413 (context_length_exceeded); every error is OpenAI-shaped JSON.
Each --adapter pack is one more model, NAME:MODE for every mode of its base artifact (the served
artifact it was exported --against; its /v1/models entry names it as `parent`): a request picks
the adapter with `model="support:base_shadow"`, and all packs share the base's sessions and weights.
"""


def epilog() -> str:
    """EPILOG plus the body fields of the modes' own options (from the strategies' registrations)."""
    from shadow_edge.runtime.strategies.base import option_specs

    fields = [f"  {s.name} ({s.strategy}): {s.help}" for s in option_specs() if s.server]
    return EPILOG + ("\nbody fields of a mode's own options:\n" + "\n".join(fields) + "\n" if fields else "")


def build_parser() -> argparse.ArgumentParser:
    from shadow_edge.cli import _Parser  # one-line errors, exit 2

    p = _Parser(prog="shadow-edge serve", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Serve artifacts over the OpenAI API (chat, completions, streaming), "
                                            "batching concurrent requests.", epilog=epilog())
    p.add_argument("artifacts", nargs="+", metavar="ART", help="artifact directories")
    p.add_argument("--served-name", action="append", default=[], metavar="NAME",
                   help="model name of each artifact, in order (default: the directory name)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", metavar="KEY", help="require `Authorization: Bearer KEY` on /v1 requests")
    p.add_argument("--default-mode", default="base_shadow", metavar="MODE",
                   help="mode of a bare model name (default base_shadow)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="most requests per batch (default 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="most waiting requests per model; more get 429 (default 64)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="per-request timeout in seconds, queueing included; then 504 (default 600)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, metavar="MS",
                   help="wait this long for more requests before starting a batch (default 5)")
    p.add_argument("--shutdown-grace", type=float, default=30.0, metavar="S",
                   help="on shutdown, let running requests finish for this long; waiting ones get 503 at once "
                        "(default 30)")
    p.add_argument("--default-max-tokens", type=int, default=256, metavar="N",
                   help="new tokens of a chat request that gives no max_tokens (default 256, capped by the context; "
                        "completions default to 16 as in OpenAI's API)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                   help=f"largest request body; larger ones get 413 before being read (default {DEFAULT_MAX_BODY_BYTES}"
                        " = 2 MiB, room for a 128k-token prompt)")
    p.add_argument("--adapter", action="append", metavar="NAME=PACK",
                   help="serve an adapter pack (exported --against one of the artifacts) as model NAME (repeatable)")
    p.add_argument("--decode-nice", type=int, default=DECODE_NICE, metavar="N",
                   help="run the decode thread N nice levels below the prefill thread, so a newcomer's prefill takes "
                        "the cores first (0..19, Linux; default 19: at 16 staggered clients TTFT p50 1.9x a lone "
                        "request's, the median of six runs, against 2.3x at 0; nice acts within the server's "
                        "session: start it in its own, e.g. setsid, or pass 0 when busy work shares it)")
    p.add_argument("--spin-threads", action="store_true",
                   help="run the sessions on onnxruntime's process-wide pool, whose threads spin between work items: "
                        "a lone request decodes ~18%% faster on an otherwise idle machine, but while other processes "
                        "keep the cores busy the spinning threads starve the decode thread below them (add "
                        "--decode-nice 0 there); default: each session has its own pool of sleeping threads")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the artifacts' files")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from this origin call the API from a browser, e.g. http://127.0.0.1:8080 for "
                        "the page of `shadow-edge web` (repeatable; '*' = any origin)")
    ray = p.add_argument_group("Ray Serve (needs shadow-edge[ray])")
    ray.add_argument("--ray", action="store_true", help="deploy on Ray Serve instead of one uvicorn process")
    ray.add_argument("--replicas", type=int, default=1, metavar="N", help="replicas, each with its own runtimes")
    ray.add_argument("--num-cpus-per-replica", type=float, default=1.0, metavar="C",
                     help="CPUs Ray reserves per replica (default 1)")
    ray.add_argument("--autoscaling", metavar="JSON",
                     help='Ray Serve autoscaling_config, e.g. \'{"min_replicas": 1, "max_replicas": 4}\' '
                          "(replaces --replicas)")
    ray.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default: auto / start a local one)")
    return p


def options_from(args):
    from shadow_edge.commands.run import parse_adapters
    from shadow_edge.serve.options import ServeOptions

    return ServeOptions(tuple(args.artifacts), tuple(args.served_name), args.host, args.port, args.api_key,
                        args.default_mode, args.max_batch, args.max_queue, args.threads, args.timeout,
                        args.batch_window_ms, not args.no_verify, args.default_max_tokens,
                        tuple(parse_adapters(args.adapter).items()), args.max_body_bytes, args.shutdown_grace,
                        tuple(args.cors_origin), args.decode_nice, args.spin_threads)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        from shadow_edge.serve.app import build_app
        from shadow_edge.serve.server import ShadowServer, bind, host_port
    except ImportError as e:
        raise InputError(f"`shadow-edge serve` needs the serve extras ({e.name} is missing); install them with "
                         "pip install 'shadow-edge[serve]'") from None
    options = options_from(args)
    if args.ray:
        from shadow_edge.serve.ray_app import RayOptions, run_forever

        return run_forever(options, RayOptions(args.replicas, args.num_cpus_per_replica, args.autoscaling,
                                               args.ray_address, options.shutdown_grace_s))
    sock = bind(options.host, options.port)  # before loading anything: a busy port is one error line
    names = options.names + tuple(name for name, _ in options.adapters)
    where = host_port(options.host, sock.getsockname()[1])
    print(f"shadow-edge serve: loading {', '.join(names)}; OpenAI API at http://{where}/v1 "
          "(GET /health says when ready)", file=sys.stderr, flush=True)
    ShadowServer(build_app(options), options.shutdown_grace_s).run(sockets=[sock])
    return 0
