"""`shadow-edge demo`: export the shipped demo pair once into a cache dir, run every mode on real prompts, time it.

The pair (`shadow_edge/demo_model`) is a small Qwen3 base trained on the King James Bible and
WordNet's English, and a shadow-peft adapter trained on Debian's fortunes: both modes answer in the adapter's
domain; the cascade shows one prompt the shadow answers itself and one it escalates.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from shadow_edge import __version__
from shadow_edge.demo_model import DEMO_MODEL
from shadow_edge.errors import ArtifactError, InputError
from shadow_edge.io_spec import GRAPH_MODES
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime.options import CASCADE

SPECULATIVE = "speculative"
# The cascade's two prompts: the shadow is confident on the first and escalates the second
# at the default --cascade-threshold 0.15 (the pair is small: its 24-token confidences lie in about 0.08-0.5;
# these two: 0.265 and 0.108).
CASCADE_PROMPTS = ("The best way to", "You will")


def cache_dir(override: str | None) -> Path:
    if override:
        return Path(override).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "shadow-edge"


def ensure_artifact(root: Path, force: bool) -> Path:
    """The demo pair's artifact under `root`, exported (with validation) unless already there."""
    art = root / f"demo-pair-{__version__}"
    if not force:
        try:
            if read_manifest(art).tool_version == __version__:
                return art
        except ArtifactError:
            pass
    try:
        from shadow_edge.export import export_artifact, ExportOptions
    except ImportError as e:
        raise InputError(f"the demo builds and exports a model, which needs the export extras ({e.name} is "
                         "missing); install them with pip install 'shadow-edge[export]'") from None
    t0 = time.perf_counter()
    print(f"exporting the demo pair to {art} (once) ...", file=sys.stderr)
    export_artifact(DEMO_MODEL / "base", DEMO_MODEL / "adapter", art, options=ExportOptions(force=True),
                    progress=lambda msg: None)
    print(f"exported and validated in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return art


def demo(args) -> int:
    if args.max_new_tokens < 2:
        raise InputError(f"--max-new-tokens is {args.max_new_tokens}; the demo needs >= 2 to time decoding")
    art = ensure_artifact(cache_dir(args.cache_dir), args.force)
    from shadow_edge.runtime import ShadowRuntime

    rt = ShadowRuntime.load(art, threads=args.threads)
    m = rt.manifest
    print(f"artifact: {art}\nmodel: Qwen3 base (hidden {m.model['hidden_size']}, vocab {m.model['vocab_size']}) "
          "trained on the King James Bible and WordNet + a shadow-peft adapter trained on Debian's fortunes "
          f"({DEMO_MODEL}); greedy decoding.\n")
    rows = []
    for mode in GRAPH_MODES + ((SPECULATIVE,) if SPECULATIVE in rt.modes else ()):
        rt.generate(args.prompt, mode=mode, max_new_tokens=2)  # warm-up, excluded from timings
        r = rt.generate(args.prompt, mode=mode, max_new_tokens=args.max_new_tokens)
        who = ""
        if r.speculative is not None and r.speculative.drafted:
            who = (f"  [{r.speculative.accepted}/{r.speculative.drafted} drafted tokens accepted; same text as "
                   f"base_shadow: {r.token_ids == dict(rows)['base_shadow'].token_ids}]")
        print(f"{mode}:{who}\n  {args.prompt!r} -> {r.text!r}")
        rows.append((mode, r))
    print(f"\ncascade (threshold {args.cascade_threshold}: the shadow answers when its confidence is at least that, "
          "otherwise base_shadow re-answers):")
    rt.generate(CASCADE_PROMPTS[0], mode=CASCADE, max_new_tokens=2)  # warm-up
    for prompt in CASCADE_PROMPTS:
        r = rt.generate(prompt, mode=CASCADE, max_new_tokens=args.max_new_tokens,
                        cascade_threshold=args.cascade_threshold)
        print(f"  [answered by {r.answered_by}, shadow confidence {r.confidence:.3f}]\n  {prompt!r} -> {r.text!r}")
        rows.append((f"cascade ({'shadow' if r.answered_by == 'shadow_only' else 'escalated'})", r))
    print(f"\n{'mode':<22} {'tokens':>6} {'prefill ms':>11} {'median ms/tok':>14} {'mean tok/s':>10}  "
          f"(threads {args.threads or os.cpu_count()})")
    for mode, r in rows:
        t = r.timings
        print(f"{mode:<22} {len(r.token_ids):>6} {t.prefill_ms:>11.2f} {t.decode_ms_median or 0:>14.3f} "
              f"{t.tokens_per_s:>10.1f}")
    print("\ncascade timings add the shadow pass and, when escalated, the combined pass. speculative: the shadow\n"
          "drafts, the combined model verifies; its text is base_shadow's, its speed depends on how often they agree.")
    return 0
