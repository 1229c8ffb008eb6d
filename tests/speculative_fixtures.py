"""A tiny model whose shadow and combined model agree on part of the drafts (speculative decoding tests).

The random factory models make the shadow and the combined model disagree almost always
(the drafts are rejected), so this variant of the tiny default model scales every residual
write of the base and shadow layers (o_proj, down_proj, injection) by 0.1 and sets the
shadow's norms to 1: both predict mostly from the current token's embedding and agree on
roughly a third to a half of the drafts, while attention still makes every prediction
depend on the context.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from runtime_fixtures import export_once, runtime_once


@pytest.fixture(scope="session")
def agreeing_rt(tiny_default, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("agreeing")
    base, adapter = root / "base", root / "adapter"
    shutil.copytree(tiny_default.base_dir, base)
    shutil.copytree(tiny_default.adapter_dir, adapter)
    for path in (base / "model.safetensors", adapter / "shadow_adapter.safetensors"):
        tensors = load_file(path)
        for name, t in tensors.items():
            if name.endswith(("o_proj.weight", "down_proj.weight", "injection_ups")):
                tensors[name] = t * 0.1
            elif name.startswith("shadow_model.") and name.endswith("norm.weight"):
                tensors[name] = torch.ones_like(t)
        save_file(tensors, path, metadata={"format": "pt"})
    art = export_once("tiny_agreeing", root, base, adapter)
    return runtime_once("tiny_agreeing", art)
