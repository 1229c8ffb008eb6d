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
        line += f"; answered by {result.answered_by} (shadow confidence {result.confidence:.3f})"
    s = result.speculative
    if s is not None and s.drafted:
        line += (f"; speculative: {s.accepted}/{s.drafted} drafted tokens accepted ({s.acceptance_rate:.0%}), "
                 f"{s.mean_accepted_length:.2f} per verify pass over {s.rounds} passes")
    return line


def run(args) -> int:
    prompt = args.prompt if args.input_ids is None else parse_ids(args.input_ids)
    if args.escalate_to is not None:
        return run_remote_cascade(args, prompt)
    rt = ShadowRuntime.load(args.artifact, threads=args.threads, verify=not args.no_verify,
                            adapters=parse_adapters(args.adapter))
    kwargs = dict(mode=args.mode, max_new_tokens=args.max_new_tokens, stop=args.stop, chat=args.chat,
                  cascade_threshold=args.cascade_threshold, draft_tokens=args.draft_tokens,
                  adapter=args.use_adapter, **sampling_kwargs(args))
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
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            print(result.text if rt.has_tokenizer else " ".join(map(str, result.token_ids)))
    print(timing_line(args.mode, result), file=sys.stderr)
    return 0


def run_remote_cascade(args, prompt) -> int:
    """--escalate-to: the shadow answers on this device; unsure answers go to the server."""
    from shadow_edge.runtime.remote import Escalation, remote_cascade

    if args.mode != "cascade":
        raise InputError(f"--escalate-to needs --mode cascade (got --mode {args.mode}); the device runs the shadow "
                         "and escalates unsure answers")
    escalation = Escalation(args.escalate_to, args.api_key, args.escalate_model, args.escalate_timeout)
    rt = ShadowRuntime.load(args.artifact, threads=args.threads, verify=not args.no_verify, modes=("shadow_only",))
    out = remote_cascade(rt, prompt, escalation, max_new_tokens=args.max_new_tokens, stop=args.stop, chat=args.chat,
                         cascade_threshold=args.cascade_threshold, **sampling_kwargs(args))
    if args.json:
        print(json.dumps(out.to_dict(), ensure_ascii=False))
    else:
        print(out.text if rt.has_tokenizer else " ".join(map(str, out.shadow_token_ids)))
    remote = f", server {out.remote_ms:.1f} ms, {out.bytes_sent}+{out.bytes_received} bytes" \
        if out.remote_ms is not None else ""
    print(f"cascade: answered by {out.answered_by} ({out.reason}); shadow confidence {out.confidence:.3f} vs "
          f"threshold {out.threshold:g}; shadow {out.shadow_ms:.1f} ms{remote}", file=sys.stderr)
    return 0
