"""Decode speed of the two attention kinds on one small random model: GroupQueryAttention vs the ONNX fallback.

    python -m benchmarks.experiments.attention_kinds [--out /tmp/attn_kinds] [--prompts 16,256] [--new 32] [--reps 5]

Builds a random Qwen3 base (hidden 256, 4 layers, 8 heads / 4 kv heads, head_dim 32) with a
1-layer implicit shadow-peft adapter, exports it twice (`--attention GroupQueryAttention` and
`--attention Attention`), then generates greedily from both artifacts, interleaved rep by rep so
machine noise hits both alike, in shadow_only and base_shadow. Prints the median decode ms/token
(first token excluded) per kind, mode and prompt length, and the fallback/GQA ratio. Needs the
export extra and shadow-peft (dev).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from benchmarks.lib.timing import run_rounds
from shadow_edge import io_spec
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.runtime import ShadowRuntime


def build(root: Path) -> tuple[Path, Path]:
    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                      head_dim=32, intermediate_size=768, vocab_size=2048, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    base = Qwen3ForCausalLM(cfg).eval()
    base.save_pretrained(root / "base")
    shadow = get_shadow_model(base, ShadowConfig(num_shadow_layers=1, injection_hidden_size=16, gate_hidden_size=16))
    ShadowForCausalLM(shadow).save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/attn_kinds"))
    p.add_argument("--prompts", default="16,256", help="prompt lengths, comma-separated")
    p.add_argument("--new", type=int, default=32, help="new tokens per generation")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    base, adapter = build(args.out)
    kinds = (io_spec.ATTENTION_GQA, io_spec.ATTENTION_ONNX)
    rts = {}
    for kind in kinds:
        art = args.out / f"art_{kind}"
        export_artifact(base, adapter, art, options=ExportOptions(attention=kind), progress=lambda s: None)
        rts[kind] = ShadowRuntime.load(art, threads=args.threads)
    rng = np.random.default_rng(0)
    print(f"{'mode':<12} {'prompt':>6} " + " ".join(f"{k + ' ms/tok':>26}" for k in kinds) + "  ratio")
    for mode in io_spec.GRAPH_MODES:
        for n in (int(x) for x in args.prompts.split(",")):
            ids = rng.integers(0, 2048, n).tolist()
            result = run_rounds({k: (lambda rt=rts[k]: rt.generate(ids, mode=mode, max_new_tokens=args.new))
                                 for k in kinds}, reps=args.reps, warmup=1)  # interleaved, order rotated
            last = {k: result.samples[k][-1].value.token_ids for k in kinds}
            same = "" if last[kinds[0]] == last[kinds[1]] else "  (greedy tokens DIFFER)"
            med = {k: float(np.median([ms for smp in result.samples[k]
                                       for ms in smp.value.timings.decode_ms_per_token])) for k in kinds}
            print(f"{mode:<12} {n:>6} " + " ".join(f"{med[k]:>26.3f}" for k in kinds)
                  + f"  {med[kinds[1]] / med[kinds[0]]:.2f}x{same}")


if __name__ == "__main__":
    main()
