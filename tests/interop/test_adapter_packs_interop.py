"""A base artifact (`--as-base`) is still an ordinary artifact for onnxruntime-genai and optimum: its single graphs,
whose adapter weights are overridable initializers (extra optional graph inputs), give the base adapter's greedy
tokens there. And a pack's file is onnxruntime's adapter format keyed by those inputs, so genai's own multi-LoRA
API (`og.Adapters`, `set_active_adapter`) runs packs on the single graphs with shadow-edge's tokens.

The int4 case is exported with `--quant-compute float32`: the tools feed (or leave at their default) the
overridable weights, which onnxruntime does not prepack, while shadow-edge runs the shadow with its
weights constant (runtime/pack_sessions.py), as a full artifact does; the int4 kernels compute alike
only with float32 compute (int8 compute: prepacked kernels quantize the activations, within tolerance)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnxruntime as ort
import onnxruntime_genai as og
import pytest
from shadow_peft import ShadowConfig

from pack_fixtures import random_adapter
from shadow_edge.adapter_pack import PARAMS_FILE
from shadow_edge.core.tiny import SHADOW_CONFIG
from shadow_edge.export import ExportOptions, export_artifact, export_pack
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime
from tests.interop.test_interop import (DETACHED_FILE, MODES, NEW, PROMPTS, ROOT, genai_greedy, genai_model,  # noqa: F401
                          optimum_python, reference, until_eos)


@pytest.mark.integration
def test_base_artifacts_and_packs_run_in_genai_and_optimum(tiny_default, tmp_path, optimum_python):
    jobs, want = [], []
    for quantize in ("none", "int4"):
        art, rt, ids = base_artifact_and_pack(tiny_default, tmp_path / quantize, quantize)
        for file, mode in MODES.items():
            expected = reference(rt, ids, mode)
            assert genai_greedy(art, file, ids, rt.eos_ids) == expected, (quantize, file)
            jobs.append((str(art), None if file == DETACHED_FILE else file, ids))
            want.append(expected)
        # the pack in genai: its file as is on the combined graph; its shadow weights alone on the detached one
        shadow_only = tmp_path / quantize / "shadow_only.onnx_adapter"
        shadow_weights(tmp_path / quantize / "pack" / PARAMS_FILE, shadow_only,
                       rt.manifest.adapter_slots["params"]["shadow"])
        for file, mode, adapter_file in ((DETACHED_FILE, "shadow_only", shadow_only),
                                         ("model_combined.onnx", "base_shadow", tmp_path / quantize / "pack" / PARAMS_FILE)):
            expected = until_eos(rt.generate(ids[:1], mode=mode, adapter="other", max_new_tokens=NEW).token_ids[0],
                                 rt.eos_ids)
            assert genai_with_adapter(art, file, adapter_file, ids[0], rt.eos_ids) == expected, (quantize, file)
            assert expected != reference(rt, ids[:1], mode)[0]  # the pack changes the answer
    done = subprocess.run([optimum_python, str(ROOT / "tests" / "interop" / "optimum_greedy.py"), str(NEW), json.dumps(jobs)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert [[until_eos(r, rt.eos_ids) for r in rows] for rows in got] == want


def base_artifact_and_pack(tiny_default, root, quantize: str):
    """(base artifact, its runtime with the pack "other" loaded, the prompts' ids)."""
    art, pack = root / "base_art", root / "pack"
    export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, art,
                    options=ExportOptions(as_base=True, quantize=quantize, validate=False, quant_compute="float32"),
                    progress=lambda m: None)
    m = read_manifest(art)
    assert m.adapter_slots["params"] and all(m.interop[k]["file"] for k in ("detached", "combined"))
    other = random_adapter(tiny_default.base_dir, root / "other", 9, ShadowConfig(**SHADOW_CONFIG))
    export_pack(tiny_default.base_dir, other, pack, art, progress=lambda m: None)
    rt = ShadowRuntime.load(art, threads=1, adapters={"other": pack})
    return art, rt, [rt.codec.encode(p) for p in PROMPTS]


def shadow_weights(pack_file, out, keys) -> None:
    """The snippet of docs/adapter-packs.md: an adapter file with only the detached shadow's weights of a pack."""
    params = ort.AdapterFormat.read_adapter(str(pack_file)).get_parameters()
    fmt = ort.AdapterFormat()
    fmt.set_parameters({k: params[k] for k in keys})
    fmt.export_adapter(str(out))


def genai_with_adapter(art, file: str, adapter_file, prompt: list[int], eos) -> list[int]:
    model = genai_model(art, file)
    adapters = og.Adapters(model)
    adapters.load(str(adapter_file), "other")
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + NEW, do_sample=False)
    gen = og.Generator(model, params)
    gen.set_active_adapter(adapters, "other")
    gen.append_tokens(np.array([prompt], np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    return until_eos(gen.get_sequence(0)[len(prompt):], eos)
