"""`shadow-edge run`: generate from an artifact with the torch-free runtime."""

from __future__ import annotations

import json
import sys

from shadow_edge.errors import InputError
from shadow_edge.runtime import GenerationResult, ShadowRuntime


def parse_ids(text: str) -> list[int]:
    """`1,2,3` -> [1, 2, 3]; spaces are allowed, empty items (`1,,2`, `1,`) are not."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip():
        raise InputError("--input-ids is empty; give at least one token id (e.g. 1,2,3)")
    for i, t in enumerate(items):
        if not t.isascii() or not t.isdigit():
            found = "an empty item" if not t else repr(t)
            raise InputError(f"--input-ids {text!r}: item {i} is {found}; expected comma-separated non-negative "
                             "integers (e.g. 1,2,3)")
    return [int(t) for t in items]


def parse_adapters(items: list[str] | None) -> dict[str, str]:
    """`--adapter NAME=PACK` (repeatable) -> {NAME: PACK}; a name given twice, or a PACK that is not an adapter
    pack, is refused here, before any model is loaded or timed."""
    from shadow_edge.runtime.adapters import open_pack

    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--adapter {item!r}: expected NAME=PACK (e.g. --adapter support=packs/support)")
        if name in out:
            raise InputError(f"--adapter {item!r}: the name {name!r} is already given ({out[name]}); each pack needs "
                             "its own name")
        open_pack(path)
        out[name] = path
    return out


def sampling_kwargs(args) -> dict:
    """Greedy unless a sampling flag is given (then temperature defaults to 1)."""
    given = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p),
                               ("seed", args.seed)) if v is not None}
    return {**given, "do_sample": bool(given)}


def timing_line(mode: str, result: GenerationResult) -> str:
    t, n = result.timings, len(result.token_ids)
    median = t.decode_ms_median
    line = (f"{mode}: {n} tokens, prefill {t.prefill_ms:.1f} ms, "
            + (f"decode {median:.2f} ms/token (median), {t.tokens_per_s:.1f} tok/s" if median is not None
               else "no decode steps"))
    if result.answered_by is not None:
        reason = result.stats.reason[0]
        remote = result.stats.remote[0]
        line += (f"; answered by {result.answered_by} ({reason}; shadow confidence {result.confidence:.3f} vs "
                 f"threshold {result.stats.threshold:g})")
        if remote:
            line += f"; server {remote['ms']:.1f} ms, {remote['bytes_sent']}+{remote['bytes_received']} bytes"
    s = result.speculative
    if s is not None and s.drafted:
        line += (f"; speculative: {s.accepted}/{s.drafted} drafted tokens accepted ({s.acceptance_rate:.0%}), "
                 f"{s.mean_accepted_length:.2f} per verify pass over {s.rounds} passes")
    return line


def run(args) -> int:
    from shadow_edge.commands.strategy_flags import given

    prompt = args.prompt if args.input_ids is None else parse_ids(args.input_ids)
    options = given(args)
    # a cascade escalating over the network runs only the shadow here: the artifact may hold only its graphs
    modes = ("shadow_only",) if options.get("escalate_to") is not None and args.mode == "cascade" else None
    rt = ShadowRuntime.load(args.artifact, threads=args.threads, verify=not args.no_verify, modes=modes,
                            adapters=parse_adapters(args.adapter), decode_step=args.decode_step)
    kwargs = dict(mode=args.mode, max_new_tokens=args.max_new_tokens, stop=args.stop, chat=args.chat,
                  adapter=args.use_adapter, **options, **sampling_kwargs(args))
    if args.stream and not args.json:
        pieces = rt.stream(prompt, **kwargs)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        result = pieces.result
    else:
        result = rt.generate(prompt, **kwargs)
        if args.json:
            record = result.to_dict()
            if args.chat:  # what the model saw: the template's text and its token ids
                record["prompt_text"] = rt.chat_text(prompt)
                record["prompt_ids"] = rt.encode(prompt, chat=True).input_ids[0].tolist()
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(result.text if rt.has_tokenizer else " ".join(map(str, result.token_ids)))
    print(timing_line(args.mode, result), file=sys.stderr)
    return 0
