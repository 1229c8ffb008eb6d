"""`shadow-edge demo`: build the tiny default model, export it once into a cache dir, run every mode, time it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from shadow_edge import __version__
from shadow_edge.errors import ArtifactError, InputError
from shadow_edge.io_spec import GRAPH_MODES
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime.options import CASCADE

DEMO_MODES = GRAPH_MODES + (CASCADE, "speculative")


def cache_dir(override: str | None) -> Path:
    if override:
        return Path(override).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "shadow-edge"


def ensure_artifact(root: Path, force: bool) -> Path:
    """The tiny default's artifact under `root`, exported (with validation) unless already there."""
    art = root / f"tiny-default-{__version__}"
    if not force:
        try:
            if read_manifest(art).tool_version == __version__:
                return art
        except ArtifactError:
            pass
    try:
        from shadow_edge.core.tiny import write_tiny_default
        from shadow_edge.export import export_artifact, ExportOptions
    except ImportError as e:
        raise InputError(f"the demo builds and exports a model, which needs the export extras ({e.name} is "
                         "missing); install them with pip install 'shadow-edge[export]'") from None
    t0 = time.perf_counter()
    print(f"building the tiny default model and exporting it to {art} (once) ...", file=sys.stderr)
    tiny = write_tiny_default(root / "tiny-default-src")
    export_artifact(tiny.base_dir, tiny.adapter_dir, art, options=ExportOptions(force=True),
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
    print(f"artifact: {art}\nmodel: tiny random Qwen3 (vocab {m.model['vocab_size']}, hidden "
          f"{m.model['hidden_size']}); its text is MEANINGLESS - the demo shows the pipeline and its speed.\n"
          f"prompt: {args.prompt!r}\n")
    rows = []
    for mode in DEMO_MODES:
        rt.generate(args.prompt, mode=mode, max_new_tokens=2)  # warm-up, excluded from timings
        r = rt.generate(args.prompt, mode=mode, max_new_tokens=args.max_new_tokens)
        who = f"  [answered by {r.answered_by}, shadow confidence {r.confidence:.3f}]" if r.answered_by else ""
        if r.speculative is not None and r.speculative.drafted:
            who = (f"  [{r.speculative.accepted}/{r.speculative.drafted} drafted tokens accepted; same text as "
                   f"base_shadow: {r.token_ids == dict(rows)['base_shadow'].token_ids}]")
        print(f"{mode}:{who}\n  {r.text!r}")
        rows.append((mode, r))
    print(f"\n{'mode':<12} {'tokens':>6} {'prefill ms':>11} {'decode ms/tok':>14} {'tok/s':>8}  "
          f"(threads {args.threads or os.cpu_count()})")
    for mode, r in rows:
        t = r.timings
        print(f"{mode:<12} {len(r.token_ids):>6} {t.prefill_ms:>11.2f} {t.decode_ms_median or 0:>14.3f} "
              f"{t.tokens_per_s:>8.1f}")
    print("\ncascade timings add the shadow pass and, when escalated, the combined pass. speculative: the random\n"
          "shadow rarely agrees with the combined model, so drafts are mostly rejected here (a trained pair agrees).")
    return 0
