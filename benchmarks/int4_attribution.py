"""Which weights carry the demo pair's int4 drift: shadow-peft's own model with one weight group at a time
quantized and dequantized the way the exporter quantizes it (symmetric blocks along the input features).

    .venv/bin/python benchmarks/int4_attribution.py --block-size 32     # and 16

Per held-out text and mode (base_shadow, shadow_only): the fp32 perplexity (256-token windows every
128, each position scored once) and its change when only the base's decoder linears, only the
shadow's decoder linears, only the tied vocabulary matrix (embedding = head) or all of them are
int4; last, all decoder linears int4 with the vocabulary matrix int8. A simulation in PyTorch
(float32 arithmetic): the exported artifacts' own drift is in benchmarks/QUALITY.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shadow_edge.demo_model import DEMO_MODEL, HELDOUT  # noqa: E402
from shadow_edge.export.quantize import quantize_rows  # noqa: E402

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WINDOW, STRIDE = 256, 128


def load(mode: str):
    from shadow_peft import ShadowForCausalLM
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(DEMO_MODEL / "base")
    return ShadowForCausalLM.from_pretrained(base, DEMO_MODEL / "adapter", inference_mode=mode).eval()


def weight_groups(model) -> dict[str, list[torch.Tensor]]:
    """The weights the exporter quantizes, by group. The vocabulary matrix: the tied embedding = head, and
    ShadowForCausalLM's `shadow_lm_head` (its own parameter, a copy of the head; the exporter shares one)."""
    groups: dict[str, list[torch.Tensor]] = {"base layers": [], "shadow layers": [], "vocabulary matrix": []}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LINEARS and ".layers." in name:
            groups["shadow layers" if "shadow_model" in name else "base layers"].append(mod.weight)
    groups["vocabulary matrix"] = [p for n, p in model.named_parameters()
                                   if n.endswith("embed_tokens.weight") or n == "shadow_lm_head.weight"]
    if len(groups["vocabulary matrix"]) != 2:
        raise SystemExit("expected a tied embed_tokens matrix and shadow_lm_head in the demo pair")
    return groups


def perplexity(model, ids: list[int]) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, STRIDE):
            w = ids[begin:begin + WINDOW]  # [t]
            first = 0 if begin == 0 else WINDOW - STRIDE  # predictions already scored by the previous window
            logits = model(input_ids=torch.tensor([w])).logits[0, :-1].double()  # [t - 1, V]
            lp = torch.log_softmax(logits, -1)[torch.arange(len(w) - 1), torch.tensor(w[1:])]  # [t - 1]
            nll -= lp[first:].sum().item()
            n += len(w) - 1 - first
            if begin + WINDOW >= len(ids):
                break
    return math.exp(nll / n)


def quantized(mode: str, bits: dict[str, int], block: int):
    """The pair in `mode` with each group in `bits` quantized-dequantized to that many bits."""
    model = load(mode)
    with torch.no_grad():
        for group, ws in weight_groups(model).items():
            for w in ws if group in bits else ():
                w.copy_(quantize_rows(w, bits[group], block).dequantize())
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block-size", type=int, default=32)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(DEMO_MODEL / "base" / "tokenizer.json"))
    variants = {"base layers int4": {"base layers": 4}, "shadow layers int4": {"shadow layers": 4},
                "vocabulary matrix int4": {"vocabulary matrix": 4},
                "all int4": {"base layers": 4, "shadow layers": 4, "vocabulary matrix": 4},
                "layers int4 + vocabulary int8": {"base layers": 4, "shadow layers": 4, "vocabulary matrix": 8}}
    print("| text | mode | fp32 | " + " | ".join(variants) + " |")
    print("|---|---|---:|" + "---:|" * len(variants))
    for domain in ("kjv", "fortunes"):
        ids = tok.encode(HELDOUT[domain].read_text(encoding="utf-8")).ids
        for mode in ("base_shadow", "shadow_only"):
            ref = perplexity(load(mode), ids)
            cells = [f"{100 * (perplexity(quantized(mode, bits, args.block_size), ids) / ref - 1):+.2f}%"
                     for bits in variants.values()]
            print(f"| {domain} | {mode} | {ref:.2f} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
