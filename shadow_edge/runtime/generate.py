"""The generation verbs `prefill` and `decode_one` over one mode's graph chain (`Pipeline`).

A `Pipeline` is one mode: `shadow` [-> `backbone`] -> head. base_shadow advances two KV
caches together (shadow stack, base stack); shadow_only one. Prefill runs the whole prompt
once and projects only the last position to the vocabulary; each decode step feeds one
token per row plus the caches (a step may also feed several tokens per row: `Pipeline.step`).
Positions and cache lengths are explicit arguments. A decode loop runs its steps through a
`Decoder`, whose buffers and bindings are made once. The loops that use these verbs are
the generation strategies in `runtime/strategies/`.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from shadow_edge.io_spec import ATTENTION_MASK, INPUT_IDS, POSITION_IDS, SHADOW_HIDDEN
from shadow_edge.runtime.kv_cache import KVCache
from shadow_edge.runtime.session import GraphSession, bind_kv, ov


def position_ids(mask: np.ndarray) -> np.ndarray:
    """[b, t] positions counting real tokens only; 1 on left padding (HF convention)."""
    pos = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)


class Pipeline:
    """The graph chain of one mode and its KV stacks."""

    def __init__(self, head: GraphSession, shadow: GraphSession | None = None,
                 backbone: GraphSession | None = None, params: dict[str, dict[str, ort.OrtValue]] | None = None):
        """`params`: graph name -> extra inputs fed on every run (an adapter pack's weights, runtime/adapters.py;
        for the head graph: a classifier pack's label head)."""
        if shadow is None and backbone is None:
            raise ValueError("a pipeline needs a shadow or a backbone graph")
        self.shadow, self.backbone, self.head = shadow, backbone, head
        self.stacks = [g for g in (shadow, backbone) if g is not None]
        self.head_input = head.input_names[0]
        self.params = params or {}

    def empty_caches(self, batch: int, capacity: int) -> list[KVCache]:
        return [KVCache.empty(batch, g.entry.kv_layers, g.entry.kv_heads, g.entry.head_dim, capacity)
                for g in self.stacks]

    def run(self, graph: GraphSession, feed: dict[str, ort.OrtValue], kv: list[ort.OrtValue],
            bound: dict | None = None) -> ort.OrtValue:
        """One KV-cached graph of this chain in place (with this pipeline's extra inputs for it); `bound`: see
        `GraphSession.run_in_place`."""
        return graph.run_in_place(feed, kv, bound, self.params.get(graph.name))

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             caches: list[KVCache], last_only: bool, shadow_states: np.ndarray | None = None,
             keep_shadow: list | None = None) -> np.ndarray:
        """One forward step over t new tokens; the caches advance in place.

        input_ids, position_ids: [b, t] int64; attention_mask: [b, past + t] int64.
        shadow_states: [b, t, d] shadow_hidden_states already computed for these positions, whose
        keys/values the shadow cache already holds: the shadow graph is skipped (cascade reuse).
        keep_shadow: a list that receives the shadow graph's output [b, t, d] (numpy copy).
        Returns logits [b, 1 if last_only else t, vocab] float32.
        """
        t = input_ids.shape[1]
        feed = {"input_ids": ov(input_ids), "attention_mask": ov(attention_mask), "position_ids": ov(position_ids)}
        hidden = None
        for graph, cache in zip(self.stacks, caches):
            if graph is self.shadow and shadow_states is not None:
                hidden = ov(shadow_states)  # [b, t, d]; its keys/values are already in `cache`
                continue
            if hidden is not None:  # the backbone after the shadow: [b, t, d] shadow_hidden_states
                feed[SHADOW_HIDDEN] = hidden
            cache.reserve(cache.length + t)
            hidden = self.run(graph, feed, cache.tensors, cache.bindings)  # [b, t, d]
            cache.length += t
            if graph is self.shadow and keep_shadow is not None:
                keep_shadow.append(hidden.numpy().copy())
        if last_only and t > 1:
            hidden = ov(hidden.numpy()[:, -1:])  # [b, 1, d]: never project every prompt position
        return self.head.run({self.head_input: hidden, **self.params.get(self.head.name, {})})[0].numpy()


def prefill(pipe: Pipeline, input_ids: np.ndarray, attention_mask: np.ndarray, capacity: int = 0,
            caches: list[KVCache] | None = None, **step_options) -> tuple[np.ndarray, list[KVCache], np.ndarray]:
    """Run the prompt once into caches sized for `capacity` positions (grown on demand).

    `caches`: start from these (e.g. a shadow cache that already holds the prompt, with
    `shadow_states=`); `step_options` go to `Pipeline.step`. Returns last-position logits
    [b, V], the caches and the next positions [b].
    """
    pos = position_ids(attention_mask)
    if caches is None:
        caches = pipe.empty_caches(input_ids.shape[0], max(capacity, attention_mask.shape[1]))
    logits = pipe.step(input_ids, attention_mask, pos, caches, True, **step_options)
    return logits[:, -1], caches, pos[:, -1] + 1  # with left padding the last column is real


class Decoder:
    """Decode steps of one token per row through buffers allocated and bound once: a decode loop's steps.

    The step inputs (input_ids, position_ids [b, 1]), the attention mask (a [b, capacity] buffer whose
    first columns are fed), the hidden state passed between graphs [b, 1, d] and the logits [b, 1, V]
    are numpy arrays that onnxruntime reads and writes in place. Each graph's IOBinding is made once
    (its KV pairs again when a cache grows), so a step binds only the mask, whose length changes, and
    allocates nothing. (Binding fresh values every step cost 0.13-0.25 ms per token at the `small` preset:
    benchmarks/RESULTS.md, "Precision table", "Third pass".)
    """

    def __init__(self, pipe: Pipeline, caches: list[KVCache], attention_mask: np.ndarray, positions: np.ndarray):
        """attention_mask: [b, past], the positions the caches hold; positions: [b], the next token's positions."""
        b, past = attention_mask.shape
        self.pipe = pipe
        self.tokens = np.zeros((b, 1), np.int64)
        self.positions = np.array(positions, dtype=np.int64).reshape(b, 1)
        self.mask = np.ones((b, max([past + 1] + [c.capacity for c in caches])), np.int64)
        self.mask[:, :past] = attention_mask
        self.length = past
        # The bound OrtValues (each keeps its array alive) are kept here for as long as the bindings: a binding
        # itself holds a view of the buffer (onnxruntime 1.32's IOBinding also keeps them; this does not rely on it).
        step = {INPUT_IDS: ov(self.tokens), POSITION_IDS: ov(self.positions)}
        self.buffers = list(step.values())
        self.stacks, previous = [], {}  # [graph, cache, IOBinding, the KV tensors it has bound]
        for graph, cache in zip(pipe.stacks, caches):
            out = ov(np.zeros((b, 1, graph.contract.outputs[0].shape[-1]), np.float32))
            io = graph.bind({**step, **previous, **pipe.params.get(graph.name, {})}, {graph.main_output: out})
            self.stacks.append([graph, cache, io, None])
            self.buffers.append(out)
            previous = {SHADOW_HIDDEN: out}  # the backbone after the shadow reads its output
        head = pipe.head
        self.logits = np.zeros((b, 1, head.contract.outputs[0].shape[-1]), np.float32)
        self.buffers.append(ov(self.logits))
        self.head_io = head.bind({pipe.head_input: out, **pipe.params.get(head.name, {})},
                                 {head.output_names[0]: self.buffers[-1]})

    def step(self, tokens: np.ndarray, new_mask: np.ndarray | int = 1) -> np.ndarray:
        """Feed tokens [b] at the next positions, with attention-mask column `new_mask` (default 1); the caches
        advance in place. Returns logits [b, V]: a view of a buffer that the next step overwrites."""
        self.tokens[:, 0] = tokens
        if self.length == self.mask.shape[1]:
            self.mask = np.concatenate([self.mask, np.ones_like(self.mask)], axis=1)
        self.mask[:, self.length] = new_mask
        self.length += 1
        mask = ov(self.mask[:, : self.length])  # no copy for one row; a [b, length] copy otherwise
        for entry in self.stacks:
            graph, cache, io, bound = entry
            cache.reserve(cache.length + 1)
            if bound is not cache.tensors:  # first step, or the cache grew: (re)bind its buffers
                bind_kv(io, graph.kv_pairs, cache.tensors)
                entry[3] = cache.tensors
            io.bind_ortvalue_input(ATTENTION_MASK, mask)
            graph.run_bound(io)
            cache.length += 1
        self.pipe.head.run_bound(self.head_io)
        self.positions += 1
        return self.logits[:, 0]


def decode_one(pipe: Pipeline, tokens: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray,
               caches: list[KVCache]) -> tuple[np.ndarray, list[KVCache]]:
    """Feed one token per row. tokens, positions: [b]; attention_mask: [b, past + 1]. Returns logits [b, V]
    (a copy; a loop of steps keeps one `Decoder` instead)."""
    logits = Decoder(pipe, caches, attention_mask[:, :-1], positions).step(tokens, attention_mask[:, -1])
    return logits.copy(), caches
