"""The graph contract of an artifact, defined once (standard library only).

Names, dtypes and dims of every graph's I/O, its KV layout and buffer sharing, its role,
and the mode -> role -> graph map. The exporter builds each graph from its `GraphContract`
(export/graphs.py declares the I/O from it), the validator runs the mode map through the
runtime, the manifest records the contracts, the runtime regenerates each contract from the
manifest's dims and checks the manifest and its sessions against it, and `inspect` prints it.

Graphs (the partition is recorded in the manifest under `graphs` and `modes`):
  shadow          input_ids, attention_mask, position_ids, past (shadow layers)
                  -> shadow_hidden_states, present                (no vocabulary projection)
  backbone        input_ids, attention_mask, position_ids, shadow_hidden_states, past (base layers)
                  -> hidden_states (final-normed), present         (injection + update inside)
  backbone_plain  the same without shadow_hidden_states and without the adapter (benchmarks only)
  lm_head         hidden_states [b, n, d] -> logits [b, n, vocab]  (n = positions asked for)
  shadow_lm_head  as lm_head; exported only when the shadow head differs from lm_head
  draft_head      speculative decoding's reduced draft vocabulary (export --draft-vocab N): the shadow's head
                  restricted to N token rows, hidden_states -> logits [b, n, N]; manifest `draft_vocab` names
                  the file of the N token ids (column i of the logits is token ids[i])
  classifier      sequence-classification artifacts (model.task "seq_cls") replace lm_head:
                  hidden_states -> logits [b, n, labels]; shadow_classifier likewise replaces
                  shadow_lm_head
Dims are named: batch, seq (new tokens), past_seq, total_seq (= past_seq + seq), n_pos.

KV (KV_BINDING, one convention for every attention kind): the runtime binds each
`past_key_values.{i}.key|value` input and its `present.{i}.key|value` output to one
preallocated float32 buffer [batch, kv_heads, capacity, head_dim] with capacity >= total_seq;
the graph reads the first total_seq - seq positions (attention_mask's length says how many)
and writes the new ones in place. (GroupQueryAttention graphs also accept an exactly sized
past and then return concat(past, new), optimum's convention; ONNX Attention graphs need the
capacity.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

FLOAT, INT64 = "float32", "int64"

GRAPH_SHADOW = "shadow"
GRAPH_BACKBONE = "backbone"
GRAPH_BACKBONE_PLAIN = "backbone_plain"
GRAPH_LM_HEAD = "lm_head"
GRAPH_SHADOW_LM_HEAD = "shadow_lm_head"
GRAPH_CLASSIFIER = "classifier"  # sequence classification: label head of base_shadow
GRAPH_SHADOW_CLASSIFIER = "shadow_classifier"  # label head of shadow_only, when it differs
GRAPH_DRAFT_HEAD = "draft_head"  # speculative's draft head over a reduced vocabulary (manifest `draft_vocab`)
STEP_DRAFT = "draft"  # manifest `interop.step.draft`: the shadow + draft_head merged draft step (step_draft.onnx)
CLASSIFIER_GRAPHS = (GRAPH_CLASSIFIER, GRAPH_SHADOW_CLASSIFIER)  # logits width: the labels, not the vocabulary

INPUT_IDS, ATTENTION_MASK, POSITION_IDS = "input_ids", "attention_mask", "position_ids"
SHADOW_HIDDEN = "shadow_hidden_states"
HIDDEN = "hidden_states"
LOGITS = "logits"

# Roles of a mode's graphs, in the order a step runs them; the KV-cached ones own a KV stack each.
ROLE_SHADOW, ROLE_BACKBONE, ROLE_HEAD = "shadow", "backbone", "head"
ROLES = (ROLE_SHADOW, ROLE_BACKBONE, ROLE_HEAD)
KV_ROLES = (ROLE_SHADOW, ROLE_BACKBONE)
GRAPH_ROLES = {GRAPH_SHADOW: ROLE_SHADOW, GRAPH_BACKBONE: ROLE_BACKBONE, GRAPH_BACKBONE_PLAIN: ROLE_BACKBONE,
               GRAPH_LM_HEAD: ROLE_HEAD, GRAPH_SHADOW_LM_HEAD: ROLE_HEAD, GRAPH_CLASSIFIER: ROLE_HEAD,
               GRAPH_SHADOW_CLASSIFIER: ROLE_HEAD, GRAPH_DRAFT_HEAD: ROLE_HEAD}

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

KV_BINDING = "shared_buffer"  # past_key_values.{i}.* and present.{i}.* are one preallocated buffer
KV_DTYPE = FLOAT  # the default; an artifact's is its execution target's (target.py)
PAST, PRESENT = "past_key_values", "present"
KV_KINDS = ("key", "value")


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
    return f"{PAST}.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"{PRESENT}.{layer}.{kind}"


def is_kv(name: str) -> bool:
    """Whether an I/O name is a past or present KV tensor."""
    return name.startswith((f"{PAST}.", f"{PRESENT}."))


def kv_pairs(num_layers: int) -> list[tuple[str, str]]:
    """(past input, present output) per layer, key then value: the pairs bound to one buffer each."""
    return [(past_name(i, k), present_name(i, k)) for i in range(num_layers) for k in KV_KINDS]


def kv_specs(num_layers: int, kv_heads: int, head_dim: int, kv_dtype: str = KV_DTYPE,
             ) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """past inputs and present outputs, [batch, kv_heads, *_seq, head_dim], key then value per layer."""
    pairs = kv_pairs(num_layers)
    return ([TensorSpec(p, kv_dtype, ("batch", kv_heads, "past_seq", head_dim)) for p, _ in pairs],
            [TensorSpec(q, kv_dtype, ("batch", kv_heads, "total_seq", head_dim)) for _, q in pairs])


def step_inputs() -> list[TensorSpec]:
    """input_ids, attention_mask, position_ids: the inputs every KV-cached graph starts with."""
    return [TensorSpec(INPUT_IDS, INT64, ("batch", "seq")),
            TensorSpec(ATTENTION_MASK, INT64, ("batch", "total_seq")),
            TensorSpec(POSITION_IDS, INT64, ("batch", "seq"))]


def decoder_graph_io(name: str, num_layers: int, kv_heads: int, head_dim: int, hidden: int,
                     kv_dtype: str = KV_DTYPE) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a KV-cached graph: `shadow`, `backbone` or `backbone_plain`."""
    past, present = kv_specs(num_layers, kv_heads, head_dim, kv_dtype)
    inputs = step_inputs()
    if name == GRAPH_BACKBONE:
        inputs.append(TensorSpec(SHADOW_HIDDEN, FLOAT, ("batch", "seq", hidden)))
    out_name = SHADOW_HIDDEN if name == GRAPH_SHADOW else HIDDEN
    outputs = [TensorSpec(out_name, FLOAT, ("batch", "seq", hidden))]
    return inputs + past, outputs + present


def head_graph_io(hidden: int, vocab: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return ([TensorSpec(HIDDEN, FLOAT, ("batch", "n_pos", hidden))],
            [TensorSpec(LOGITS, FLOAT, ("batch", "n_pos", vocab))])


@dataclass(frozen=True)
class GraphContract:
    """One graph's contract: role, I/O table, KV layout and attention kind (KV graphs)."""

    name: str
    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kv_layers: int = 0  # 0 = no KV cache (head graphs)
    kv_heads: int = 0
    head_dim: int = 0
    attention: str = ""  # KV graphs: one of ATTENTION_KINDS

    @property
    def main_output(self) -> str:
        """The hidden state or logits; present.* follow it."""
        return self.outputs[0].name

    @property
    def kv_pairs(self) -> list[tuple[str, str]]:
        """(past input, present output) names bound to one buffer each, in KV cache order."""
        return kv_pairs(self.kv_layers)


def graph_contract(name: str, hidden: int, vocab: int, kv_layers: int = 0, kv_heads: int = 0, head_dim: int = 0,
                   attention: str = "", num_labels: int = 0, kv_dtype: str = KV_DTYPE, draft_vocab: int = 0,
                   ) -> GraphContract:
    """The contract of graph `name` for these dims (classifier graphs: `num_labels` logits; the draft head:
    `draft_vocab` logits); ValueError names what does not fit."""
    role = GRAPH_ROLES.get(name)
    if role is None:
        raise ValueError(f"graph {name!r} is not one of {', '.join(GRAPH_ROLES)}")
    if role == ROLE_HEAD:
        if kv_layers or attention:
            raise ValueError(f"graph {name!r} is a head graph: it has no KV cache and no attention")
        if name in CLASSIFIER_GRAPHS and num_labels < 1:
            raise ValueError(f"graph {name!r} is a label head: it needs model.num_labels >= 1, got {num_labels}")
        if name == GRAPH_DRAFT_HEAD and not 1 <= draft_vocab <= vocab:
            raise ValueError(f"graph {name!r} needs draft_vocab.size in [1, {vocab}] (model.vocab_size), "
                             f"got {draft_vocab}")
        width = num_labels if name in CLASSIFIER_GRAPHS else draft_vocab if name == GRAPH_DRAFT_HEAD else vocab
        inputs, outputs = head_graph_io(hidden, width)
    else:
        if min(kv_layers, kv_heads, head_dim) < 1:
            raise ValueError(f"graph {name!r} needs kv_layers, kv_heads and head_dim >= 1, got "
                             f"{kv_layers}, {kv_heads}, {head_dim}")
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"graph {name!r} has attention {attention!r}; known: {', '.join(ATTENTION_KINDS)}")
        inputs, outputs = decoder_graph_io(name, kv_layers, kv_heads, head_dim, hidden, kv_dtype)
    return GraphContract(name, role, tuple(inputs), tuple(outputs), kv_layers, kv_heads, head_dim, attention)


def mode_map(shadow_head: str, plain_backbone: bool, head: str = GRAPH_LM_HEAD) -> dict[str, dict[str, str]]:
    """mode -> role -> graph for an artifact whose head graphs are `head` and `shadow_head`."""
    modes = {MODE_SHADOW_ONLY: {ROLE_SHADOW: GRAPH_SHADOW, ROLE_HEAD: shadow_head},
             MODE_BASE_SHADOW: {ROLE_SHADOW: GRAPH_SHADOW, ROLE_BACKBONE: GRAPH_BACKBONE, ROLE_HEAD: head}}
    if plain_backbone:
        modes[MODE_BASE_PLAIN] = {ROLE_BACKBONE: GRAPH_BACKBONE_PLAIN, ROLE_HEAD: head}
    return modes
