"""Check a GGUF file as shadow-edge reads it against transformers' own GGUF loading of the same file.

For a GGUF you mean to export (`shadow-edge export --base FILE.gguf ...`): reads it with
shadow_edge.core.gguf_reader and with `AutoModelForCausalLM.from_pretrained(dir, gguf_file=NAME)`,
then compares the config and every tensor (exactly: both dequantize with `gguf.quants.dequantize`)
and the tokenizer's ids on a few strings. Prints one JSON record; exits 1 on any difference, 2 when
shadow-edge refuses the file (the error says why).

    python scripts/check_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf

Export side (torch, transformers, gguf); memory: the transformers model in float32 plus one tensor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

TEXTS = ["Hello world", "What is the capital of France?", "  two  spaces\nand a newline", "12345 ünïcödé ✓"]


def check(path: Path) -> dict:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shadow_edge.core.checkpoint import CANONICAL_TO_HF, read_base
    from shadow_edge.core.lazy_tensor import dense
    from shadow_edge.export.gguf_tokenizer import read_gguf_tokenizer_files

    started = time.perf_counter()
    ours = read_base(path)
    ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    state = ref.state_dict()
    pairs = {f"model.layers.{i}.{CANONICAL_TO_HF[n]}": t for i, layer in enumerate(ours.weights.layers)
             for n, t in layer.items()}
    pairs.update({"model.embed_tokens.weight": ours.weights.embed, "model.norm.weight": ours.weights.norm,
                  "lm_head.weight": ours.lm_head})
    differ = sorted(k for k, t in pairs.items() if k not in state or not torch.equal(dense(t), state[k]))
    unmatched = sorted(set(state) - set(pairs))
    c, r = ours.config, ref.config
    config = {"hidden_size": (c.hidden_size, r.hidden_size), "num_layers": (c.num_layers, r.num_hidden_layers),
              "num_heads": (c.num_heads, r.num_attention_heads), "num_kv_heads": (c.num_kv_heads, r.num_key_value_heads),
              "head_dim": (c.head_dim, getattr(r, "head_dim", None) or r.hidden_size // r.num_attention_heads),
              "intermediate_size": (c.intermediate_size, r.intermediate_size), "vocab_size": (c.vocab_size, r.vocab_size),
              "rms_norm_eps": (c.rms_norm_eps, r.rms_norm_eps), "rope_theta": (c.rope_theta, r.rope_parameters["rope_theta"]),
              "tie_word_embeddings": (c.tie_word_embeddings, r.tie_word_embeddings)}
    config_differ = {k: v for k, v in config.items() if v[0] != v[1]}
    files = read_gguf_tokenizer_files(path, c.vocab_size)
    tokenizer_differ = []
    if "tokenizer.json" in files.files:
        with tempfile.TemporaryDirectory() as tmp:
            files.copy_to(Path(tmp))
            tok = Tokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
        hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer_differ = [t for t in TEXTS if tok.encode(t).ids != hf_tok(t).input_ids]
    return {"file": str(path), "architecture": c.model_type, "tensors": len(pairs), "tensors_differ": differ,
            "transformers_tensors_unmatched": unmatched, "config_differ": config_differ,
            "tokenizer_texts_differ": tokenizer_differ, "seconds": round(time.perf_counter() - started, 1),
            "equal": not (differ or unmatched or config_differ or tokenizer_differ)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gguf", type=Path, help="the .gguf file")
    args = p.parse_args(argv)
    from shadow_edge.errors import ShadowEdgeError

    try:
        record = check(args.gguf)
    except ShadowEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    return 0 if record["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
