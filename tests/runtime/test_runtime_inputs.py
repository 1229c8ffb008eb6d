"""Issue 8, runtime inputs: masks, text, numpy scalars, option types, load arguments -> one InputError each."""

from __future__ import annotations

import numpy as np
import pytest

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.errors import InputError, ShadowEdgeError
from shadow_edge.runtime import ShadowRuntime

IDS = [[5, 6, 7], [8, 9, 10]]

BAD_MASKS = [  # (mask, words the message must contain)
    ([[1, 1, 2], [1, 1, 1]], "attention_mask[0, 2] is"),
    ([[1, 1, 0.5], [1, 1, 1]], "0/1 values"),
    ([[1, 1, -1], [1, 1, 1]], "0/1 values"),
    ([[1, 1, np.nan], [1, 1, 1]], "0/1 values"),
    ([1, 1, 1, 1, 1, 1], "shape [6]"),  # same size, wrong shape: no silent reshape
    ([[1, 1], [1, 1], [1, 1]], "shape [3, 2]"),
    ([[1, 1, 1], [1, 1]], "different lengths"),
    ([["a", "b", "c"], ["d", "e", "f"]], "dtype"),
    ([[None, 1, 1], [1, 1, 1]], "dtype object"),
    ([[1, 1, 1, 1], [1, 1, 1, 1]], "shape [2, 4]"),
]


@pytest.mark.parametrize("mask, words", BAD_MASKS)
def test_forward_rejects_bad_masks(tiny_rt, mask, words):
    with pytest.raises(InputError) as info:
        tiny_rt.forward(IDS, attention_mask=mask, mode="shadow_only")
    assert words in str(info.value) and "input_ids [2, 3]" in str(info.value)


def test_forward_accepts_0_1_masks_of_any_exact_type(tiny_rt):
    ref = tiny_rt.forward(IDS, attention_mask=[[0, 1, 1], [1, 1, 1]], mode="shadow_only")
    for mask in (np.array([[False, True, True], [True] * 3]), np.array([[0.0, 1.0, 1.0], [1.0] * 3]),
                 np.array([[0, 1, 1], [1, 1, 1]], dtype=np.uint8)):
        np.testing.assert_array_equal(tiny_rt.forward(IDS, attention_mask=mask, mode="shadow_only"), ref)
    single = tiny_rt.forward([5, 6, 7], attention_mask=[1, 1, 1], mode="shadow_only")
    assert single.shape == (1, 3, tiny_rt.vocab_size)


BAD_OPTIONS = [  # generate kwargs -> words of the message
    ({"stop": 5}, "stop is 5"),
    ({"stop": [b"x"]}, "stop contains b'x'"),
    ({"stop": "\ud800"}, "lone surrogate"),
    ({"eos": "abc"}, "eos is 'abc'"),
    ({"eos": 2.5}, "eos is 2.5"),
    ({"eos": [1, -1]}, "eos is [1, -1]"),
    ({"do_sample": "yes"}, "do_sample is 'yes'"),
    ({"do_sample": 1}, "do_sample is 1"),
    ({"chat": "no"}, "chat is 'no'"),
    ({"temperature": "hot"}, "temperature is 'hot'"),
    ({"temperature": float("nan")}, "temperature is nan"),
    ({"top_p": None}, "top_p is None"),
    ({"max_new_tokens": True}, "max_new_tokens is True"),
    ({"max_new_tokens": 2.0}, "max_new_tokens is 2.0"),
    ({"cascade_threshold": True}, "cascade_threshold is True"),
    ({"mode": ["shadow_only"]}, "mode ['shadow_only']"),
]


@pytest.mark.parametrize("kwargs, words", BAD_OPTIONS)
def test_bad_option_types(tiny_rt, kwargs, words):
    with pytest.raises(InputError) as info:
        tiny_rt.generate("hi", **kwargs)
    assert words in str(info.value)
    with pytest.raises(InputError):
        tiny_rt.stream("hi", **kwargs)


@pytest.mark.parametrize("prompt, words", [
    ("a\udcff b", "prompt 0 is not valid Unicode"),  # an undecodable argv byte (surrogateescape)
    ("\ud800", "lone surrogate"),
    (["fine", "x\ud83d"], "prompt 1"),
])
def test_lone_surrogates_in_text(tiny_rt, prompt, words):
    with pytest.raises(InputError, match=words):
        tiny_rt.generate(prompt, max_new_tokens=1)
    with pytest.raises(InputError, match="content is not valid Unicode"):
        tiny_rt.chat_text([{"role": "user", "content": "\udcff"}])


def test_numpy_integers_are_integers(tiny_rt):
    ref = tiny_rt.generate([5, 6, 7], mode="shadow_only", max_new_tokens=3, do_sample=True, seed=3, top_k=5)
    out = tiny_rt.generate([np.int64(5), np.int32(6), np.uint16(7)], mode="shadow_only",
                           max_new_tokens=np.int64(3), do_sample=np.bool_(True), seed=np.uint8(3),
                           top_k=np.int16(5), temperature=np.float32(1.0), top_p=np.float64(1.0),
                           eos=np.array([2, 0]))
    assert out.token_ids == ref.token_ids
    assert tiny_rt.generate(np.array([5, 6, 7], dtype=np.int32), mode="shadow_only", max_new_tokens=3,
                            do_sample=True, seed=3, top_k=5).token_ids == ref.token_ids
    assert tiny_rt.generate([5, 6, 7], mode="shadow_only", max_new_tokens=2, eos=np.int64(2)).mode == "shadow_only"


def test_load_arguments(tiny_artifact):
    for bad, words in ((None, "artifact directory is None"), (3, "artifact directory is 3"),
                       ("", "artifact directory is ''")):
        with pytest.raises(InputError, match=words):
            ShadowRuntime.load(bad)
    for providers, words in (("CPUExecutionProvider", "non-empty list"), ([], "non-empty list"),
                             (["NoSuchExecutionProvider"], "'NoSuchExecutionProvider' is not available"),
                             ([3], "provider 3")):
        with pytest.raises(InputError, match=words):
            ShadowRuntime.load(tiny_artifact, providers=providers)
    with pytest.raises(InputError, match="threads is 1.5"):
        ShadowRuntime.load(tiny_artifact, threads=1.5)
    with pytest.raises(InputError, match="verify is 'yes'"):
        ShadowRuntime.load(tiny_artifact, verify="yes")
    with pytest.raises(InputError, match="modes is 'shadow_only'"):
        ShadowRuntime.load(tiny_artifact, modes="shadow_only")
    rt = ShadowRuntime.load(tiny_artifact, providers=["CPUExecutionProvider"], threads=np.int64(1),
                            modes=("shadow_only",))
    assert rt.generate([5, 6], mode="shadow_only", max_new_tokens=1).token_ids


def test_every_error_is_a_shadow_edge_error(tiny_rt):
    """A sweep of odd values through every keyword: nothing but ShadowEdgeError escapes."""
    odd = [None, "x", -1, 0, 1.5, float("inf"), [], {}, [None], object(), b"\xff", np.float64("nan")]
    for key in ("mode", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "stop", "eos",
                "chat", "cascade_threshold"):
        for value in odd:
            try:
                tiny_rt.generate([5, 6], **{"max_new_tokens": 1, key: value})
            except ShadowEdgeError:
                pass
