"""Adapter variants: what each trainer's injection and shadow update compute, declared once.

The PyTorch reference (core/model.py) and the ONNX graph builder (export/graphs.py) both read
a `ShadowModelSpec.variant`; neither knows which trainer wrote the checkpoint. Per adapted
base block j (blocks `first_adapted_layer .. first_adapted_layer + n - 1` of the spec):

    h = h + alpha * ((h - s) @ W_down[j]) @ W_up[j]           # injection, before the block
    h = block(h)
    u = LayerNorm(h) if variant.update_norm else h             # one LayerNorm shared by all blocks
    g = sigmoid(G[j](u)); t = T[j](u)                          # G, T: Linear(d, g) -> act -> Linear(g, d)
    s = s + g * (t - s)                                        # == (1 - g) * s + g * t
                                                               # (the last block's update feeds nothing)

with `act = variant.update_activation` and the Linear layers biased iff `variant.update_bias`.
A new trainer format adds one `AdapterVariant` here (or in its reader) and a reader file.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATIONS = ("silu", "gelu")  # gelu = exact (erf) GELU, torch.nn.GELU()'s default


@dataclass(frozen=True)
class AdapterVariant:
    """The math of one trainer's adapter; see the module docstring for the formulas."""

    name: str  # registry key, recorded in the manifest
    update_activation: str  # activation inside the update MLPs G and T: one of ACTIVATIONS
    update_norm: bool  # a LayerNorm over the block output feeds G and T
    update_bias: bool  # G's and T's Linear layers carry biases
    injection_start: str  # where the adapted blocks start (documentation; the reader sets the spec's index)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("AdapterVariant.name must be a non-empty string")
        if self.update_activation not in ACTIVATIONS:
            raise ValueError(f"AdapterVariant {self.name!r}: update_activation must be one of {ACTIVATIONS}, "
                             f"got {self.update_activation!r}")


VARIANTS: dict[str, AdapterVariant] = {}


def register_variant(variant: AdapterVariant) -> AdapterVariant:
    """Add `variant` to `VARIANTS`; a second variant under the same name is a programming error."""
    if variant.name in VARIANTS:
        raise ValueError(f"adapter variant {variant.name!r} is already registered")
    VARIANTS[variant.name] = variant
    return variant


SHADOW_PEFT = register_variant(AdapterVariant(
    name="shadow-peft", update_activation="silu", update_norm=True, update_bias=False,
    injection_start="the second base block (blocks 1..L-1)"))
