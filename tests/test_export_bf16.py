"""Half-precision, sharded checkpoints export exactly like their float32 twin; the weight store releases what it wrote.

The twin holds the same values (bf16 rounded, stored as float32 in one file), so both artifacts must hold
byte-identical weights, pass validation against PyTorch, match transformers' own bf16 load on the logits and
generate the same greedy tokens.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.export.onnx_builder import INLINE_LIMIT, WeightStore
from shadow_edge.runtime import ShadowRuntime

BASE_W = "model.safetensors"


def _twins(src, tmp, dtype):
    """(float32 single-file twin, `dtype` checkpoint in two shards + index) of the base at `src`."""
    tensors = {k: v.to(dtype) for k, v in load_file(str(src / BASE_W)).items()}
    fp32, half = tmp / "fp32", tmp / "half"
    for d in (fp32, half):
        shutil.copytree(src, d, ignore=shutil.ignore_patterns(BASE_W))
    save_file({k: v.float() for k, v in tensors.items()}, str(fp32 / BASE_W), metadata={"format": "pt"})
    keys = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, str(half / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (half / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return fp32, half


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sharded_half_checkpoint_exports_like_its_float32_twin(tiny_default, tmp_path, dtype):
    from transformers import AutoModelForCausalLM

    fp32, half = _twins(tiny_default.base_dir, tmp_path, dtype)
    arts = {}
    for name, base in (("fp32", fp32), ("half", half)):
        arts[name] = tmp_path / f"art_{name}"
        m = export_artifact(base, tiny_default.adapter_dir, arts[name], options=ExportOptions(plain_backbone=True),
                            progress=lambda msg: None)
        assert m.validation["passed"] is True
        assert max(r["max_abs_err"] for r in m.validation["outputs"].values()) <= 1e-4
    data = sorted(p.name for p in arts["fp32"].glob("*.onnx.data"))
    assert data and data == sorted(p.name for p in arts["half"].glob("*.onnx.data"))
    for f in data:
        assert (arts["fp32"] / f).read_bytes() == (arts["half"] / f).read_bytes(), f

    ids = [[3, 17, 42, 99, 7, 250]]
    rts = {k: ShadowRuntime.load(a, threads=1) for k, a in arts.items()}
    oracle = AutoModelForCausalLM.from_pretrained(half, torch_dtype=torch.float32).eval()  # transformers' own read
    with torch.no_grad():
        ref = oracle(torch.tensor(ids)).logits.numpy()  # [1, 6, vocab]
    np.testing.assert_allclose(rts["half"].forward(ids, mode="base_plain"), ref, atol=1e-4, rtol=0)
    for mode in ("base_shadow", "shadow_only"):
        np.testing.assert_allclose(rts["half"].forward(ids, mode=mode), rts["fp32"].forward(ids, mode=mode),
                                   atol=1e-5, rtol=0)
        tokens = {k: rt.generate(ids[0], mode=mode, max_new_tokens=12).token_ids for k, rt in rts.items()}
        assert tokens["half"] == tokens["fp32"], mode


def test_weight_store_releases_written_weights(tmp_path):
    store = WeightStore()
    big = np.arange(4096, dtype=np.float32).reshape(64, 64)  # [64, 64]: 16 KiB, external
    store.add("big", "shadow", lambda: big)
    store.add("same_bytes", "backbone", lambda: big.copy())
    store.add("small", "shadow", lambda: np.ones(4, np.float32))
    store.write(tmp_path, ["shadow", "backbone"])
    assert set(store.arrays) == {"small"} and all(a.nbytes < INLINE_LIMIT for a in store.arrays.values())
    assert store.meta["big"] == (np.dtype(np.float32), (64, 64))
    assert store.location["same_bytes"] == store.location["big"] == ("shadow.onnx.data", 0, big.nbytes)
    assert (tmp_path / "shadow.onnx.data").read_bytes() == big.tobytes()
    with pytest.raises(ValueError, match="after the weights were written"):
        store.add("late", "shadow", lambda: big)
