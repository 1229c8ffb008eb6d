"""`shadow-edge bench ART [ART2 ...]`: parse the options, run the benchmark, print / write the results."""

from __future__ import annotations

import argparse
import sys

from shadow_edge.bench.options import BENCH_MODES, DEFAULT_MODES, BenchOptions
from shadow_edge.runtime.strategies import mode_names

EPILOG = """\
examples:
  shadow-edge bench ART
  shadow-edge bench ART --modes shadow_only,base_shadow,base_plain --threads 2 --json bench.json --plot bench.png
  shadow-edge bench ART --modes base_shadow,speculative --draft-tokens 4 --new-tokens 128
  shadow-edge bench ART --prompt-len 256 --new-tokens 64 --batch 4 --reps 3
  shadow-edge bench BASE_ART --adapter support=packs/support --adapter sql=packs/sql   # adapter packs
  shadow-edge bench OLD_ART NEW_ART --modes base_shadow --reps 7 --json ab.json       # A/B, interleaved

One artifact: each mode is loaded on its own and timed rep after rep.

Timings exclude the warm-up runs and use perf_counter. decode p50/p90 pool every decode
step of the timed runs; TTFT and end-to-end tokens/s are medians over the runs. GB/s is
bytes of weights one decode step reads / its p50 time, next to the machine's measured
read bandwidth (a numpy streaming-read probe). Peak RSS is per mode on Linux. The
table goes to stderr, progress too; --json writes one record per mode.
A sequence-classifier artifact is timed with `classify` instead: --batch sequences of
--prompt-len tokens per call, latency per sequence (p50/p90) and sequences/s per mode.
With --adapter NAME=PACK (a base artifact's packs, repeatable) each mode is timed with the
artifact's own adapter and with each pack, rep by rep in turn; rows say `MODE @NAME`.

Two or more artifacts (a before/after, fp32 vs int4, two exports): timed against each other in
one process, INTERLEAVED: every round runs each artifact once (all --modes), the artifacts'
order rotated each round so none always goes first; and --load-orders passes load them in
rotated orders (A,B then B,A), because the artifact loaded first was measured up to ~10%
slower. --reps is rounds per load order, --warmup untimed rounds after each load. Reported per
mode and artifact: decode tok/s median [p25-p75] over rounds, and "x first": its ratio to the
first artifact's, taken round by round (both ran under the same machine load), median
[min-max]; a difference inside that range is noise. "tokens = first" checks the greedy tokens.
--json writes one document: provenance, the rounds' orders, one record per (artifact, mode).
The helper is shadow_edge.bench.rounds, the same the benchmarks/ suites use.
"""


def build_parser() -> argparse.ArgumentParser:
    from shadow_edge.cli import _Parser  # one-line errors, exit 2

    d = BenchOptions()
    p = _Parser(prog="shadow-edge bench", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Latency, throughput, memory and size of an artifact, per mode; or several "
                            "artifacts against each other, interleaved (no torch).",
                epilog=EPILOG)
    p.add_argument("artifacts", metavar="ART", nargs="+",
                   help="artifact directory written by `shadow-edge export`; several: compared interleaved, "
                        "ratios against the first")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), metavar="M1,M2",
                   help=f"comma-separated modes among {', '.join(BENCH_MODES)} (default: %(default)s)")
    p.add_argument("--prompt-len", type=int, default=d.prompt_len, metavar="N",
                   help="prompt length in tokens, random ids (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens, metavar="N",
                   help="tokens generated per run, greedy, eos ignored (default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, metavar="B", help="prompts per run (default %(default)s)")
    p.add_argument("--reps", type=int, default=d.reps, metavar="R",
                   help="timed runs per mode; with several artifacts, rounds per load order (default %(default)s)")
    p.add_argument("--load-orders", type=int, metavar="N",
                   help="several artifacts: load passes, pass p in the order rotated by p (default: one per "
                        "artifact, so each is loaded first once)")
    p.add_argument("--warmup", type=int, default=d.warmup, metavar="W",
                   help="untimed runs before them (default %(default)s)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--seed", type=int, default=d.seed, metavar="S", help="seed of the prompt ids (default 0)")
    from shadow_edge.commands.strategy_flags import add_flags

    add_flags(p, modes=[m for m in BENCH_MODES if m in mode_names()])  # the benchmarkable modes' own options
    p.add_argument("--bandwidth-mib", type=int, default=d.bandwidth_mib, metavar="MIB",
                   help="size of the read-bandwidth probe in MiB; 0 skips it (default %(default)s)")
    p.add_argument("--adapter", action="append", metavar="NAME=PACK",
                   help="also time each mode with this adapter pack (exported --against ART) active (repeatable)")
    p.add_argument("--verify", action="store_true", help="check every file's sha256 first (not timed)")
    p.add_argument("--json", metavar="FILE", help="write the records as JSON (several artifacts: one document)")
    p.add_argument("--plot", metavar="FILE", help="write a PNG plot (needs matplotlib)")
    return p


def _is_classifier(art: str) -> bool:
    from shadow_edge.manifest import read_manifest

    return read_manifest(art).model.get("task") == "seq_cls"


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from shadow_edge.bench.report import format_table, plot, write_json
    from shadow_edge.bench.runner import run_bench
    from shadow_edge.commands.run import parse_adapters
    from shadow_edge.commands.strategy_flags import given
    from shadow_edge.errors import InputError

    options = BenchOptions(modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
                           prompt_len=args.prompt_len, new_tokens=args.new_tokens, batch=args.batch,
                           reps=args.reps, warmup=args.warmup, threads=args.threads, seed=args.seed,
                           bandwidth_mib=args.bandwidth_mib, strategy_options=tuple(given(args).items()),
                           verify=args.verify,
                           adapters=tuple(parse_adapters(args.adapter).items()))
    if len(args.artifacts) > 1:
        return _compare(args, options)
    if args.load_orders is not None:
        raise InputError("--load-orders rotates the load order of several artifacts; give two or more ARTs")
    art = args.artifacts[0]
    if _is_classifier(art):  # sequences/s and latency per sequence instead of decoding
        from shadow_edge.bench.classify_bench import format_classify_table, run_classify_bench
        from shadow_edge.bench.runner import stderr_progress

        if args.plot:
            raise InputError("--plot draws decoding figures; a sequence-classifier artifact has none (use --json)")
        records = run_classify_bench(art, options, stderr_progress)
        print(format_classify_table(records), file=sys.stderr)
    else:
        records = run_bench(art, options)
        print(format_table(records), file=sys.stderr)
    if args.json:
        write_json(records, args.json)
        print(f"[bench] wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot(records, args.plot)
        print(f"[bench] wrote {args.plot}", file=sys.stderr)
    return 0


def _compare(args, options: BenchOptions) -> int:
    """Several artifacts, interleaved (bench/multi.py): the table to stderr, --json the whole document."""
    from shadow_edge.bench.multi import format_compare, run_compare
    from shadow_edge.bench.report import write_json
    from shadow_edge.errors import InputError

    if args.plot:
        raise InputError("--plot draws one artifact's modes; for several artifacts use --json")
    doc = run_compare(args.artifacts, options, load_orders=args.load_orders)
    print(format_compare(doc), file=sys.stderr)
    if args.json:
        write_json(doc, args.json)
        print(f"[bench] wrote {args.json}", file=sys.stderr)
    return 0
