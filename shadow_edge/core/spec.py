"""The internal, validated description of a ShadowPEFT model: dims, weights, math constants.

Every checkpoint reader (shadow-peft, HF PEFT) produces a `ShadowModelSpec`; its `variant`
says what injection and update compute (core/variants.py);
the PyTorch model, the ONNX builder and the validator consume only this.
Weights are in the PyTorch `nn.Linear` layout [out, in]: float32 torch tensors, or `LazyTensor`s
(core/lazy_tensor.py: a checkpoint tensor read on use; `dense(t)` gives its float32 values) for the base
model's weights, so that the whole model is never held in memory. Shape checks read headers only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from shadow_edge.core.arch import DecoderConfig
from shadow_edge.core.classifier import ClassifierHeads
from shadow_edge.core.lazy_tensor import LazyValues
from shadow_edge.core.variants import SHADOW_PEFT, AdapterVariant
from shadow_edge.errors import MismatchError

# Per-layer tensor names of a decoder layer (canonical, reader-independent); which ones a layer has is its recipe's.
ATTN_TENSORS = ("q.weight", "k.weight", "v.weight", "o.weight")
MLP_TENSORS = ("gate.weight", "up.weight", "down.weight")
INPUT_NORM_TENSORS = ("input_norm.weight", "post_norm.weight")  # before attention, before the MLP
OUTPUT_NORM_TENSORS = ("attn_out_norm.weight", "mlp_out_norm.weight")  # on the attention output, on the MLP output
LAYER_TENSORS = ATTN_TENSORS + MLP_TENSORS + INPUT_NORM_TENSORS  # a Llama layer
QK_NORM_TENSORS = ("q_norm.weight", "k_norm.weight")
QKV_BIAS_TENSORS = ("q.bias", "k.bias", "v.bias")
MLP_BIAS_TENSORS = ("gate.bias", "up.bias", "down.bias")


def layer_tensor_names(cfg: DecoderConfig) -> tuple[str, ...]:
    names = ATTN_TENSORS + MLP_TENSORS
    if cfg.has_input_norm:
        names += INPUT_NORM_TENSORS
    if cfg.has_output_norms:
        names += OUTPUT_NORM_TENSORS
    if cfg.qk_norm:
        names += QK_NORM_TENSORS
    if cfg.qkv_bias:
        names += QKV_BIAS_TENSORS
    if cfg.o_bias:
        names += ("o.bias",)
    if cfg.mlp_bias:
        names += MLP_BIAS_TENSORS
    return names


def expected_layer_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    d, q, kv, i = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    per_head = cfg.qk_norm_span == "head"
    shapes = {
        "q.weight": (q, d), "k.weight": (kv, d), "v.weight": (kv, d), "o.weight": (d, q),
        "gate.weight": (i, d), "up.weight": (i, d), "down.weight": (d, i),
        "input_norm.weight": (d,), "post_norm.weight": (d,), "attn_out_norm.weight": (d,), "mlp_out_norm.weight": (d,),
        "q_norm.weight": (cfg.head_dim,) if per_head else (q,), "k_norm.weight": (cfg.head_dim,) if per_head else (kv,),
        "q.bias": (q,), "k.bias": (kv,), "v.bias": (kv,), "o.bias": (d,),
        "gate.bias": (i,), "up.bias": (i,), "down.bias": (d,),
    }
    return {n: shapes[n] for n in layer_tensor_names(cfg)}


@dataclass
class DecoderWeights:
    """A decoder stack: `layers[i][name]`, the final norm, and (optionally) its own embeddings."""

    config: DecoderConfig
    layers: list[dict[str, torch.Tensor]]
    norm: torch.Tensor  # [hidden]
    embed: torch.Tensor | None = None  # [vocab, hidden]; None = uses the base embeddings


@dataclass
class ShadowModelSpec:
    """A base backbone plus a ShadowPEFT adapter, ready for the PyTorch model and the exporter."""

    base: DecoderWeights  # base.embed is always set
    lm_head: torch.Tensor | None  # [vocab, hidden]; the same object as base.embed when tied; None: classifier
    shadow: DecoderWeights  # shadow.embed None = implicit (shares the base embeddings)
    shadow_lm_head: torch.Tensor | None  # [vocab, hidden]; the same object as lm_head unless trained separately
    projection: torch.Tensor | None  # [hidden, shadow_hidden]; None = identity
    injection_down: torch.Tensor  # [n, hidden, k]  n adapted blocks, see `adapted_range`
    injection_up: torch.Tensor  # [n, k, hidden]
    alpha: float
    gate_in: torch.Tensor  # [n, g, hidden]  update gate G: Linear(d, g) -> act -> Linear(g, d) -> sigmoid
    gate_out: torch.Tensor  # [n, hidden, g]
    transform_in: torch.Tensor  # [n, g, hidden]  update transform T: Linear(d, g) -> act -> Linear(g, d)
    transform_out: torch.Tensor  # [n, hidden, g]
    update_norm_weight: torch.Tensor | None = None  # [hidden]  iff variant.update_norm (shared by all blocks)
    update_norm_bias: torch.Tensor | None = None  # [hidden]
    update_norm_eps: float = 1e-5
    gate_in_bias: torch.Tensor | None = None  # [n, g]  iff variant.update_bias
    gate_out_bias: torch.Tensor | None = None  # [n, hidden]
    transform_in_bias: torch.Tensor | None = None  # [n, g]
    transform_out_bias: torch.Tensor | None = None  # [n, hidden]
    variant: AdapterVariant = SHADOW_PEFT  # what injection and update compute (core/variants.py)
    first_adapted_layer: int = 1  # base block of injection_down[0]; blocks first..first+n-1 are adapted
    classifier: ClassifierHeads | None = None  # sequence classification: label heads replace the LM heads
    source: dict = field(default_factory=dict)  # format, files and sha256s, for the manifest

    @property
    def hidden_size(self) -> int:
        return self.base.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.base.config.vocab_size

    @property
    def adapted_layers(self) -> int:
        return int(self.injection_down.shape[0])

    @property
    def adapted_range(self) -> range:
        """Base block indices that get injection before and an update after them."""
        return range(self.first_adapted_layer, self.first_adapted_layer + self.adapted_layers)

    @property
    def shadow_embed(self) -> torch.Tensor:
        return self.base.embed if self.shadow.embed is None else self.shadow.embed

    def loaded(self) -> "ShadowModelSpec":
        """This spec with every lazy weight read once into float32 (what full validation holds beside its
        sessions, rather than reading or dequantizing each weight again on every forward); shared tensors stay
        shared."""
        done: dict[int, torch.Tensor] = {}

        def load(t):
            if isinstance(t, LazyValues) and id(t) not in done:
                done[id(t)] = t.load()
            return done.get(id(t), t) if isinstance(t, LazyValues) else t

        def stack(w: DecoderWeights) -> DecoderWeights:
            return replace(w, layers=[{k: load(v) for k, v in layer.items()} for layer in w.layers],
                           norm=load(w.norm), embed=load(w.embed))

        return replace(self, base=stack(self.base), shadow=stack(self.shadow), lm_head=load(self.lm_head),
                       shadow_lm_head=load(self.shadow_lm_head), projection=load(self.projection))

    def validate(self) -> None:
        """Check every cross-tensor shape once, so no consumer meets a silent broadcast."""
        d, v, n = self.hidden_size, self.vocab_size, self.adapted_layers
        ds = self.shadow.config.hidden_size
        k, g = self.injection_down.shape[-1], self.gate_in.shape[1]
        expect = {
            "base.embed": (self.base.embed, (v, d)),
            "base.norm": (self.base.norm, (d,)),
            "shadow.norm": (self.shadow.norm, (ds,)),
            "injection_down": (self.injection_down, (n, d, k)),
            "injection_up": (self.injection_up, (n, k, d)),
            "gate_in": (self.gate_in, (n, g, d)),
            "gate_out": (self.gate_out, (n, d, g)),
            "transform_in": (self.transform_in, (n, g, d)),
            "transform_out": (self.transform_out, (n, d, g)),
        }
        self._validate_variant_parts(expect)
        if self.classifier is not None:
            self.classifier.validate(d)
        else:
            for name in ("lm_head", "shadow_lm_head"):
                if getattr(self, name) is None:
                    raise MismatchError(f"tensor {name}: missing; a causal-LM adapter needs the base's lm_head")
                expect[name] = (getattr(self, name), (v, d))
        if self.shadow.embed is not None:
            expect["shadow.embed"] = (self.shadow.embed, (self.shadow.config.vocab_size, ds))
        if self.projection is not None:
            expect["projection"] = (self.projection, (d, ds))
        elif ds != d:
            raise MismatchError(
                f"shadow hidden size {ds} != base hidden size {d} and the adapter has no "
                "shadow_hidden_projection.weight; export the adapter with its trained projection")
        for label, part in (("base", self.base), ("shadow", self.shadow)):  # distinct keys: both have layer 0
            shapes = expected_layer_shapes(part.config)
            if len(part.layers) != part.config.num_layers:
                raise MismatchError(f"{label} {part.config.model_type}: {len(part.layers)} layers, config says "
                                    f"{part.config.num_layers}")
            for i, layer in enumerate(part.layers):
                for name, shape in shapes.items():
                    expect[f"{label}.layers.{i}.{name}"] = (layer[name], shape)
        if not 0 <= self.first_adapted_layer <= self.base.config.num_layers - n:
            raise MismatchError(f"adapted blocks {self.first_adapted_layer}..{self.first_adapted_layer + n - 1} do "
                                f"not fit a base of {self.base.config.num_layers} layers")
        for name, (tensor, shape) in expect.items():
            if tuple(tensor.shape) != tuple(shape):
                raise MismatchError(f"tensor {name}: shape {tuple(tensor.shape)}, expected {tuple(shape)} from the "
                                    "config; the weights do not match their config.json (or the adapter's base)")

    def _validate_variant_parts(self, expect: dict) -> None:
        """The optional update parts exist exactly when the variant declares them; add their shapes."""
        d, n, g = self.hidden_size, self.adapted_layers, self.gate_in.shape[1]
        parts = {
            "update_norm": ({"update_norm_weight": (d,), "update_norm_bias": (d,)}, self.variant.update_norm),
            "update_bias": ({"gate_in_bias": (n, g), "gate_out_bias": (n, d), "transform_in_bias": (n, g),
                             "transform_out_bias": (n, d)}, self.variant.update_bias),
        }
        for flag, (shapes, declared) in parts.items():
            for name, shape in shapes.items():
                tensor = getattr(self, name)
                if (tensor is not None) != declared:
                    raise MismatchError(f"tensor {name}: {'missing' if declared else 'present'}, but adapter "
                                        f"variant {self.variant.name!r} has {flag}={declared}")
                if declared:
                    expect[name] = (tensor, shape)
