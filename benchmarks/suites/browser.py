"""The detached shadow in headless Chromium (onnxruntime-web, WASM; 1 and 2 threads) beside the Python runtime's
shadow_only on the same artifact, and the page weight (bytes the browser downloads) per precision.

    python -m benchmarks.suites.browser                              # the tiny test pair, fp32 / int8 / int4
    python -m benchmarks.suites.browser --preset smollm2-135m-shape   # random weights at SmolLM2-135M's dims
    python -m benchmarks.suites.browser --art fp32=ART1 --art int4=ART2   # given artifacts (e.g. a real SmolLM2 export)

One page load per precision and thread count: a warm-up generation of --new-tokens greedy tokens (the page's
URL parameters), then --repeats more (the form resubmitted); tokens/s is the page's own decode rate (tokens
after the first / time after the first, prefill excluded), median of the repeats; Python's is
`ShadowRuntime.generate`'s decode timings in a fresh process, warm-up excluded, median of as many runs.
Page weight: the bytes the loopback server sent for that page load. Quantized
artifacts are exported with --quant-compute float32 (what the page computes). Needs scripts/setup-web.sh.
The machine's cores are shared: read the figures as a comparison made at one time, not as absolutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

from benchmarks.lib.artifacts import REPO

PROMPT = "The river runs past the old mill and"
# A SmolLM2-135M-shaped llama (its real dims) with a 1-layer implicit shadow; random weights, the tiny pair's tokenizer.
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               intermediate_size=1536, max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5)


def say(message: str) -> None:
    print(f"[browser] {message}", file=sys.stderr, flush=True)


def pairs(preset: str, cache: Path) -> tuple[Path, Path]:
    """(base, adapter) of the preset, built once under `cache`."""
    from shadow_edge.core.tiny import write_tiny_default

    tiny = cache / "tiny"
    if not (tiny / "adapter" / "shadow_adapter.safetensors").is_file():
        write_tiny_default(tiny)
    if preset == "tiny":
        return tiny / "base", tiny / "adapter"
    out = cache / preset
    if not (out / "COMPLETE").is_file():
        import shutil

        import torch
        from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(**SMOLLM2, bos_token_id=0, eos_token_id=2, pad_token_id=0)).eval()
        base.save_pretrained(out / "base")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(tiny / "base" / name, out / "base" / name)
        peft = get_shadow_model(base, ShadowConfig(num_shadow_layers=1, injection_hidden_size=16, gate_hidden_size=16))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if name.startswith("shadow_") and "norm" not in name:
                    p.normal_(0.0, 0.02)
        ShadowForCausalLM(peft).save_pretrained(out / "adapter")
        (out / "COMPLETE").write_text("ok\n")
    return out / "base", out / "adapter"


def export_once(base: Path, adapter: Path, out: Path, **options) -> Path:
    """The pair exported with `options` (ExportOptions fields, validation off), reused when `out` exists."""
    from shadow_edge.export import ExportOptions, export_artifact

    if not out.exists():
        export_artifact(base, adapter, out, options=ExportOptions(validate=False, **options), progress=lambda m: None)
    return out


def python_tokens_per_s(art: Path, threads: int, new_tokens: int, repeats: int) -> dict:
    """In a fresh process: onnxruntime's thread pool is sized once per process."""
    import subprocess

    code = ("import json; from benchmarks.suites.browser import python_run; "
            f"print(json.dumps(python_run({str(art)!r}, {threads}, {new_tokens}, {repeats})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def python_run(art: str, threads: int, new_tokens: int, repeats: int) -> dict:
    from shadow_edge.runtime import ShadowRuntime

    rt = ShadowRuntime.load(art, threads=threads)
    rt.generate(PROMPT, mode="shadow_only", max_new_tokens=4)  # warm-up
    rates, prefill = [], []
    for _ in range(repeats):
        out = rt.generate(PROMPT, mode="shadow_only", max_new_tokens=new_tokens)
        rates.append(out.timings.tokens_per_s)  # decode: tokens after the first / their time, as the page's
        prefill.append(out.timings.prefill_ms)
    return {"tokens_per_s": statistics.median(rates), "prefill_ms": statistics.median(prefill),
            "tokens": len(out.token_ids)}


def browser_runs(site_dir: Path, threads: int, new_tokens: int, repeats: int) -> dict:
    from benchmarks.lib.web import drive, page_console_errors
    from shadow_edge.web.static_server import StaticServer

    with StaticServer(site_dir) as site:  # one page load; its first generation is the warm-up
        pages = drive([f"{site.url}/?{urlencode(dict(prompt=PROMPT, max_new_tokens=new_tokens, threads=threads))}"],
                      timeout_ms=600_000, again=repeats)
        weight = site.bytes_sent
    bad = [p for p in pages if not p["last_result"] or p["page_errors"] or page_console_errors(p)]
    if bad:
        raise SystemExit(f"a page failed: {bad[0]}")
    results = pages[0]["again"]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "prefill_ms": statistics.median(r["prefill_ms"] for r in results),
            "tokens": len(results[0]["token_ids"]), "isolated": pages[0]["cross_origin_isolated"],
            "page_bytes": weight}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", choices=("tiny", "smollm2-135m-shape"))
    p.add_argument("--art", action="append", default=[], metavar="NAME=ART", help="benchmark these artifacts instead")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", type=Path, default=REPO / ".cache" / "browser")
    p.add_argument("--json", type=Path, help="write the records here")
    args = p.parse_args()
    from shadow_edge.web import WebOptions, write_site

    arts = {}
    for spec in args.art:
        name, _, path = spec.partition("=")
        arts[name] = Path(path)
    if not arts:
        base, adapter = pairs(args.preset, args.cache)
        for name, opts in (("fp32", {}), ("int8", {"quantize": "int8", "quant_compute": "float32"}),
                           ("int4", {"quantize": "int4", "quant_compute": "float32"})):
            say(f"export {args.preset} {name}")
            arts[name] = export_once(base, adapter, args.cache / f"art-{args.preset}-{name}", **opts)
    records = []
    for name, art in arts.items():
        site = args.cache / f"site-{art.name}"
        write_site(art, site, WebOptions(force=True), progress=lambda m: None)
        manifest = json.loads((site / "manifest.json").read_text())
        for threads in (1, 2):
            say(f"{name}: {threads} thread(s), python then chromium")
            py = python_tokens_per_s(art, threads, args.new_tokens, args.repeats)
            web = browser_runs(site, threads, args.new_tokens, args.repeats)
            records.append({"precision": name, "threads": threads, "python": py, "chromium_wasm": web,
                            "model_bytes": manifest["page"]["model_mb"] * 1e6, "site_bytes": manifest["bytes"],
                            "vendor": manifest["vendor"], "artifact": str(art)})
    print(f"{'precision':<10}{'threads':>8}{'python tok/s':>14}{'chromium tok/s':>16}{'ratio':>8}"
          f"{'py prefill ms':>15}{'web prefill ms':>16}{'page MB':>10}{'model MB':>10}", file=sys.stderr)
    for r in records:
        py, web = r["python"], r["chromium_wasm"]
        print(f"{r['precision']:<10}{r['threads']:>8}{py['tokens_per_s']:>14.1f}{web['tokens_per_s']:>16.1f}"
              f"{web['tokens_per_s'] / py['tokens_per_s']:>8.2f}{py['prefill_ms']:>15.1f}{web['prefill_ms']:>16.1f}"
              f"{web['page_bytes'] / 1e6:>10.2f}{r['model_bytes'] / 1e6:>10.2f}", file=sys.stderr)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
            platform.machine(), "prompt": PROMPT, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "preset": None if args.art else args.preset, "records": records}
    if args.json:
        args.json.write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
