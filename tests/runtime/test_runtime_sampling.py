"""The numpy sampler: greedy, seeded reproducibility, top-k / top-p support, and option validation."""

from __future__ import annotations

import numpy as np
import pytest

from shadow_edge.errors import InputError
from shadow_edge.runtime.options import GenerationOptions
from shadow_edge.runtime.sampling import Sampler, chosen_logprobs, greedy, sample, shaped_probs


def logits(b=3, v=50, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (b, v)).astype(np.float32)


def test_greedy_is_argmax_with_first_index_on_ties():
    x = np.array([[0.0, 3.0, 3.0, 1.0], [5.0, 0.0, 0.0, 5.0]], dtype=np.float32)
    assert greedy(x).tolist() == [1, 0]
    assert Sampler(do_sample=False)(x).tolist() == [1, 0]
    assert Sampler(do_sample=True, temperature=0.0)(x).tolist() == [1, 0]  # temperature 0 = greedy


def test_same_seed_same_tokens_different_seed_differs():
    x = logits()
    a = [Sampler(True, 1.0, seed=7)(x).tolist() for _ in range(1)] + [Sampler(True, 1.0, seed=7)(x).tolist()]
    assert a[0] == a[1]
    s1, s2 = Sampler(True, 1.5, seed=1), Sampler(True, 1.5, seed=2)
    draws1 = [s1(x).tolist() for _ in range(20)]
    draws2 = [s2(x).tolist() for _ in range(20)]
    assert draws1 != draws2


def test_top_k_one_and_tiny_top_p_are_argmax():
    x, rng = logits(4, 100, seed=3), np.random.default_rng(0)
    for _ in range(20):
        assert sample(x, rng, temperature=2.0, top_k=1).tolist() == greedy(x).tolist()
        assert sample(x, rng, temperature=2.0, top_p=1e-6).tolist() == greedy(x).tolist()


def test_samples_stay_inside_top_k_set():
    x, rng, k = logits(2, 60, seed=4), np.random.default_rng(1), 5
    allowed = [set(np.argsort(-row)[:k].tolist()) for row in x]
    seen = [set(), set()]
    for _ in range(300):
        for r, t in enumerate(sample(x, rng, temperature=3.0, top_k=k).tolist()):
            assert t in allowed[r]
            seen[r].add(t)
    assert all(len(s) > 1 for s in seen)  # it does sample, not argmax


def test_top_p_keeps_the_smallest_set_reaching_p():
    p = np.array([[0.5, 0.3, 0.15, 0.05]])
    x = np.log(p)
    kept = shaped_probs(x, top_p=0.75)  # 0.5 < 0.75, 0.5+0.3 >= 0.75 -> {0, 1}
    assert (kept[0] > 0).tolist() == [True, True, False, False]
    np.testing.assert_allclose(kept[0, :2], [0.5 / 0.8, 0.3 / 0.8])
    assert (shaped_probs(x, top_p=0.9)[0] > 0).sum() == 3
    assert (shaped_probs(x, top_p=0.4)[0] > 0).sum() == 1
    rng = np.random.default_rng(0)
    assert set(sample(x, rng, top_p=0.75).item() for _ in range(200)) == {0, 1}


def test_top_k_and_top_p_compose_and_temperature_sharpens():
    x = logits(1, 30, seed=5)
    both = shaped_probs(x, temperature=0.7, top_k=10, top_p=0.9)
    assert (both > 0).sum() <= 10
    np.testing.assert_allclose(both.sum(), 1.0)
    cold, hot = shaped_probs(x, temperature=0.2), shaped_probs(x, temperature=5.0)
    assert cold.max() > hot.max()


def test_sampling_follows_the_distribution():
    x = np.log(np.array([[0.7, 0.2, 0.1]]))
    rng = np.random.default_rng(123)
    draws = np.array([sample(x, rng).item() for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.03)


def test_chosen_logprobs():
    x = np.log(np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])).astype(np.float32)
    np.testing.assert_allclose(np.exp(chosen_logprobs(x, np.array([0, 2]))), [0.7, 0.5], rtol=1e-6)


@pytest.mark.parametrize("field, value, needle", [
    ("max_new_tokens", 0, "max_new_tokens"), ("temperature", -0.5, "temperature"), ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"), ("top_k", -1, "top_k"), ("mode", "fast", "shadow_only, base_shadow, cascade"),
    ("seed", -3, "seed"), ("cascade_threshold", 2.0, "cascade_threshold"), ("stop", ("",), "stop"),
    ("eos", (-1,), "eos"),
])
def test_bad_options_name_the_field(field, value, needle):
    with pytest.raises(InputError, match=needle):
        GenerationOptions.of(**{field: value})
