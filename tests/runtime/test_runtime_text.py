"""Text: streaming detokenization (UTF-8 safe, joins to the generated text), stop strings, chat templates."""

from __future__ import annotations

import numpy as np
import pytest

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
import shadow_edge.runtime.strategies.base as strategy_base  # where the loop makes its Sampler
from shadow_edge.errors import InputError
from shadow_edge.runtime.chat import render_chat
from shadow_edge.runtime.text import REPLACEMENT, TextStream, find_stop, stop_holdback

MULTIBYTE = "héllo wörld — 日本語 🙂 ok"


def pieces_of(codec, ids, stops=()):
    stream = TextStream(codec, stops)
    pieces = [stream.push(t) for t in ids]
    pieces.append(stream.finish())
    return pieces, stream


def test_stream_never_emits_a_split_character(tiny_rt):
    codec = tiny_rt.codec
    ids = codec.encode(MULTIBYTE)
    assert codec.decode(ids) == MULTIBYTE
    # The byte-level tokenizer splits these characters across tokens: some prefixes end mid-character.
    assert any(codec.decode(ids[:i]).endswith(REPLACEMENT) for i in range(1, len(ids)))
    pieces, _ = pieces_of(codec, ids)
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) == MULTIBYTE


def test_stream_cuts_at_stop_strings_and_holds_back_partial_matches(tiny_rt):
    codec = tiny_rt.codec
    ids = codec.encode("one two three four")
    pieces, stream = pieces_of(codec, ids, stops=("three",))
    assert "".join(pieces) == "one two " and stream.stopped
    assert all("thr" not in p for p in pieces)
    assert find_stop("a STOP b", ("STOP", "b")) == 2
    assert stop_holdback("abc th", ("three",)) == 2 and stop_holdback("abc", ("three",)) == 0


def scripted(tokens):
    """A Sampler stand-in that emits fixed tokens (to force a multibyte answer through the runtime)."""
    class Scripted:
        def __init__(self, *args, **kwargs):
            self.i = 0

        def __call__(self, logits):
            tok = tokens[min(self.i, len(tokens) - 1)]
            self.i += 1
            return np.full(logits.shape[0], tok, dtype=np.int64)
    return Scripted


@pytest.mark.parametrize("mode", ("shadow_only", "base_shadow", "cascade"))
def test_stream_joins_to_generate_text_with_multibyte_output(tiny_rt, monkeypatch, mode):
    ids = tiny_rt.codec.encode(MULTIBYTE)
    monkeypatch.setattr(strategy_base, "Sampler", scripted(ids))
    out = tiny_rt.generate("Hello", mode=mode, max_new_tokens=len(ids), eos=[])
    assert out.text == MULTIBYTE and out.token_ids == ids
    pieces = list(tiny_rt.stream("Hello", mode=mode, max_new_tokens=len(ids), eos=[]))
    assert "".join(pieces) == MULTIBYTE and all(REPLACEMENT not in p for p in pieces)
    if mode != "cascade":
        assert len(pieces) > 3  # really incremental
    assert tiny_rt.last_result.token_ids == ids


@pytest.mark.parametrize("mode", ("shadow_only", "base_shadow", "cascade"))
@pytest.mark.parametrize("seed", (0, 1))
def test_stream_joins_to_generate_text_when_sampling(tiny_rt, mode, seed):
    kw = dict(mode=mode, max_new_tokens=20, do_sample=True, temperature=1.3, seed=seed)
    out = tiny_rt.generate("The river runs", **kw)
    assert "".join(tiny_rt.stream("The river runs", **kw)) == out.text
    assert tiny_rt.generate("The river runs", **kw).token_ids == out.token_ids  # seeded: reproducible


def test_stop_string_in_generate_and_stream(tiny_rt, monkeypatch):
    ids = tiny_rt.codec.encode("one two three four")
    monkeypatch.setattr(strategy_base, "Sampler", scripted(ids))
    out = tiny_rt.generate("x", mode="shadow_only", max_new_tokens=len(ids), stop=["three"], eos=[])
    assert out.text == "one two " and out.finish_reason == "stop" and len(out.token_ids) < len(ids)
    assert "".join(tiny_rt.stream("x", mode="shadow_only", max_new_tokens=len(ids), stop=["three"],
                                  eos=[])) == "one two "


def test_eos_ends_a_row_and_is_kept_in_token_ids(tiny_rt, monkeypatch):
    eos = tiny_rt.eos_ids[0]
    monkeypatch.setattr(strategy_base, "Sampler", scripted([5, 6, eos, 7]))
    out = tiny_rt.generate("x", mode="base_shadow", max_new_tokens=10)
    assert out.token_ids == [5, 6, eos] and out.finish_reason == "eos"
    assert out.text == tiny_rt.codec.decode([5, 6])


def test_chat_template_renders_chatml(tiny_rt):
    text = tiny_rt.chat_text("Hello")
    assert text == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Weather?"}]
    expected = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n")
    assert tiny_rt.chat_text(conv, add_generation_prompt=False) == expected
    assert tiny_rt.chat_text(conv) == expected + "<|im_start|>assistant\n"


def test_chat_template_matches_transformers(tiny_rt, tiny_default):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_default.base_dir)
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße 🙂"}]
    assert tiny_rt.chat_text(conv) == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    ids = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    out = tiny_rt.generate(conv, mode="shadow_only", max_new_tokens=1, chat=True)
    assert out.prompt_tokens == len(ids)


def test_chat_generate_uses_template(tiny_rt):
    plain = tiny_rt.generate(tiny_rt.chat_text("Hi"), mode="shadow_only", max_new_tokens=6)
    chat = tiny_rt.generate("Hi", mode="shadow_only", max_new_tokens=6, chat=True)
    assert chat.token_ids == plain.token_ids and chat.prompt_tokens == plain.prompt_tokens


def test_template_features_like_transformers():
    tpl = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}"
           "{% endif %}{{ m.content | tojson }}{% if loop.last %}{% break %}{% endif %}{% endfor %}")
    assert render_chat(tpl, [{"role": "user", "content": "é"}], special_tokens={"bos_token": "<s>"}) == '<s>"é"'
    with pytest.raises(InputError, match="no system"):
        render_chat(tpl, [{"role": "system", "content": "x"}])
    with pytest.raises(InputError, match="chat_template"):
        render_chat(None, [{"role": "user", "content": "x"}])
    with pytest.raises(InputError, match="role"):
        render_chat(tpl, [{"content": "x"}])


def test_batch_rows_stop_on_their_own_eos(tiny_rt, monkeypatch):
    eos = tiny_rt.eos_ids[0]
    script = {0: [5, eos, 9, 9], 1: [7, 8, 9, 10]}  # row 0 ends at step 2, row 1 runs to the limit

    class PerRow:
        def __init__(self, *args, **kwargs):
            self.i = 0

        def __call__(self, logits):
            self.i += 1
            return np.array([script[r][self.i - 1] for r in range(logits.shape[0])], dtype=np.int64)
    monkeypatch.setattr(strategy_base, "Sampler", PerRow)
    out = tiny_rt.generate(["a b c", "d"], mode="base_shadow", max_new_tokens=4)
    assert out.token_ids == [[5, eos], [7, 8, 9, 10]] and out.finish_reason == ["eos", "length"]
    assert out.text == [tiny_rt.codec.decode([5]), tiny_rt.codec.decode([7, 8, 9, 10])]


@pytest.mark.parametrize("special", [True, False])
def test_codec_encode_equals_the_tokenizers_own_encode(tiny_rt, special):
    """TextCodec.encode goes through the batch entry point (it releases the GIL, so a long prompt does not freeze
    the server's event loop); the ids must be those of `Tokenizer.encode`."""
    texts = ["Hello", " the river runs\n\n", MULTIBYTE, "<|im_start|>user\nhi<|im_end|>", "a  b\tc " * 200]
    rng = np.random.default_rng(0)
    texts += ["".join(chr(c) for c in rng.integers(32, 0x2FFF, size=200)) for _ in range(5)]
    for text in texts:
        assert tiny_rt.codec.encode(text, add_special_tokens=special) == \
            tiny_rt.codec.tokenizer.encode(text, add_special_tokens=special).ids, text[:20]
