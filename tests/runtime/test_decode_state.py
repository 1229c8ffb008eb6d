"""The decode state (runtime/decode_state.py): prefill, step, verify, rewind and copy_rows against the full forward pass.

The full forward (`ShadowRuntime.forward`, an empty past) is itself checked against shadow_peft in
test_runtime_parity.py; here every verb of the state must reproduce its logits at 1e-4 on left-padded
batches whose caches grow past their first capacity.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime_fixtures import artifact_of, runtime_once  # noqa: F401  (fixtures)
from shadow_edge.runtime.decode_state import DecodeState

MODES = ("shadow_only", "base_shadow")
CASES = ("qwen3_implicit", "qwen3_explicit")
TOL = 1e-4


@pytest.fixture(params=CASES)
def loaded(request, artifact_of):
    case, art = artifact_of(request.param)
    return case, runtime_once(request.param, art)


def batch(vocab: int, seed: int, lengths=(12, 7)) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids, mask [len(lengths), max(lengths)]."""
    t = max(lengths)
    ids = np.random.default_rng(seed).integers(0, vocab, (len(lengths), t), dtype=np.int64)
    mask = np.ones_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :t - n], mask[r, :t - n] = 0, 0
    return ids, mask


def close(got: np.ndarray, want: np.ndarray, real: np.ndarray | None = None) -> None:
    real = np.ones(got.shape[0], bool) if real is None else real.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_prefill_then_steps_equal_full_forward_while_caches_grow(loaded, mode):
    case, rt = loaded
    ids, mask = batch(case.vocab_size, 1)
    full = rt.forward(ids, mask, mode=mode)  # [b, t, V]
    k = 6  # row 1's prompt starts at column 5: its first real token is in the prefill
    state = DecodeState(rt.pipeline(mode), 2, k + 1)  # one step of room, then the buffers double
    close(state.prefill(ids[:, :k], mask[:, :k]), full[:, k - 1])
    for t in range(k, ids.shape[1]):
        close(state.step(ids[:, t]), full[:, t])
        assert state.length == t + 1 and all(c.length == t + 1 for c in state.caches)
    assert state.caches[0].capacity > k + 1 and state.mask.shape[1] >= ids.shape[1], "the caches grew"
    np.testing.assert_array_equal(state.next_pos, mask.sum(axis=1))


@pytest.mark.parametrize("mode", MODES)
def test_chunked_prefill_and_verify_equal_full_forward(loaded, mode):
    """Several positions per call after a past: chunks of a prompt, then a verify pass of 4 positions (batch 1:
    onnxruntime's CPU GroupQueryAttention takes seq > 1 with a past at batch 1 only)."""
    case, rt = loaded
    ids, _ = batch(case.vocab_size, 2, lengths=(12,))
    full = rt.forward(ids, mode=mode)[0]  # [t, V]
    state = DecodeState(rt.pipeline(mode), 1, 4)
    close(state.advance(ids[:, :3], last_only=False)[0], full[:3])
    close(state.advance(ids[:, 3:6])[0], full[5:6])
    close(state.verify(ids[:, 6:10])[0], full[6:10])
    close(state.step(ids[:, 10]), full[10:11])
    np.testing.assert_array_equal(state.next_pos, [11])


@pytest.mark.parametrize("mode", MODES)
def test_rewind_forgets_positions(loaded, mode):
    """Steps fed wrong tokens, then rewound, leave no trace: the right tokens after the rewind give the full
    forward's logits (stale entries are overwritten), and a row's hole (mask 0) is skipped by its positions."""
    case, rt = loaded
    ids, mask = batch(case.vocab_size, 3)
    full = rt.forward(ids, mask, mode=mode)
    k = 8
    state = DecodeState(rt.pipeline(mode), 2, k)
    state.prefill(ids[:, :k], mask[:, :k])
    for j in range(3):
        state.step((ids[:, k + j] + 1) % case.vocab_size)
    state.rewind(k)
    np.testing.assert_array_equal(state.next_pos, mask[:, :k].sum(axis=1))
    for t in range(k, ids.shape[1]):
        close(state.step(ids[:, t]), full[:, t])
    # a hole: row 1 keeps column k + 4 unseen (mask 0); its next position does not count it
    state.rewind(k + 4, keep=np.array([[1], [0]]))
    assert state.next_pos.tolist() == [k + 4 - 0, int(mask[1, :k].sum()) + 3]


@pytest.mark.parametrize("mode", MODES)
def test_copy_rows_carries_a_row_to_another_state(loaded, mode):
    """A row of a prefilled batch copied into a batch-1 state decodes on as the row would alone."""
    case, rt = loaded
    ids, mask = batch(case.vocab_size, 4)
    full = rt.forward(ids, mask, mode=mode)
    k = 7
    src = DecodeState(rt.pipeline(mode), 2, k)
    src.prefill(ids[:, :k], mask[:, :k])
    dst = DecodeState(rt.pipeline(mode), 1, 2)  # smaller than the copy: grows
    pad = int((mask[1] == 0).sum())
    dst.copy_rows(src, [1], columns=slice(pad, k))  # drop the row's padding columns
    assert dst.length == k - pad and dst.next_pos.tolist() == [k - pad]
    for t in range(k, ids.shape[1]):
        close(dst.step(ids[1:, t]), full[1:, t])


def test_shadow_cache_rows_reused_by_base_shadow(loaded):
    """The cascade's reuse: the shadow cache's prompt rows copied from a shadow_only state, base_shadow prefilled
    from the prompt's shadow states (the shadow graph is not run again), equals base_shadow from scratch."""
    case, rt = loaded
    ids, mask = batch(case.vocab_size, 5)
    full = rt.forward(ids, mask, mode="base_shadow")
    shadow = DecodeState(rt.pipeline("shadow_only"), 2, 12)
    states: list = []
    shadow.prefill(ids, mask, keep_shadow=states)
    if rt.pipeline("shadow_only").shadow is not rt.pipeline("base_shadow").shadow:
        pytest.skip("the modes run different shadow graphs")
    combined = DecodeState(rt.pipeline("base_shadow"), 1, 4)
    pad = int((mask[1] == 0).sum())
    combined.copy_rows(shadow, [1], stacks=1, columns=slice(pad, ids.shape[1]))
    assert combined.length == 0
    logits = combined.prefill(ids[1:, pad:], shadow_states=states[0][1:, pad:])
    close(logits, full[1:, -1])


@pytest.mark.parametrize("mode", MODES)
def test_merged_step_graph_equals_split_graphs(loaded, mode):
    """The merged single-session step (shadow + backbone + head + ArgMax) gives the split chain's logits, and its
    `next_token` is their argmax; without logits fetched it still chooses the same tokens."""
    case, rt = loaded
    merged = rt.step_graph(mode)
    if merged is None:
        assert case.shadow_model_dir is not None and mode == "base_shadow", "only explicit shadows lack one"
        assert rt.decode_state(mode, 1, 4).merged is None
        return
    ids, mask = batch(case.vocab_size, 6)
    full = rt.forward(ids, mask, mode=mode)
    k = 6
    split, joined, greedy = (DecodeState(rt.pipeline(mode), 2, k + 1, m, f)
                             for m, f in ((None, True), (merged, True), (merged, False)))
    for s in (split, joined, greedy):
        s.prefill(ids[:, :k], mask[:, :k])
    for t in range(k, ids.shape[1]):
        want = split.step(ids[:, t]).copy()
        close(want, full[:, t])
        np.testing.assert_allclose(joined.step(ids[:, t]), want, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(joined.next_token, np.argmax(want, axis=-1))
        assert greedy.step(ids[:, t]) is None
        np.testing.assert_array_equal(greedy.next_token, joined.next_token)


@pytest.mark.parametrize("mode", MODES)
def test_generation_identical_with_merged_and_split_steps(loaded, mode, tmp_path):
    """Greedy tokens (left-padded batch, logprobs on and off) and seeded samples are the same whichever graphs
    step the decode."""
    from shadow_edge.runtime import ShadowRuntime

    case, rt = loaded
    split = ShadowRuntime.load(rt.art_dir, threads=1, decode_step="split")
    assert split.step_graph(mode) is None
    prompts = [[3, 9, 4, 1, 7, 2], [5, 8]]
    for kw in (dict(), dict(do_sample=True, temperature=0.9, top_k=20, seed=3)):
        a, b = (r.generate(prompts, mode=mode, max_new_tokens=9, eos=(), **kw) for r in (rt, split))
        assert a.token_ids == b.token_ids
    for r in (rt, split):  # logprobs ride on the logits: a cascade's shadow pass fetches them
        out = r.generate(prompts, mode="cascade", max_new_tokens=6, eos=(), cascade_threshold=1.0)
        assert out.token_ids == split.generate(prompts, mode="cascade", max_new_tokens=6, eos=(),
                                               cascade_threshold=1.0).token_ids


def test_decode_step_option_is_checked(loaded):
    from shadow_edge.errors import InputError
    from shadow_edge.runtime import ShadowRuntime

    _, rt = loaded
    with pytest.raises(InputError, match="decode_step is 'fast'; it must be one of auto, split"):
        ShadowRuntime.load(rt.art_dir, decode_step="fast")


def test_cli_run_decode_step_split_gives_the_same_tokens(loaded):
    import json
    import subprocess
    import sys

    case, rt = loaded
    base = [sys.executable, "-m", "shadow_edge.cli", "run", str(rt.art_dir), "--mode", "base_shadow", "--input-ids",
            "3,9,4,1", "--max-new-tokens", "5", "--json", "--threads", "1"]
    outs = [subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
            for extra in ([], ["--decode-step", "split"])]
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    assert json.loads(outs[0].stdout)["token_ids"] == json.loads(outs[1].stdout)["token_ids"]
    bad = subprocess.run(base + ["--decode-step", "fast"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--decode-step" in bad.stderr


@pytest.mark.parametrize("fetch", [False, True])
def test_verify_bound_equals_full_forward_then_rewinds(loaded, fetch):
    """verify_bound (several positions in one call of the merged graph, speculative's verify pass): its next_token is
    the full forward's argmax at every position (and its logits, when fetched, the full forward's); after a rewind the
    state steps on as if the verified positions had never been fed; widths 1..4 reuse their buffers."""
    case, rt = loaded
    merged = rt.step_graph("base_shadow")
    if merged is None:
        assert case.shadow_model_dir is not None, "only explicit shadows lack one"
        return
    ids, mask = batch(case.vocab_size, 7, lengths=(14,))
    full = rt.forward(ids, mask, mode="base_shadow")[0]  # [t, V]
    state = DecodeState(rt.pipeline("base_shadow"), 1, 4, merged, fetch_logits=fetch)
    state.prefill(ids[:, :6])
    for t in range(6, 12):
        for width in (1, 2, 4, 3):
            if t + width > ids.shape[1]:
                continue
            before = state.length
            targets = state.verify_bound(ids[:, t:t + width]).copy()  # [1, width]
            np.testing.assert_array_equal(targets[0], np.argmax(full[t:t + width], axis=-1))
            if fetch:
                close(state.step_logits[0], full[t:t + width])
            assert state.length == before + width and state.next_pos[0] == t + width
            state.rewind(before)
        assert state.next_pos[0] == t
        state.verify_bound(ids[:, t:t + 1])  # keep one position, as a round that accepts nothing does
    logits = state.step(ids[:, 12])
    if fetch:
        close(logits, full[12:13])
    np.testing.assert_array_equal(state.next_token, [np.argmax(full[12])])
