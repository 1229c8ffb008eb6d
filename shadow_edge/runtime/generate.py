"""The generation verbs `prefill` and `decode_one` over one mode's graph chain (`Pipeline`).

A `Pipeline` is one mode: `shadow` [-> `backbone`] -> head. base_shadow advances two KV
caches together (shadow stack, base stack); shadow_only one. Prefill runs the whole prompt
once and projects only the last position to the vocabulary; each decode step feeds one
token per row plus the caches (a step may also feed several tokens per row: `Pipeline.step`).
Positions and cache lengths are explicit arguments. A generation keeps one `DecodeState`
(runtime/decode_state.py: prefill, step, verify, rewind, copy rows; buffers and bindings made once);
`prefill` and `decode_one` here are its one-call forms.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from shadow_edge.io_spec import SHADOW_HIDDEN
from shadow_edge.runtime.kv_cache import KVCache
from shadow_edge.runtime.session import GraphSession, ov


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
    """Run the prompt once into caches sized for `capacity` positions (grown on demand), through a `DecodeState`.

    `caches`: start from these (e.g. a shadow cache that already holds the prompt, with
    `shadow_states=`); `step_options` go to `Pipeline.step`. Returns last-position logits
    [b, V], the caches and the next positions [b]. (A loop keeps the `DecodeState` itself.)
    """
    from shadow_edge.runtime.decode_state import DecodeState

    state = DecodeState(pipe, input_ids.shape[0], max(capacity, attention_mask.shape[1]), caches=caches)
    logits = state.prefill(input_ids, attention_mask, **step_options)
    return logits, state.caches, state.next_pos


def decode_one(pipe: Pipeline, tokens: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray,
               caches: list[KVCache]) -> tuple[np.ndarray, list[KVCache]]:
    """Feed one token per row. tokens, positions: [b]; attention_mask: [b, past + 1]. Returns logits [b, V]
    (a copy; a loop of steps keeps one `DecodeState` instead)."""
    from shadow_edge.runtime.decode_state import DecodeState

    state = DecodeState.resume(pipe, caches, attention_mask[:, :-1], positions)
    return state.step(tokens, attention_mask[:, -1]).copy(), caches
