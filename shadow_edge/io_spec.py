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

KV semantics (one convention for every attention kind): the runtime binds each
`past_key_values.*` input and its `present.*` output to one preallocated buffer [batch,
kv_heads, capacity, head_dim] with capacity >= total_seq; the graph reads the first
total_seq - seq positions (attention_mask's length says how many) and writes the new ones
in place. (GroupQueryAttention graphs also accept an exactly sized past and then return
concat(past, new), optimum's convention; ONNX Attention graphs need the capacity.)
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

# Roles of a mode's graphs, in the order a step runs them; the KV-cached ones own a KV stack each.
ROLE_SHADOW, ROLE_BACKBONE, ROLE_HEAD = "shadow", "backbone", "head"
ROLES = (ROLE_SHADOW, ROLE_BACKBONE, ROLE_HEAD)
KV_ROLES = (ROLE_SHADOW, ROLE_BACKBONE)

# Modes backed by a graph chain (manifest `modes`: mode -> role -> graph).
MODE_SHADOW_ONLY = "shadow_only"  # the detached shadow and its head
MODE_BASE_SHADOW = "base_shadow"  # shadow and backbone (injection + update) and lm_head
MODE_BASE_PLAIN = "base_plain"  # the backbone without the adapter (exported with plain_backbone; benchmarks)
GRAPH_MODES = (MODE_SHADOW_ONLY, MODE_BASE_SHADOW)
BENCH_MODES = (MODE_BASE_PLAIN,)

# Attention kinds of a KV-cached graph, chosen per graph at export and recorded in its manifest entry.
ATTENTION_GQA = "GroupQueryAttention"  # onnxruntime contrib op (fused); needs head_dim % 8 == 0
ATTENTION_ONNX = "Attention"  # ONNX opset 24 TensorScatter + Attention; any head_dim
ATTENTION_KINDS = (ATTENTION_GQA, ATTENTION_ONNX)
ATTENTION_AUTO = "auto"  # export: GroupQueryAttention where its constraints hold, else Attention


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


def mode_map(shadow_head: str, plain_backbone: bool) -> dict[str, dict[str, str]]:
    """mode -> role -> graph for an artifact whose shadow head graph is `shadow_head`."""
    modes = {MODE_SHADOW_ONLY: {ROLE_SHADOW: GRAPH_SHADOW, ROLE_HEAD: shadow_head},
             MODE_BASE_SHADOW: {ROLE_SHADOW: GRAPH_SHADOW, ROLE_BACKBONE: GRAPH_BACKBONE, ROLE_HEAD: GRAPH_LM_HEAD}}
    if plain_backbone:
        modes[MODE_BASE_PLAIN] = {ROLE_BACKBONE: GRAPH_BACKBONE_PLAIN, ROLE_HEAD: GRAPH_LM_HEAD}
    return modes


def head_graph_io(hidden: int, vocab: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return ([TensorSpec(HIDDEN, FLOAT, ("batch", "n_pos", hidden))],
            [TensorSpec("logits", FLOAT, ("batch", "n_pos", vocab))])
