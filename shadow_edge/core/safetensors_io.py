"""Reading checkpoint files safely: safetensors only (pickles are refused, never opened) and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from shadow_edge.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is missing; point the option at the directory that contains it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e}); re-save the checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object, found {type(data).__name__}")
    return data


def refuse_pickles(directory: Path, stem: str) -> None:
    """Raise a clear error when only a pickle-based weights file exists (we never unpickle)."""
    found = [p.name for p in sorted(directory.glob(f"{stem}*")) if p.suffix in PICKLE_SUFFIXES]
    if found:
        raise CheckpointError(
            f"{directory / found[0]}: pickle-based checkpoints are refused (loading them can run arbitrary "
            "code); convert to safetensors first, e.g. `safetensors.torch.save_file(torch.load(f), "
            f"'{stem}.safetensors')` in a trusted environment")


def load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file as float32 (integer tensors are kept as they are)."""
    if not path.is_file():
        refuse_pickles(path.parent, path.stem)
        raise CheckpointError(f"{path}: {what} is missing; expected a .safetensors file there")
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: cannot read {what} ({e}); the file is corrupt or not safetensors") from None
    return {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}


def load_hf_weights(directory: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """Weights of a HF model directory (single file or sharded index); returns tensors and files read."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return load_safetensors(single, "model weights"), [single]
    if index.is_file():
        shards = sorted(set(read_json(index, "weights index").get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{index}: `weight_map` is empty; re-save the model with save_pretrained")
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_safetensors(directory / shard, "weights shard"))
        return tensors, [directory / s for s in shards]
    refuse_pickles(directory, "pytorch_model")
    raise CheckpointError(f"{directory}: no model.safetensors (or sharded index) found; "
                          "save the model with `save_pretrained(..., safe_serialization=True)`")

