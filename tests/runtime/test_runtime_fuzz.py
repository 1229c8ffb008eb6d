"""Issue 8: property-based fuzzing of the runtime API and of manifests (hypothesis, fixed seed, bounded).

Every call either raises a ShadowEdgeError or returns output that holds the invariants:
shapes, token ids inside the vocabulary, finite logits, text that encodes as UTF-8, stream
pieces that join to the result's text. `derandomize=True` makes every run draw the same
examples, so CI is deterministic; the example counts keep the whole module to seconds.
For a deeper, randomized run: `SHADOW_EDGE_FUZZ=20 pytest tests/runtime/test_runtime_fuzz.py` (20x the examples,
new ones each run).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runtime_fixtures import copy_artifact, tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.errors import ShadowEdgeError
from shadow_edge.runtime import ShadowRuntime

SCALE = int(os.environ.get("SHADOW_EDGE_FUZZ", "0"))  # 0: the fixed, fast CI run


def fuzz(examples: int) -> settings:
    return settings(derandomize=not SCALE, deadline=None, max_examples=examples * max(SCALE, 1), database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


VOCAB = 512  # the tiny default's vocabulary
FINISH = {"eos", "stop", "length"}

junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                 st.binary(max_size=3), st.lists(st.integers(-3, 3), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                                                    st.integers(), max_size=1))
token = st.one_of(st.integers(0, VOCAB - 1), st.integers(0, VOCAB - 1), st.integers(-5, 10**6),
                  st.integers(0, 50).map(np.int64), st.floats(0, 10), st.booleans())
text = st.one_of(st.text(max_size=12), st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                                               min_size=1, max_size=2), st.sampled_from(["hi", "The river", "é😀"]))
message = st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": text}),
                    st.dictionaries(st.text(max_size=4), junk, max_size=2), junk)
prompt = st.one_of(
    text, st.lists(token, max_size=6), st.lists(st.lists(token, max_size=4), max_size=3),
    st.lists(text, max_size=3), st.lists(message, max_size=3),
    st.builds(lambda a, dt: np.asarray(a).astype(dt),
              st.lists(st.integers(0, VOCAB - 1), min_size=0, max_size=5), st.sampled_from(["int64", "int32", "float32"])),
    junk)


def maybe(strategy):
    return st.one_of(strategy, strategy, junk)


# Valid arguments (Python or numpy scalars): every call must succeed and hold the invariants.
valid_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
valid_ids = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6)
valid_prompt = st.one_of(valid_text, valid_ids, st.lists(valid_ids, min_size=1, max_size=3),
                         st.lists(valid_text, min_size=1, max_size=3),
                         st.builds(lambda a, dt: np.asarray(a, dtype=dt), valid_ids, st.sampled_from(["int64", "int32"])))
valid_kwargs = st.fixed_dictionaries({}, optional={
    "mode": st.sampled_from(["shadow_only", "base_shadow", "cascade"]),
    "max_new_tokens": st.one_of(st.integers(1, 5), st.integers(1, 5).map(np.int64)),
    "do_sample": st.one_of(st.booleans(), st.booleans().map(np.bool_)),
    "temperature": st.one_of(st.floats(0, 2), st.floats(0, 2).map(np.float32)),
    "top_k": st.integers(0, 600),
    "top_p": st.floats(0.01, 1.0),
    "seed": st.one_of(st.none(), st.integers(0, 2**32), st.integers(0, 100).map(np.uint32)),
    "stop": st.one_of(valid_text, st.lists(valid_text, max_size=2)),
    "eos": st.one_of(st.none(), st.integers(0, VOCAB - 1), st.lists(st.integers(0, VOCAB - 1), max_size=2)),
    "cascade_threshold": st.floats(0, 1),
}).filter(lambda kw: "cascade_threshold" not in kw or kw.get("mode") == "cascade")  # a mode's own option


@pytest.mark.slow
@fuzz(80)
@given(prompt=valid_prompt, kwargs=valid_kwargs, chat=st.booleans())
def test_valid_generate_and_stream_hold_the_invariants(tiny_rt, prompt, kwargs, chat):
    chat = chat and isinstance(prompt, str)
    result = tiny_rt.generate(prompt, chat=chat, **kwargs)
    check_result(result, kwargs)
    if isinstance(result.text, str):
        stream = tiny_rt.stream(prompt, chat=chat, **kwargs)
        assert "".join(stream) == stream.result.text
        check_result(stream.result, kwargs)
        if not kwargs.get("do_sample") or kwargs.get("seed") is not None:
            assert stream.result.token_ids == result.token_ids


@fuzz(60)
@given(rows=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=3, max_size=3), min_size=1, max_size=3),
       mask=st.lists(st.lists(st.sampled_from([0, 1, 1, True, 1.0]), min_size=3, max_size=3), min_size=3,
                     max_size=3),
       mode=st.sampled_from(["shadow_only", "base_shadow"]))
def test_valid_forward_holds_the_invariants(tiny_rt, rows, mask, mode):
    logits = tiny_rt.forward(np.asarray(rows, dtype=np.int64), attention_mask=mask[:len(rows)], mode=mode)
    assert logits.shape == (len(rows), 3, VOCAB) and logits.dtype == np.float32 and np.isfinite(logits).all()


generation_kwargs = st.fixed_dictionaries({}, optional={
    "mode": maybe(st.sampled_from(["shadow_only", "base_shadow", "cascade", "base_plain"])),
    "max_new_tokens": maybe(st.one_of(st.integers(-1, 5), st.integers(1, 4).map(np.int32))),
    "do_sample": maybe(st.booleans()),
    "temperature": maybe(st.floats(-1, 3)),
    "top_k": maybe(st.integers(-1, 600)),
    "top_p": maybe(st.floats(-0.5, 1.5)),
    "seed": maybe(st.integers(-1, 2**32)),
    "stop": maybe(st.one_of(text, st.lists(text, max_size=2))),
    "eos": maybe(st.one_of(st.integers(-1, VOCAB), st.lists(st.integers(-1, VOCAB), max_size=2))),
    "chat": maybe(st.booleans()),
    "cascade_threshold": maybe(st.floats(-0.5, 1.5)),
})


def _flat(result, single: bool):
    as_list = (lambda x: [x]) if single else list
    return as_list(result.token_ids), as_list(result.text), as_list(result.finish_reason)


def check_result(result, kwargs):
    single = isinstance(result.text, str)
    rows, texts, finishes = _flat(result, single)
    limit = kwargs.get("max_new_tokens", 32)
    for ids, txt, fin in zip(rows, texts, finishes):
        assert all(isinstance(t, int) and 0 <= t < VOCAB for t in ids)
        assert 1 <= len(ids) <= limit and fin in FINISH
        assert isinstance(txt, str)
        txt.encode("utf-8")
    assert len(rows) == len(texts) == len(finishes)


@fuzz(120)
@given(prompt=prompt, kwargs=generation_kwargs)
def test_generate_fuzz(tiny_rt, prompt, kwargs):
    try:
        result = tiny_rt.generate(prompt, **kwargs)
    except ShadowEdgeError as e:
        return event(f"refused: {type(e).__name__}")
    event("generated")
    check_result(result, kwargs)
    for r in range(len(result.token_ids) if not isinstance(result.text, str) else 0):
        assert isinstance(result.text[r], str)


@fuzz(80)
@given(prompt=prompt, kwargs=generation_kwargs)
def test_stream_fuzz(tiny_rt, prompt, kwargs):
    try:
        stream = tiny_rt.stream(prompt, **kwargs)
        pieces = list(stream)
    except ShadowEdgeError as e:
        return event(f"refused: {type(e).__name__}")
    event("streamed")
    check_result(stream.result, kwargs)
    assert "".join(pieces) == stream.result.text
    if not kwargs.get("do_sample") or kwargs.get("seed") is not None:  # deterministic: stream == generate
        assert tiny_rt.generate(prompt, **kwargs).token_ids == stream.result.token_ids


mask_value = st.one_of(st.sampled_from([0, 1, 1, 1]), st.sampled_from([2, -1, 0.5, np.nan, True, "1", None]))


@fuzz(80)
@given(ids=st.one_of(st.lists(st.lists(token, min_size=1, max_size=4), min_size=1, max_size=3), prompt),
       mask=st.one_of(st.none(), st.lists(st.lists(mask_value, max_size=4), max_size=3), junk),
       mode=maybe(st.sampled_from(["shadow_only", "base_shadow"])))
def test_forward_fuzz(tiny_rt, ids, mask, mode):
    try:
        logits = tiny_rt.forward(ids, attention_mask=mask, mode=mode)
    except ShadowEdgeError as e:
        return event(f"refused: {type(e).__name__}")
    event("forwarded")
    arr = np.asarray(ids)
    b, t = (1, arr.shape[0]) if arr.ndim == 1 else arr.shape
    assert logits.shape == (b, t, VOCAB) and logits.dtype == np.float32 and np.isfinite(logits).all()


@fuzz(80)
@given(messages=st.one_of(st.lists(message, max_size=4), text, junk), add=maybe(st.booleans()),
       extra=st.dictionaries(st.sampled_from(["enable_thinking", "tools", "bos_token"]), junk, max_size=2))
def test_chat_text_fuzz(tiny_rt, messages, add, extra):
    try:
        rendered = tiny_rt.chat_text(messages, add, **extra)
    except ShadowEdgeError as e:
        return event(f"refused: {type(e).__name__}")
    event("rendered")
    assert isinstance(rendered, str)
    rendered.encode("utf-8")


# ---- manifest mutations -------------------------------------------------------------------------------

json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2, 10**6), st.floats(allow_nan=False),
                                    st.text(max_size=6), st.sampled_from(["../x", "/etc/passwd", "shadow", "lm_head"])),
                          lambda inner: st.one_of(st.lists(inner, max_size=2),
                                                  st.dictionaries(st.text(max_size=4), inner, max_size=2)),
                          max_leaves=4)


def _paths(node, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _plausible(data, old, pool):
    """A value of the same type as `old`: the mutations a type check cannot catch (dims, names, lists)."""
    if isinstance(old, bool):
        return st.just(not old)
    if isinstance(old, int):
        return st.sampled_from([old + 1, old - 1, 0, 2 * old, 1])
    if isinstance(old, str):
        return st.sampled_from(pool)
    if isinstance(old, list) and old:
        return st.sampled_from([old[1:], old[:-1], old + old[:1], old[::-1]])
    return json_value


def _mutate(data, path, action, value):
    if not path:
        return value if action != "delete" else data
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if action == "delete":
        del parent[key]
    else:
        parent[key] = value
    return data


@pytest.fixture(scope="module")
def fuzz_art(tiny_artifact, tmp_path_factory):
    art = copy_artifact(tiny_artifact, tmp_path_factory.mktemp("fuzz") / "art")
    return art, json.loads((art / "manifest.json").read_text())


@pytest.mark.slow
@fuzz(100)
@given(data=st.data())
def test_manifest_mutation_fuzz(fuzz_art, data):
    art, pristine = fuzz_art
    manifest = json.loads(json.dumps(pristine))
    for _ in range(data.draw(st.integers(1, 2))):
        paths = [p for p, _ in _paths(manifest) if p[:1] not in (("source",), ("validation",))]
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["plausible", "plausible", "replace", "delete"]))
        old = dict(_paths(manifest))[path]
        pool = sorted({v for _, v in _paths(pristine) if isinstance(v, str) and len(v) < 40})
        value = data.draw(_plausible(manifest, old, pool) if action == "plausible" else json_value)
        manifest = _mutate(manifest, path, action, value)
    (art / "manifest.json").write_text(json.dumps(manifest))
    try:
        rt = ShadowRuntime.load(art, threads=1, verify=False)
        for mode in rt.modes:
            out = rt.generate([5, 6, 7], mode=mode, max_new_tokens=2)
            assert all(0 <= t < rt.vocab_size for t in out.token_ids)
            if mode != "cascade":
                assert np.isfinite(rt.forward([[5, 6]], mode=mode)).all()
        event("loaded and ran")
    except ShadowEdgeError as e:
        event(f"refused: {type(e).__name__}")
    finally:
        (art / "manifest.json").write_text(json.dumps(pristine))


def test_fuzz_strategies_reach_the_happy_path(tiny_rt):
    """The suite is only meaningful if valid calls are among the examples: a fixed valid call passes the checks."""
    kwargs = {"mode": "shadow_only", "max_new_tokens": 3}
    check_result(tiny_rt.generate("hi", **kwargs), kwargs)
    assert math.isfinite(float(tiny_rt.forward([[1, 2]], mode="base_shadow").sum()))
