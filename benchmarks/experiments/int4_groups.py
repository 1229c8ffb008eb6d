"""Which int4 scheme per weight group keeps the demo pair's perplexity: a PyTorch simulation on held-out chats.

    python -m benchmarks.experiments.int4_groups --chats 16 \\
        asymmetric/symmetric/int8 symmetric/symmetric/int4 asymmetric/asymmetric/int8 asymmetric/symmetric/int4

Each variant is BASE_SCHEME/SHADOW_SCHEME/VOCAB: the base's decoder linears and the shadow's in int4 blocks of 32
(symmetric or asymmetric, export/quantize.py), the vocabulary matrices (embedding = heads) int8 (symmetric) or
int4 (in the base's scheme). The model is shadow_edge's own PyTorch reference (core/model.py) on the weights
dequantized exactly as the exporter quantizes them, float32 arithmetic (the exported artifacts add int8
activation rounding: benchmarks/QUALITY.md). Scored: the assistant turns of the first --chats held-out chats
(rendered by the fp32 artifact's chat template, given with --fp32-art or exported by the quality suite's cache).
Prints the perplexity change against float32 per mode.
"""

from __future__ import annotations

import argparse
import math

import torch

from shadow_edge.core import ShadowModel, StepInputs, load_spec
from shadow_edge.core.smollm2 import smollm2_checkpoint
from shadow_edge.demo_model import ADAPTER, HELDOUT_CHATS
from shadow_edge.export.quantize import quantize_spec
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.chat_eval import chat_rows

MODES = ("base_plain", "base_shadow", "shadow_only")


def perplexity(model: ShadowModel, rows, mode: str) -> float:
    nll, n = 0.0, 0
    for ids, scored in rows:
        step = StepInputs.full(torch.from_numpy(ids)[None], None)
        if mode == "base_plain":
            hidden, _ = model.backbone(step, None)
            logits = model.logits(hidden, "base_shadow")  # [1, t, vocab]
        else:
            logits, _ = model.forward(step, mode)
        lp = torch.log_softmax(logits[0, :-1].double(), -1)[torch.arange(len(ids) - 1), torch.from_numpy(ids[1:])]
        keep = torch.from_numpy(scored[1:])
        nll -= lp[keep].sum().item()
        n += int(keep.sum())
    return math.exp(nll / n)


def variant(spec, text: str):
    """The spec with each group quantized as BASE_SCHEME/SHADOW_SCHEME/VOCAB says (loaded: dequantized once)."""
    base, shadow, vocab = text.split("/")
    b = quantize_spec(spec, "int4", 32, base, vocab, shadow)
    return b.loaded()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", help="BASE_SCHEME/SHADOW_SCHEME/VOCAB, e.g. asymmetric/symmetric/int8")
    p.add_argument("--chats", type=int, default=16)
    p.add_argument("--fp32-art", required=True, help="the demo pair's fp32 artifact (its tokenizer and template)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = chat_rows(ShadowRuntime.load(args.fp32_art, threads=1), HELDOUT_CHATS, max_chats=args.chats)
    spec = load_spec(smollm2_checkpoint(), ADAPTER)
    ref = {m: perplexity(ShadowModel(spec.loaded()), rows, m) for m in MODES}
    print("| variant (base / shadow / vocabulary) | " + " | ".join(MODES) + " |")
    print("|---|" + "---:|" * len(MODES))
    print("| float32 (perplexity) | " + " | ".join(f"{ref[m]:.3f}" for m in MODES) + " |", flush=True)
    for text in args.variants:
        model = ShadowModel(variant(spec, text))
        cells = [f"{100 * (perplexity(model, rows, m) / ref[m] - 1):+.2f}%" for m in MODES]
        print(f"| {text} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
