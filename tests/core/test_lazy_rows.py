"""A streamed reference reads only the vocabulary rows it uses: embedding rows and the head in row blocks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from shadow_edge.core.lazy_tensor import LazyTensor, LazyValues, embedding, linear, rows
from shadow_edge.errors import CheckpointError
from shadow_edge.export.quantize import Dequantized


@pytest.fixture
def table(tmp_path):
    """A [1000, 64] bf16 checkpoint tensor, lazy, and its float32 values."""
    values = torch.randn(1000, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    save_file({"embed": values}, str(tmp_path / "m.safetensors"))
    return LazyTensor(tmp_path / "m.safetensors", "embed", (1000, 64), "BF16"), values.float()


@pytest.mark.parametrize("quantized", [False, True])
def test_rows_embedding_and_linear_equal_the_dense_math_without_loading_the_table(table, quantized, monkeypatch):
    lazy, dense_values = table
    if quantized:
        lazy = Dequantized(lazy, 4, 32)
        dense_values = lazy.load()
    ids = torch.tensor([[5, 999, 5, 0], [17, 3, 3, 998]])  # [b, t]
    x = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(1))  # [b, t, d]
    bias = torch.randn(1000)
    expect_embed = torch.nn.functional.embedding(ids, dense_values)
    expect_logits = torch.nn.functional.linear(x, dense_values, bias)
    monkeypatch.setattr(type(lazy), "load", lambda self: (_ for _ in ()).throw(AssertionError("loaded whole")))
    assert torch.equal(embedding(ids, lazy), expect_embed)  # [2, 4, 64]
    got = linear(x, lazy, bias, chunk=300)  # 4 blocks, the last one short
    assert got.shape == (2, 4, 1000)
    torch.testing.assert_close(got, expect_logits, rtol=0, atol=1e-5)
    assert torch.equal(rows(lazy, slice(990, 1000)), dense_values[990:])


def test_plain_tensors_pass_through(table):
    _, values = table
    ids = torch.tensor([1, 2])
    assert torch.equal(embedding(ids, values), values[ids])
    assert torch.equal(linear(torch.ones(3, 64), values), torch.ones(3, 64) @ values.T)
    assert not isinstance(values, LazyValues)


def test_a_non_finite_row_read_is_refused_and_named(tmp_path):
    values = torch.zeros(64, 32)
    values[40, 3] = float("nan")
    save_file({"w": values}, str(tmp_path / "m.safetensors"))
    lazy = LazyTensor(tmp_path / "m.safetensors", "w", (64, 32), "F32")
    assert torch.equal(lazy.rows(torch.tensor([1, 2])), torch.zeros(2, 32))
    with pytest.raises(CheckpointError, match="'w' holds 1 NaN/Inf"):
        linear(torch.ones(1, 32), lazy, chunk=16)


@pytest.mark.parametrize("bits", [4, 8])
def test_dequantized_rows_equal_the_packed_round_trip_to_the_bit(bits, monkeypatch):
    """The reference's fast path (no packing) computes exactly what the kernels read back from the artifact."""
    from shadow_edge.export.quantize import dequantized_rows, quantize_rows

    w = 3 * torch.randn(45, 96, generator=torch.Generator().manual_seed(2))  # [45, 96]
    w[7, :32] = 0  # an all-zero block (scale 1)
    w[8, 40] = 1e4  # one outlier dominating its block
    monkeypatch.setattr("shadow_edge.export.quantize.ROWS_PER_CHUNK", 16)  # 3 chunks, the last one short
    assert torch.equal(dequantized_rows(w, bits, 32), quantize_rows(w, bits, 32).dequantize())
    assert torch.equal(Dequantized(w, bits, 32).rows(torch.tensor([8, 7, 44])),
                       quantize_rows(w, bits, 32).dequantize()[[8, 7, 44]])
