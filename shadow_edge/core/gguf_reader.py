"""GGUF base models (llama.cpp's files): metadata -> HF config, tensors -> HF names, dequantized on use.

`read_gguf(path)` reads a `.gguf` file with the `gguf` package (its header only; the tensor data
stays memory-mapped) and maps it as transformers' GGUF loader does (transformers 5.24,
`modeling_gguf_pytorch_utils.load_gguf_checkpoint`, `integrations/ggml.py`):

- config: the `{arch}.*` metadata keys of `GGUF_CONFIG_MAPPING` (block_count -> num_hidden_layers, ...),
  the special token ids, `tie_word_embeddings` = no `output.weight` tensor; head_dim from `attention.key_length` or, for llama,
  `rope.dimension_count`, else from the q projection's rows (transformers' Qwen3 default 128 only
  fits files whose head_dim is 128);
- names: `blk.{i}.attn_q.weight` -> `model.layers.{i}.self_attn.q_proj.weight`, ...;
- values: `gguf.quants.dequantize` (the function transformers calls), and for llama the rows of
  attn_q/attn_k un-permuted (llama.cpp's converter interleaves each head's RoPE halves).

Each tensor is a `GgufTensor` (core/lazy_tensor.LazyValues): dequantized to float32 when used and
not kept, so memory stays at one tensor beyond the mapped file (rows of the embedding are
dequantized alone). Unsupported architectures, quantization types and RoPE scaling are refused
with one error naming the file and what is supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shadow_edge.core.lazy_tensor import LazyValues, _count_nonfinite
from shadow_edge.errors import CheckpointError, UnsupportedModelError

GGUF_MAGIC = b"GGUF"
# ggml types whose values `gguf.quants.dequantize` computes (numpy, block by block); others are refused
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
# `{arch}.<key>` -> HF config field, as transformers' GGUF_CONFIG_MAPPING (llama/qwen2/qwen3 share it)
CONFIG_KEYS = {
    "context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta", "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
REQUIRED_KEYS = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "unknown_token_id": "unk_token_id",
             "padding_token_id": "pad_token_id"}  # tokenizer.ggml.<key> -> config field
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
CHUNK_ROWS = 4096  # rows dequantized at once (the vocabulary matrix: 4096 x hidden floats per step)
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


@dataclass(frozen=True)
class GgufArch:
    """How one GGUF `general.architecture` maps onto a registered HF model_type."""

    name: str
    model_type: Callable[[dict], str]  # metadata -> HF model_type (core/arch.py registry)
    head_dim_keys: tuple[str, ...]  # metadata keys that state head_dim, in order of trust
    permuted_qk: bool  # llama.cpp permuted attn_q/attn_k rows for its RoPE layout


GGUF_ARCHS = {a.name: a for a in (
    # llama.cpp runs a Mistral (v0.1-0.3) file as llama, and so do we; transformers 5.24 tries Mistral for a file
    # named exactly "mistral" and then fails to map its tensors (gguf-py has no "mistral" architecture)
    GgufArch("llama", lambda meta: "llama", ("attention.key_length", "rope.dimension_count"), permuted_qk=True),
    GgufArch("qwen2", lambda meta: "qwen2", ("attention.key_length",), permuted_qk=False),
    GgufArch("qwen3", lambda meta: "qwen3", ("attention.key_length",), permuted_qk=False),
)}


def is_gguf(path: str | Path) -> bool:
    """Whether `path` names a GGUF file (by suffix or, for a regular file, by its magic bytes)."""
    path = Path(path)
    if path.is_dir():
        return False
    if path.suffix.lower() == ".gguf":
        return True  # a missing .gguf file is reported by read_gguf
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(4) == GGUF_MAGIC
    except OSError:
        return False


class GgufTensor(LazyValues):
    """One tensor of a GGUF file: `shape` [torch order] known, float32 values dequantized by `load()`."""

    __slots__ = ("path", "name", "shape", "ggml_type", "_data", "_heads", "_checked")

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], ggml_type, data: np.ndarray,
                 heads: int | None):
        self.path, self.name, self.shape, self.ggml_type = path, name, torch.Size(shape), ggml_type
        self._data, self._heads = data, heads  # data: the mapped bytes/values; heads: un-permute q/k rows
        self._checked = False

    def _dequantize(self, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """float32 [shape] of `data` (its first axis is the rows), CHUNK_ROWS rows at a time into one array:
        `gguf.quants.dequantize` holds its whole result twice (it concatenates groups of rows), a chunk does
        so for 16 MB at most. The values are the same: a block never crosses rows."""
        dequantize = _gguf().quants.dequantize
        if len(shape) < 2 or shape[0] <= CHUNK_ROWS:
            return np.asarray(dequantize(data, self.ggml_type), dtype=np.float32).reshape(shape)
        out = np.empty(shape, dtype=np.float32)
        for i in range(0, shape[0], CHUNK_ROWS):
            part = out[i:i + CHUNK_ROWS]
            part[...] = dequantize(data[i:i + CHUNK_ROWS], self.ggml_type).reshape(part.shape)
        return out

    def _values(self, data: np.ndarray, rows: int | None = None) -> torch.Tensor:
        shape = tuple(self.shape) if rows is None else (rows, *self.shape[1:])
        values = self._dequantize(data, shape)
        if self._heads is not None:  # transformers' LlamaTensorProcessor._reverse_permute_weights
            values = values.reshape(self._heads, shape[0] // self._heads // 2, 2, *shape[1:]).swapaxes(2, 1)
            values = values.reshape(shape)
        if not (values.flags.writeable and values.flags.c_contiguous):  # F32: a view of the mapped file
            values = np.array(values, dtype=np.float32, order="C")  # a private, writable copy
        t = torch.from_numpy(values)
        bad = _count_nonfinite(t) if not self._checked else 0
        if bad:
            raise CheckpointError(f"{self.path}: tensor {self.name!r} ({self.ggml_type.name}) holds {bad} NaN/Inf "
                                  f"value(s) of {t.numel()}; the GGUF file is corrupt; use a finite model file")
        return t

    def load(self) -> torch.Tensor:
        t = self._values(self._data)
        self._checked = True
        return t

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Only the rows `index` are dequantized (blocks never cross rows); q/k (permuted) are loaded whole."""
        if self._heads is not None or len(self.shape) != 2:
            return self.load()[index]
        picked = self._data[index if isinstance(index, slice) else np.asarray(index)]
        return self._values(picked, rows=picked.shape[0])

    def __repr__(self) -> str:
        return f"GgufTensor({self.path.name}:{self.name}, {tuple(self.shape)}, {self.ggml_type.name})"


@dataclass
class GgufBase:
    """What a GGUF file holds for `checkpoint.read_base`: an HF config dict and tensors under HF names."""

    path: Path
    architecture: str  # the file's general.architecture
    meta: dict  # the metadata (long tokenizer arrays as their length)
    raw_config: dict  # as transformers builds it (plus head_dim where transformers would guess)
    tensors: dict[str, GgufTensor]  # HF name -> tensor
    gguf_names: dict[str, str]  # HF name -> GGUF name (for errors)

    def require(self, hf_names: list[str]) -> None:
        """Raise naming (by its GGUF name) the first tensor of `hf_names` the file lacks."""
        for hf in (n for n in hf_names if n not in self.tensors):
            m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf)
            leaf = {v: k for k, v in LAYER_NAMES.items()}.get(m.group(2)) if m else None
            gguf_name = ({v: k for k, v in GLOBAL_NAMES.items()}.get(hf)
                         or (f"blk.{m.group(1)}.{leaf}.{m.group(3)}" if leaf else hf))
            raise CheckpointError(f"{self.path}: tensor {gguf_name!r} (transformers: {hf}) is missing; the GGUF file "
                                  "is incomplete or was written for another layer count or architecture")


def _gguf():
    """The `gguf` package (export extra), or one error saying how to get it."""
    try:
        import gguf
        import gguf.quants
    except ImportError:
        raise CheckpointError("reading a .gguf base needs the `gguf` package: pip install 'shadow-edge[export]' (or "
                              "pip install gguf)") from None
    return gguf


def _open(path: Path):
    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file does not exist; pass --base FILE.gguf or a Hugging Face model "
                              "directory")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}); pass a "
                              "llama.cpp .gguf model file or a Hugging Face model directory")
    try:
        reader = _gguf().GGUFReader(str(path), "r")
    except Exception as e:  # the gguf package raises ValueError/IndexError/struct errors on short files
        raise CheckpointError(f"{path}: cannot read the GGUF file ({type(e).__name__}: {str(e)[:160]}); the file "
                              "is truncated or corrupt; download it again") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise CheckpointError(f"{path}: tensor {t.name!r} needs bytes {t.data_offset}..{t.data_offset + t.n_bytes}"
                                  f" but the file has {size}; the file is truncated; download it again")
    return reader


def _metadata(reader, path: Path) -> dict:
    """Scalar and string metadata (arrays other than short ones are skipped: the vocabulary is not needed here)."""
    meta = {}
    for key, field in reader.fields.items():
        if len(field.data) > 64 and key.startswith("tokenizer."):
            meta[key] = len(field.data)  # the vocabulary and merges: only their count
            continue
        try:
            meta[key] = field.contents()
        except Exception as e:
            raise CheckpointError(f"{path}: metadata key {key!r} cannot be read ({e}); the file is corrupt") from None
    return meta


def _config(meta: dict, arch: GgufArch, tensor_names: set[str], q_rows: int | None, path: Path) -> dict:
    """The HF config dict transformers would build from this metadata."""
    prefix = f"{arch.name}."
    missing = [prefix + k for k in REQUIRED_KEYS if prefix + k not in meta]
    if missing:
        raise CheckpointError(f"{path}: metadata key {missing[0]!r} is missing; the file is incomplete or was not "
                              "written by llama.cpp's converter")
    cfg: dict = {"model_type": arch.model_type(meta), "hidden_act": "silu"}
    for key, field in CONFIG_KEYS.items():
        if prefix + key in meta:
            cfg[field] = meta[prefix + key]
    for key, field in TOKEN_IDS.items():
        if f"tokenizer.ggml.{key}" in meta:
            cfg[field] = meta[f"tokenizer.ggml.{key}"]
    cfg.setdefault("vocab_size", meta.get("tokenizer.ggml.tokens"))
    cfg["tie_word_embeddings"] = "output.weight" not in tensor_names
    head_dim = next((meta[prefix + k] for k in arch.head_dim_keys if prefix + k in meta), None)
    if head_dim is None and q_rows is not None:
        head_dim = q_rows // cfg["num_attention_heads"]
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    scaling = meta.get(prefix + "rope.scaling.type")
    if (scaling not in (None, "none")) or "rope_freqs.weight" in tensor_names:
        found = f"rope.scaling.type {scaling!r}" if scaling not in (None, "none") else "tensor 'rope_freqs.weight'"
        raise UnsupportedModelError(f"{path}: {found}: scaled RoPE (e.g. Llama 3.1+ long context) in a GGUF file is "
                                    "not supported (transformers' GGUF loader ignores it, so it could not be "
                                    "validated); export the model's Hugging Face checkpoint instead")
    return cfg


def _hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return gguf_name  # unknown: left for the reader to report by its GGUF name


def read_gguf(path: str | Path) -> GgufBase:
    """Header and metadata of a GGUF base, checked; tensor values are read later, one at a time."""
    path = Path(path)
    reader = _open(path)
    meta = _metadata(reader, path)
    name = meta.get("general.architecture")
    arch = GGUF_ARCHS.get(name)
    if arch is None:
        raise UnsupportedModelError(f"{path}: GGUF architecture {name!r} is not supported; supported: "
                                    f"{', '.join(sorted(GGUF_ARCHS))} (llama includes SmolLM2 and Llama 2/3.0)")
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise UnsupportedModelError(f"{path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which shadow-edge "
                                        f"cannot dequantize; supported: {', '.join(SUPPORTED_TYPES)}; requantize it "
                                        "with llama-quantize (e.g. to Q8_0 or Q4_K) or pass the HF checkpoint")
    names = {t.name for t in reader.tensors}
    q = next((t for t in reader.tensors if t.name == "blk.0.attn_q.weight"), None)
    cfg = _config(meta, arch, names, None if q is None else int(q.shape[-1]), path)
    heads = {"attn_q": cfg["num_attention_heads"],
             "attn_k": cfg.get("num_key_value_heads", cfg["num_attention_heads"])}
    tensors, gguf_names = {}, {}
    for t in reader.tensors:
        hf = _hf_name(t.name)
        m = _LAYER_RE.fullmatch(t.name)
        permuted = heads.get(m.group(2)) if (arch.permuted_qk and m) else None
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        tensors[hf] = GgufTensor(path, t.name, shape, _gguf().GGMLQuantizationType(t.tensor_type), t.data,
                                permuted)
        gguf_names[hf] = t.name
    return GgufBase(path, name, meta, cfg, tensors, gguf_names)
