"""The I/O tables of every exported graph, generated in one place (standard library only).

The exporter names graph inputs/outputs from these tables, the validator feeds them, the
manifest records them, and the runtime checks its sessions against them.

Graphs (the partition is recorded in the manifest under `graphs` and `modes`):
  shadow          input_ids, attention_mask, position_ids, past (shadow layers)
                  -> shadow_hidden_states, present                (no vocabulary projection)
  backbone        input_ids, attention_mask, position_ids, shadow_hidden_states, past (base layers)
                  -> hidden_states (final-normed), present         (injection + update inside)
  backbone_plain  the same without shadow_hidden_states and without the adapter (benchmarks only)
  lm_head         hidden_states [b, n, d] -> logits [b, n, vocab]  (n = positions asked for)
  shadow_lm_head  as lm_head; exported only when the shadow head differs from lm_head
Dims are named: batch, seq (new tokens), past_seq, total_seq (= past_seq + seq), n_pos.

KV semantics: with an exactly sized past, `present` is concat(past, new) (optimum's
convention; the exporter's validation runs this way). The runtime instead binds each
`past_key_values.*` and its `present.*` to one preallocated buffer [batch, kv_heads,
capacity, head_dim]; GroupQueryAttention then reads the first total_seq - seq positions
(attention_mask's length says how many) and writes the new ones in place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

FLOAT, INT64 = "float32", "int64"

GRAPH_SHADOW = "shadow"
GRAPH_BACKBONE = "backbone"
GRAPH_BACKBONE_PLAIN = "backbone_plain"
GRAPH_LM_HEAD = "lm_head"
GRAPH_SHADOW_LM_HEAD = "shadow_lm_head"

SHADOW_HIDDEN = "shadow_hidden_states"
HIDDEN = "hidden_states"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # ints and dim names (str)

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


def kv_specs(num_layers: int, kv_heads: int, head_dim: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """past inputs and present outputs, [batch, kv_heads, *_seq, head_dim], key then value per layer."""
    past, present = [], []
    for i in range(num_layers):
        for kind in ("key", "value"):
            past.append(TensorSpec(past_name(i, kind), FLOAT, ("batch", kv_heads, "past_seq", head_dim)))
            present.append(TensorSpec(present_name(i, kind), FLOAT, ("batch", kv_heads, "total_seq", head_dim)))
    return past, present


def step_inputs() -> list[TensorSpec]:
    """input_ids, attention_mask, position_ids: the inputs every KV-cached graph starts with."""
    return [TensorSpec("input_ids", INT64, ("batch", "seq")),
            TensorSpec("attention_mask", INT64, ("batch", "total_seq")),
            TensorSpec("position_ids", INT64, ("batch", "seq"))]


def decoder_graph_io(role: str, num_layers: int, kv_heads: int, head_dim: int, hidden: int,
                     ) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a KV-cached graph: `shadow`, `backbone` or `backbone_plain`."""
    past, present = kv_specs(num_layers, kv_heads, head_dim)
    inputs = step_inputs()
    if role == GRAPH_BACKBONE:
        inputs.append(TensorSpec(SHADOW_HIDDEN, FLOAT, ("batch", "seq", hidden)))
    out_name = SHADOW_HIDDEN if role == GRAPH_SHADOW else HIDDEN
    outputs = [TensorSpec(out_name, FLOAT, ("batch", "seq", hidden))]
    return inputs + past, outputs + present


def head_graph_io(hidden: int, vocab: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return ([TensorSpec(HIDDEN, FLOAT, ("batch", "n_pos", hidden))],
            [TensorSpec("logits", FLOAT, ("batch", "n_pos", vocab))])
