"""The systems the comparison runs, behind one interface: load(), generate(ids, n) -> (RunTiming, tokens), close().

Every system decodes greedily, batch 1, exactly n new tokens (eos masked or ignored),
with the thread count set by compare.py (torch.set_num_threads / onnxruntime intra-op).
Timing is wall clock (perf_counter) from the call to each new token: shadow-edge from its
own step timings, the transformers-based systems through a streamer that stamps every
token, onnxruntime-genai around each generate_next_token().
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.lib.artifacts import dir_bytes
from shadow_edge.bench.stats import RunTiming
from shadow_edge.bench.weights import weight_bytes, weight_bytes_per_token


class System:
    key = ""  # "family/variant", e.g. "shadow-edge/base_shadow"
    family = ""
    mode = ""  # shadow_only | base_shadow | base_plain | plain
    weights = "fp32"
    note = ""

    def load(self) -> None: ...

    def generate(self, ids: np.ndarray, n: int) -> tuple[RunTiming, list[int]]: ...

    def close(self) -> None: ...

    def size_bytes(self) -> int | None:
        return None

    def weight_bytes_per_token(self) -> int | None:
        return None


class ShadowEdge(System):
    family = "shadow-edge"

    def __init__(self, art: Path, mode: str, threads: int, family: str = "shadow-edge"):
        from shadow_edge.manifest import read_manifest

        self.art, self.mode, self.threads = art, mode, threads
        self.family, self.key = family, f"{family}/{mode}"
        self.manifest = read_manifest(art)
        self.weights = "fp32" if self.manifest.quantization == "none" else self.manifest.quantization
        self.note = {"base_plain": "own backbone_plain graph: the backbone without the adapter"}.get(mode, "")

    def load(self) -> None:
        from shadow_edge.runtime import ShadowRuntime

        self.rt = ShadowRuntime.load(self.art, threads=self.threads, verify=False, modes=(self.mode,))

    def generate(self, ids, n):
        t0 = time.perf_counter()
        out = self.rt.generate(ids[0].tolist(), mode=self.mode, max_new_tokens=n, eos=())
        wall = (time.perf_counter() - t0) * 1e3
        steps = tuple(out.timings.decode_ms_per_token)
        return RunTiming(wall - sum(steps), steps, wall, n), list(out.token_ids)

    def close(self) -> None:
        del self.rt

    def size_bytes(self):
        return self.manifest.mode_bytes(self.mode)

    def weight_bytes_per_token(self):
        return weight_bytes_per_token(self.art, self.manifest, self.mode)


class _Clock:
    """A transformers streamer that only stamps: put(prompt) once, then put(token) per new token."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


class _HFGenerate(System):
    """Shared by the plain transformers backbone and the shadow-peft reference (both HF `generate`)."""

    use_cache: bool | None = None

    def generate(self, ids, n):
        import torch

        clock = _Clock()
        x = torch.from_numpy(ids)
        kwargs = {} if self.use_cache is None else {"use_cache": self.use_cache}
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, streamer=clock,
                                      pad_token_id=self.pad_id, **kwargs)
        wall = (time.perf_counter() - t0) * 1e3
        stamps = clock.stamps[1:]  # [0] is the prompt
        if len(stamps) != n:
            raise RuntimeError(f"{self.key}: generated {len(stamps)} tokens, expected {n}")
        steps = tuple(float(b - a) * 1e3 for a, b in zip(stamps, stamps[1:]))
        return RunTiming((stamps[0] - t0) * 1e3, steps, wall, n), out[0, ids.shape[1]:].tolist()

    def close(self) -> None:
        del self.model


class TransformersPlain(_HFGenerate):
    key, family, mode = "transformers/plain", "transformers", "plain"
    note = "plain backbone, AutoModelForCausalLM.generate with KV cache (use_cache=True)"
    use_cache = True

    def __init__(self, base: Path):
        self.base = base

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32).eval()
        self.pad_id = self.model.config.vocab_size - 1

    def size_bytes(self):
        return dir_bytes(self.base, (".safetensors",))

    def weight_bytes_per_token(self):
        """Unique parameter bytes; an untied input embedding counts one row (a lookup)."""
        seen, total = set(), 0
        for p in self.model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
        emb = self.model.get_input_embeddings().weight
        out = self.model.get_output_embeddings()
        if out is None or out.weight.data_ptr() != emb.data_ptr():
            total -= emb.numel() * emb.element_size() - emb.shape[1] * emb.element_size()
        return total


class ShadowPeftReference(_HFGenerate):
    family = "shadow-peft"
    note = ("reference ShadowForCausalLM.generate as shipped; its KV cache is inert on transformers 5.x, so "
            "every step recomputes the whole sequence")

    def __init__(self, base: Path, adapter: Path, mode: str):
        self.base, self.adapter, self.mode = base, adapter, mode
        self.key = f"shadow-peft/{mode}"

    def load(self) -> None:
        import torch
        from shadow_peft import ShadowForCausalLM
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32)
        self.model = ShadowForCausalLM.from_pretrained(base, self.adapter, inference_mode=self.mode).eval()
        self.pad_id = base.config.vocab_size - 1

    def size_bytes(self):
        return dir_bytes(self.base, (".safetensors",)) + dir_bytes(self.adapter, (".safetensors",))


class OrtGenai(System):
    family = "ort-genai"
    mode = "plain"

    def __init__(self, model_dir: Path, precision: str, threads: int):
        self.dir, self.weights, self.threads = model_dir, precision, threads
        self.key = f"ort-genai/{precision}"
        self.note = (f"onnxruntime-genai model builder -p {precision} -e cpu (plain backbone; "
                     + ("float32)" if precision == "fp32" else
                        f"MatMulNBits {precision}, block 32, accuracy level 4)"))

    def load(self) -> None:
        import onnxruntime_genai as og

        self.og = og
        cfg = og.Config(str(self.dir))
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": self.threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(cfg)

    def generate(self, ids, n):
        og = self.og
        params = og.GeneratorParams(self.model)
        total = ids.shape[1] + n
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        t0 = time.perf_counter()
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids.astype(np.int32))
        stamps, tokens = [], []
        while not gen.is_done() and len(tokens) < n:
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
            stamps.append(time.perf_counter())
        wall = (time.perf_counter() - t0) * 1e3
        del gen
        if len(tokens) != n:
            raise RuntimeError(f"{self.key}: generated {len(tokens)} tokens, expected {n}")
        steps = tuple((b - a) * 1e3 for a, b in zip(stamps, stamps[1:]))
        return RunTiming((stamps[0] - t0) * 1e3, steps, wall, n), tokens

    def close(self) -> None:
        del self.model

    def size_bytes(self):
        return dir_bytes(self.dir, (".onnx", ".onnx.data", ".data"))

    def weight_bytes_per_token(self):
        return weight_bytes([self.dir / "model.onnx"])
