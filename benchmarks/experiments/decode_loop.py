"""The decode step's own cost: a `DecodeState` (buffers and bindings made once) against binding fresh values per step.

    python -m benchmarks.experiments.decode_loop ART [ART ...] [--modes base_shadow,base_plain] [--rounds 9] [--new-tokens 128]

Per artifact and mode, interleaved rounds of three greedy loops over the same prompt (prompt 64, batch 1):
- `per_step`: each step wraps new input OrtValues, binds them, lets onnxruntime allocate the
  hidden states and logits, and runs the head through `run_with_ort_values` (`Pipeline.step`: the
  decode loop before `DecodeState`);
- `decoder`: `decode_state.DecodeState`, whose step writes the token into a bound buffer and binds only the mask;
- `generate`: the whole `ShadowRuntime.generate` (the decoder plus sampling and bookkeeping).
The three run interleaved, their order rotated every round (benchmarks.lib.timing). Prints the median over
rounds of each loop's p50 ms per token and the speed-up of `decoder` over `per_step`; the tokens of all three
must agree. Torch-free.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.lib.timing import run_rounds
from shadow_edge.bench.runner import prompt_ids
from shadow_edge.errors import ShadowEdgeError
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.decode_state import DecodeState
from shadow_edge.runtime.generate import Pipeline, prefill


def per_step(pipe: Pipeline, ids: np.ndarray, n: int) -> tuple[list[float], list[int]]:
    mask = np.ones_like(ids)
    logits, caches, positions = prefill(pipe, ids, mask, capacity=ids.shape[1] + n)
    tokens, ms, one = [int(np.argmax(logits[0]))], [], np.ones((1, 1), np.int64)
    for _ in range(n - 1):
        t0 = time.perf_counter()
        mask = np.concatenate([mask, one], axis=1)
        logits = pipe.step(np.array([[tokens[-1]]], np.int64), mask, positions[:, None], caches, True)[:, -1]
        positions = positions + 1
        tokens.append(int(np.argmax(logits[0])))
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms, tokens


def decoder(pipe: Pipeline, ids: np.ndarray, n: int) -> tuple[list[float], list[int]]:
    dec = DecodeState(pipe, ids.shape[0], ids.shape[1] + n)
    logits = dec.prefill(ids)
    tokens, ms = [int(np.argmax(logits[0]))], []
    for _ in range(n - 1):
        t0 = time.perf_counter()
        logits = dec.step(np.array([tokens[-1]], np.int64))
        tokens.append(int(np.argmax(logits[0])))
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms, tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", type=Path, nargs="+")
    p.add_argument("--modes", default="base_shadow,base_plain", help="modes (default %(default)s)")
    p.add_argument("--rounds", type=int, default=9, help="timed rounds (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.new_tokens < 2 or args.prompt_len < 1:
        p.error("--rounds >= 1, --new-tokens >= 2 and --prompt-len >= 1")
    modes = args.modes.split(",")
    runs = []  # (label, runtime, mode)
    try:
        for art in args.artifacts:
            rt = ShadowRuntime.load(art, threads=args.threads, verify=False, modes=tuple(modes))
            runs += [(f"{art.name} {mode}", rt, mode) for mode in modes]
    except ShadowEdgeError as e:
        p.error(str(e))
    vocab = runs[0][1].manifest.model["vocab_size"]
    ids = prompt_ids(int(vocab), 1, args.prompt_len, 0)
    loops = ("per_step", "decoder", "generate")
    times: dict[tuple[str, str], list[float]] = {}
    for label, rt, mode in runs:  # per artifact and mode: the three loops interleaved, their order rotated
        pipe = rt.pipeline(mode)

        def gen(rt=rt, mode=mode):
            out = rt.generate(ids[0].tolist(), mode=mode, max_new_tokens=args.new_tokens, eos=())
            return list(out.timings.decode_ms_per_token), list(out.token_ids)

        result = run_rounds({"per_step": lambda pipe=pipe: per_step(pipe, ids, args.new_tokens),
                             "decoder": lambda pipe=pipe: decoder(pipe, ids, args.new_tokens), "generate": gen},
                            reps=args.rounds, warmup=1)
        for loop in loops:
            times[(label, loop)] = [statistics.median(smp.value[0]) for smp in result.samples[loop]]
        if len({tuple(result.samples[loop][-1].value[1]) for loop in loops}) != 1:
            raise SystemExit(f"{label}: the loops' greedy tokens differ")
    print(f"{'artifact mode':<36}{'per_step ms':>12}{'decoder ms':>12}{'generate ms':>12}{'speed-up':>10}")
    for label, _, _ in runs:
        a, b, g = (statistics.median(times[(label, loop)]) for loop in ("per_step", "decoder", "generate"))
        print(f"{label:<36}{a:>12.3f}{b:>12.3f}{g:>12.3f}{a / b:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
