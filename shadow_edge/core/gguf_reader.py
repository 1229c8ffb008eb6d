"""GGUF base models (llama.cpp's files): metadata -> HF config, tensors -> HF names, dequantized on use.

`read_gguf(path)` parses a `.gguf` file's header (metadata and tensor table, with `struct`: the long
tokenizer arrays are walked, not decoded, so a 150k-entry vocabulary costs milliseconds where the `gguf`
package's GGUFReader spent seconds; the tensor data stays memory-mapped) and maps it as transformers' GGUF
loader does (transformers 5.24, `modeling_gguf_pytorch_utils.load_gguf_checkpoint`, `integrations/ggml.py`):

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
import struct
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


# GGUF metadata value types (gguf-py's GGUFValueType): fixed-size scalars by struct code; 8 string, 9 array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_VALUE_DTYPES = {"F32": np.float32, "F16": np.float16}  # tensors the gguf package maps as values, not bytes
SHORT_ARRAY = 64  # tokenizer.* arrays longer than this are kept as their length (the vocabulary, the merges)


@dataclass(frozen=True)
class _TensorInfo:
    """One entry of the tensor table: name, ggml type id, dims (ggml order: fastest first), offset in the data."""

    name: str
    type_id: int
    dims: tuple[int, ...]
    offset: int


class _Header:
    """A GGUF file's metadata and tensor table, parsed with `struct` from its memory map (little-endian v2/v3)."""

    def __init__(self, blob: np.ndarray):
        self.blob, self.pos = blob, 0
        _, version = self._unpack("<4sI")  # the magic: checked by _open
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (big-endian or unknown); supported: 2, 3 (little-endian)")
        tensor_count, kv_count = self._unpack("<QQ")
        self.fields: dict = {}
        for _ in range(kv_count):
            key = self._string()
            if key in self.fields:
                raise ValueError(f"duplicate metadata key {key!r}")
            (value_type,) = self._unpack("<I")
            self.fields[key] = self._value(value_type, key.startswith("tokenizer."))
        self.tensors: list[_TensorInfo] = []
        self._seen: set[str] = set()
        for _ in range(tensor_count):
            name = self._string()
            (n_dims,) = self._unpack("<I")
            dims = self._unpack(f"<{n_dims}Q")
            type_id, offset = self._unpack("<IQ")
            if not dims or name in self._seen:
                raise ValueError(f"tensor {name!r} is listed twice or has no dimensions")
            self._seen.add(name)
            self.tensors.append(_TensorInfo(name, type_id, tuple(int(d) for d in dims), offset))
        alignment = self.fields.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment!r} is not a power of two")
        self.data_start = -(-self.pos // alignment) * alignment

    def _unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.blob, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (n,) = self._unpack("<Q")
        end = self.pos + n
        if end > len(self.blob):
            raise ValueError(f"a string of {n} bytes at offset {self.pos} runs past the end of the file")
        text, self.pos = bytes(self.blob[self.pos:end]).decode("utf-8"), end
        return text

    def _value(self, value_type: int, count_long_arrays: bool):
        if value_type in _SCALARS:
            return self._unpack("<" + _SCALARS[value_type])[0]
        if value_type == _STRING:
            return self._string()
        if value_type != _ARRAY:
            raise ValueError(f"metadata value type {value_type} is not a GGUF type")
        item_type, n = self._unpack("<IQ")
        if item_type in _SCALARS:
            size = struct.calcsize(_SCALARS[item_type]) * n
            if self.pos + size > len(self.blob):
                raise ValueError(f"an array of {n} values at offset {self.pos} runs past the end of the file")
            if count_long_arrays and n > SHORT_ARRAY:
                self.pos += size
                return n
            return list(self._unpack(f"<{n}{_SCALARS[item_type]}"))
        if count_long_arrays and n > SHORT_ARRAY and item_type == _STRING:
            for _ in range(n):  # walked, not decoded
                (length,) = struct.unpack_from("<Q", self.blob, self.pos)
                self.pos += 8 + length
            if self.pos > len(self.blob):
                raise ValueError("a string array runs past the end of the file")
            return n
        return [self._value(item_type, count_long_arrays) for _ in range(n)]


def _open(path: Path) -> tuple[_Header, dict[str, np.ndarray]]:
    """The parsed header and each tensor's mapped data ({name: array}, laid out as gguf.quants.dequantize takes
    it: F32/F16 values, other types bytes [rows, bytes per row])."""
    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file does not exist; pass --base FILE.gguf or a Hugging Face model "
                              "directory")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}); pass a "
                              "llama.cpp .gguf model file or a Hugging Face model directory")
    gguf = _gguf()
    try:
        blob = np.memmap(path, mode="r", dtype=np.uint8)
        header = _Header(blob)
    except Exception as e:  # struct.error, UnicodeDecodeError, ValueError on short or corrupt files
        raise CheckpointError(f"{path}: cannot read the GGUF file ({type(e).__name__}: {str(e)[:160]}); the file "
                              "is truncated or corrupt; download it again") from None
    known = {t.value: t for t in gguf.GGMLQuantizationType}
    for t in header.tensors:
        name = known[t.type_id].name if t.type_id in known else f"ggml type {t.type_id}"
        if name not in SUPPORTED_TYPES:
            raise UnsupportedModelError(f"{path}: tensor {t.name!r} is stored as {name}, which shadow-edge "
                                        f"cannot dequantize; supported: {', '.join(SUPPORTED_TYPES)}; requantize it "
                                        "with llama-quantize (e.g. to Q8_0 or Q4_K) or pass the HF checkpoint")
    size, data = len(blob), {}
    for t in header.tensors:
        ggml_type = known[t.type_id]
        shape = tuple(reversed(t.dims))  # [rows, ..., row]
        if ggml_type.name in _VALUE_DTYPES:
            dtype = np.dtype(_VALUE_DTYPES[ggml_type.name])
            n_bytes = int(np.prod(shape)) * dtype.itemsize
        else:
            block, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
            if shape[-1] % block:
                raise CheckpointError(f"{path}: tensor {t.name!r} ({ggml_type.name}) has rows of {shape[-1]} values, "
                                      f"not a multiple of its block of {block}; the file is corrupt")
            dtype, shape = np.dtype(np.uint8), (*shape[:-1], shape[-1] // block * block_bytes)
            n_bytes = int(np.prod(shape))
        start = header.data_start + t.offset
        if start + n_bytes > size:
            raise CheckpointError(f"{path}: tensor {t.name!r} needs bytes {start}..{start + n_bytes} but the file "
                                  f"has {size}; the file is truncated; download it again")
        data[t.name] = blob[start:start + n_bytes].view(dtype).reshape(shape)
    return header, data


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
    header, data = _open(path)
    meta = header.fields  # scalars, strings, short arrays; long tokenizer arrays (vocabulary, merges) as lengths
    name = meta.get("general.architecture")
    arch = GGUF_ARCHS.get(name)
    if arch is None:
        raise UnsupportedModelError(f"{path}: GGUF architecture {name!r} is not supported; supported: "
                                    f"{', '.join(sorted(GGUF_ARCHS))} (llama includes SmolLM2 and Llama 2/3.0)")
    names = {t.name for t in header.tensors}
    q = next((t for t in header.tensors if t.name == "blk.0.attn_q.weight"), None)
    cfg = _config(meta, arch, names, None if q is None else int(q.dims[-1]), path)
    heads = {"attn_q": cfg["num_attention_heads"],
             "attn_k": cfg.get("num_key_value_heads", cfg["num_attention_heads"])}
    tensors, gguf_names = {}, {}
    types = _gguf().GGMLQuantizationType
    for t in header.tensors:
        hf = _hf_name(t.name)
        m = _LAYER_RE.fullmatch(t.name)
        permuted = heads.get(m.group(2)) if (arch.permuted_qk and m) else None
        tensors[hf] = GgufTensor(path, t.name, tuple(reversed(t.dims)), types(t.type_id), data[t.name], permuted)
        gguf_names[hf] = t.name
    return GgufBase(path, name, meta, cfg, tensors, gguf_names)
