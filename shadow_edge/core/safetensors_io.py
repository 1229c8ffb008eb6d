"""Reading checkpoint files safely: safetensors only (pickles are refused, never opened) and JSON.

Model weights are opened lazily (`open_safetensors`, `load_hf_weights`: headers only, values memory-mapped
on use, core/lazy_tensor.py); small files (adapters) are loaded whole as float32 (`load_safetensors`).

Every file is read only if it resolves inside the directory it was given in; the one symlink
layout that may point elsewhere is the Hugging Face cache's (`snapshots/<rev>/f ->
../../blobs/<sha>`). Weights must be floating point and finite.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from shadow_edge.core.lazy_tensor import LazyTensor
from shadow_edge.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def contained_file(path: Path, root: Path | None = None) -> Path:
    """`path`, after checking that it resolves inside `root` (default: its own directory) or, for a
    Hugging Face cache snapshot, inside that repository's `blobs/`; a symlink elsewhere is refused."""
    root = (path.parent if root is None else root).resolve()
    real = path.resolve()
    allowed = [root] + ([root.parent.parent / "blobs"] if root.parent.name == "snapshots" else [])
    if not any(real == a or a in real.parents for a in allowed):
        raise CheckpointError(f"{path}: resolves to {real}, outside {root}; input files (and symlinks) must stay "
                              "inside the directory given (or point into a Hugging Face cache's blobs/); copy the "
                              "file into the directory instead")
    return path


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is missing; point the option at the directory that contains it")
    contained_file(path)
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


def open_safetensors(path: Path, what: str, root: Path | None = None) -> dict[str, LazyTensor]:
    """The tensors of one .safetensors file, unread: names, shapes and dtypes from its header (see
    core/lazy_tensor.py); integer/bool tensors are refused here, non-finite values when they are loaded."""
    if not path.is_file():
        refuse_pickles(path.parent, path.stem)
        raise CheckpointError(f"{path}: {what} is missing; expected a .safetensors file there")
    contained_file(path, root)
    try:
        with safe_open(str(path), framework="pt") as f:  # the header only
            header = {key: f.get_slice(key) for key in f.keys()}
            return {key: LazyTensor(path, key, tuple(s.get_shape()), s.get_dtype()) for key, s in header.items()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: cannot read {what} ({e}); the file is corrupt or not safetensors") from None


def load_safetensors(path: Path, what: str, root: Path | None = None) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file as float32 (small files: adapters); integer/bool or non-finite
    tensors are refused."""
    return {key: t.load() for key, t in open_safetensors(path, what, root).items()}


def load_hf_weights(directory: Path) -> tuple[dict[str, LazyTensor], list[Path]]:
    """Weights of a HF model directory (single file or sharded index), unread; returns tensors and files."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return open_safetensors(single, "model weights"), [single]
    if index.is_file():
        weight_map = _index_map(index)
        shards = sorted(set(weight_map.values()))
        opened = {s: open_safetensors(directory / s, "weights shard", root=directory) for s in shards}
        return _follow_weight_map(index, weight_map, opened), [directory / s for s in shards]
    refuse_pickles(directory, "pytorch_model")
    raise CheckpointError(f"{directory}: no model.safetensors (or sharded index) found; "
                          "save the model with `save_pretrained(..., safe_serialization=True)`")


def _follow_weight_map(index: Path, weight_map: dict[str, str], opened: dict[str, dict]) -> dict[str, LazyTensor]:
    """Each listed tensor from the shard `weight_map` names (as transformers reads it), so a stray copy of it in
    another shard is never used; a tensor the map does not list is taken from the one shard holding it."""
    tensors: dict[str, LazyTensor] = {}
    for key, shard in weight_map.items():
        if key not in opened[shard]:
            holders = [s for s, t in opened.items() if key in t]
            raise CheckpointError(f"{index}: `weight_map` puts tensor {key!r} in {shard}, which does not hold it"
                                  + (f" ({', '.join(holders)} does)" if holders else "")
                                  + "; the index and its shards disagree, re-save the model with save_pretrained")
        tensors[key] = opened[shard][key]
    unlisted: dict[str, list[str]] = {}
    for shard, held in opened.items():
        for key in held:
            if key not in weight_map:
                unlisted.setdefault(key, []).append(shard)
    for key, holders in unlisted.items():
        if len(holders) > 1:
            raise CheckpointError(f"{index}: tensor {key!r} is in {len(holders)} shards ({', '.join(holders)}) and "
                                  "`weight_map` does not say which copy is meant; re-save the model with "
                                  "save_pretrained")
        tensors[key] = opened[holders[0]][key]
    return tensors


def _index_map(index: Path) -> dict[str, str]:
    """`weight_map` of `model.safetensors.index.json` (tensor -> shard file), checked (plain names inside the
    directory)."""
    weight_map = read_json(index, "weights index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: field `weight_map` is {weight_map!r}; expected a non-empty object "
                              "{tensor name: shard file}; re-save the model with save_pretrained")
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or Path(shard).is_absolute() \
                or ".." in Path(shard).parts:
            raise CheckpointError(f"{index}: `weight_map[{key!r}]` is {shard!r}; expected a .safetensors file name "
                                  "inside the model directory; re-save the model with save_pretrained")
    return weight_map
