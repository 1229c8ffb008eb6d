"""Tiny GGUF files written offline as llama.cpp's converter writes them: a random HF model, quantized per tensor.

`write_gguf(model, tokenizer, path, types)` writes `model` (a random transformers causal LM from
factories.make_base_model) with the `gguf` package's GGUFWriter: llama.cpp's metadata keys and tensor
names, llama's attn_q/attn_k rows permuted (convert_hf_to_gguf.py's `LlamaModel.permute`), 2-D weights
quantized with `gguf.quants.quantize` in the types of `types` (round robin), norms in F32, and a
byte-level BPE tokenizer (tokens, merges, token types, special ids, chat template). Types the gguf
package cannot quantize (the k-quants, IQ4) get random blocks whose half-precision scales are finite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quantize

from shadow_edge.core.tiny import CHAT_TEMPLATE, CORPUS, train_bpe

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
LAYER_LEAVES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
                "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
QUANTIZABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def tiny_tokenizer(vocab_size: int):
    return train_bpe(CORPUS.splitlines() * 4, vocab_size)


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """A small sentencepiece-style vocabulary (llama.cpp's `llama` tokenizer model): tokens, scores, token types
    (2 unknown, 3 control, 6 byte fallback, 1 normal); merges follow from the scores, as transformers derives them."""
    words = ["\u2581the", "\u2581a", "\u2581and", "\u2581of", "\u2581to", "\u2581in", "\u2581is", "\u2581it", "th", "he",
             "in", "an", "er", "on", "re", "at", "en", "nd", "\u2581t", "\u2581th", "\u2581an", "\u2581o", "\u2581i"]
    pieces = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("TWH.,?!")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + words
    scores = [0.0] * 259 + [-1000.0 - i for i in range(len(pieces))] + [-10.0 - i for i in range(len(words))]
    return tokens, scores, [2, 3, 3] + [6] * 256 + [1] * (len(pieces) + len(words))


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    module, leaf = rest.rsplit(".", 1)
    return f"blk.{i}.{LAYER_LEAVES[module]}.{leaf}"


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute` (rows of q/k: RoPE halves interleaved)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode(values: np.ndarray, qtype: GGMLQuantizationType, rng: np.random.Generator) -> np.ndarray:
    """`values` [rows, cols] stored as `qtype`: quantized by the gguf package, or random finite blocks."""
    if qtype.name in QUANTIZABLE:
        return quantize(values, qtype)
    block, size = GGML_QUANT_SIZES[qtype]
    # bytes below 0x7C: every half-precision field (scales) is finite
    return rng.integers(0, 0x7C, (values.shape[0], values.shape[1] // block * size), dtype=np.uint8)


def write_gguf(model, tok, path: Path, types: tuple[str, ...], name: str = "tiny", arch: str | None = None,
               skip: tuple[str, ...] = (), extra_meta: dict | None = None, seed: int = 0, spm: bool = False) -> Path:
    """Write `model` + `tok` to `path` as GGUF; `skip` leaves tensors (GGUF names) out; `arch` overrides the
    file's general.architecture; `extra_meta` adds `{arch}.<key>` metadata (str/int/float); `spm` writes the
    sentencepiece-style vocabulary of `spm_vocab` (tokenizer model "llama", BOS added) instead of `tok`'s BPE."""
    cfg = model.config
    arch = arch or GGUF_ARCH[cfg.model_type]
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    else:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    for key, value in (extra_meta or {}).items():
        add = {str: w.add_string, int: w.add_uint32, float: w.add_float32}[type(value)]
        add(f"{arch}.{key}", value)
    if spm:
        tokens, scores, token_types = spm_vocab()
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(token_types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    else:
        vocab = tok.get_vocab(with_added_tokens=True)
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
        merges = json.loads(tok.to_str())["model"]["merges"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in specials else 1 for t in tokens])
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        w.add_bos_token_id(tok.token_to_id("<|endoftext|>"))
        w.add_eos_token_id(tok.token_to_id("<|im_end|>"))
        w.add_pad_token_id(tok.token_to_id("<|endoftext|>"))
        w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    rng, n = np.random.default_rng(seed), 0
    for hf, t in model.state_dict().items():
        g = gguf_name(hf)
        if g in skip or (hf == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        values = t.detach().float().numpy()
        if arch == "llama" and (".attn_q." in g or ".attn_k." in g):
            values = permute(values, cfg.num_attention_heads if ".attn_q." in g else cfg.num_key_value_heads)
        if values.ndim == 1:
            w.add_tensor(g, values.astype(np.float32))
            continue
        qtype = GGMLQuantizationType[types[n % len(types)]]
        n += 1
        data = encode(values, qtype, rng)
        w.add_tensor(g, data, raw_shape=data.shape if qtype.name in ("F32", "F16") else None, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
