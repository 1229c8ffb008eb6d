"""Edits of an exported artifact's float32 weights in place, to prove validation catches them."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx


def edit_initializer(art, graph_file: str, tensor: str, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace the first 16 values v of float32 `tensor` in the artifact by `edit(v)` (external data or inline)."""
    path = art / graph_file
    model = onnx.load(str(path), load_external_data=False)
    init = next(i for i in model.graph.initializer if i.name == tensor)
    assert init.data_type == onnx.TensorProto.FLOAT, f"{tensor} is not float32"
    if init.external_data:
        ext = {e.key: e.value for e in init.external_data}
        with open(art / ext["location"], "r+b") as f:
            f.seek(int(ext["offset"]))
            values = edit(np.frombuffer(f.read(64), np.float32).copy()).astype(np.float32)
            f.seek(int(ext["offset"]))
            f.write(values.tobytes())
        return
    values = onnx.numpy_helper.to_array(init).copy()
    values.reshape(-1)[:16] = edit(values.reshape(-1)[:16].copy())
    init.CopyFrom(onnx.numpy_helper.from_array(values, tensor))
    onnx.save_model(model, str(path))


def corrupt(art, graph_file: str, tensor: str) -> None:
    """Add 1.0 to the first 16 values of `tensor`."""
    edit_initializer(art, graph_file, tensor, lambda v: v + 1.0)


def scale_initializer(art, graph_file: str, tensor: str, factor: float) -> None:
    """Multiply the first 16 values of `tensor` by `factor`."""
    edit_initializer(art, graph_file, tensor, lambda v: v * factor)
