"""`eval --text` streams its file (issue 24: a 200 MB text was OOM-killed at 16.9 GB) and checks its outputs and
artifact before the long work: chunked ids equal whole-file ids, memory holds a chunk, one error line per bad case."""

from __future__ import annotations

import numpy as np
import pytest

from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.cli import main
from shadow_edge.errors import InputError
from shadow_edge.runtime.evaluate import EvalOptions, evaluate
from shadow_edge.runtime.text_file import CONTEXT, file_token_ids

LINES = ["The river runs past the old mill, under the stone bridge.", "", "  Children walk to school — along the river.",
         "héllo wörld 日本語 🙂 ok", "\tA tab, then words", "", "", "numbers 12345 and 6.78", "Ends here"]
TEXT = "\n".join(LINES * 12) + "\n"


@pytest.mark.parametrize("chunk_bytes", [37, 64, 101, 1000, 1 << 18])
@pytest.mark.parametrize("text", [TEXT, TEXT.replace("\n", " ")], ids=["lines", "one-line"])
def test_chunked_ids_equal_tokenizing_the_whole_file(tiny_rt, tmp_path, chunk_bytes, text):
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    whole = tiny_rt.codec.encode(text, add_special_tokens=False)
    ids = file_token_ids(tiny_rt.codec, path, chunk_bytes=chunk_bytes)  # multibyte characters cross the reads
    assert ids.dtype == np.int32 and ids.tolist() == whole
    assert file_token_ids(tiny_rt.codec, path, max_tokens=25, chunk_bytes=chunk_bytes).tolist() == whole[:25]


class Recorder:
    """A codec that prepends a marker to every input, as SentencePiece-style tokenizers do (so no cut splits
    cleanly), and records the longest text it was given."""

    def __init__(self, clean: bool):
        self.clean, self.longest = clean, 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.longest = max(self.longest, len(text))
        return ([] if self.clean else [0]) + [ord(c) for c in text]


def test_memory_holds_a_chunk_and_unclean_tokenizers_stay_exact(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT * 10, encoding="utf-8")
    clean = Recorder(clean=True)
    assert file_token_ids(clean, path, chunk_bytes=200).tolist() == [ord(c) for c in TEXT * 10]
    assert clean.longest <= 2 * 200 + 2 * CONTEXT  # never the whole text (10 kB) at once
    one_line = TEXT.replace("\n", " ") * 10  # no line breaks: cut between words
    path.write_text(one_line, encoding="utf-8")
    clean = Recorder(clean=True)
    assert file_token_ids(clean, path, chunk_bytes=200).tolist() == [ord(c) for c in one_line]
    assert clean.longest <= 2 * 200 + 2 * CONTEXT
    path.write_text(TEXT * 10, encoding="utf-8")
    unclean = Recorder(clean=False)
    assert file_token_ids(unclean, path, chunk_bytes=200).tolist() == unclean.encode(TEXT * 10)  # one piece


def test_a_bad_byte_is_named_by_its_offset_in_the_file(tiny_rt, tmp_path):
    path = tmp_path / "t.txt"
    data = TEXT.encode() * 3
    path.write_bytes(data[:5000] + b"\xff" + data[5000:])
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte 5000 is 0xff\)"):
        file_token_ids(tiny_rt.codec, path, chunk_bytes=333)


def test_evaluating_a_file_equals_evaluating_its_text(tiny_rt, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    opts = EvalOptions(modes=("shadow_only", "base_shadow"), window=32, max_tokens=150)
    a, b = evaluate(tiny_rt, path, opts), evaluate(tiny_rt, TEXT, opts)
    assert a.modes == b.modes and a.agreement == b.agreement and a.tokens == 150


@pytest.fixture(scope="module")
def classifier_art(cls_cases, tmp_path_factory):
    from shadow_edge.export import ExportOptions, export_artifact

    case = cls_cases("sp_qwen3")
    out = tmp_path_factory.mktemp("cls") / "art"
    export_artifact(case.base_dir, case.adapter_dir, out, options=ExportOptions(validate=False),
                    progress=lambda m: None)
    return out


def test_eval_of_a_classifier_artifact_is_one_error(classifier_art, tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    assert main(["eval", str(classifier_art), "--text", str(path), "--quiet", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "sequence classifier" in err
    assert "shadow-edge classify" in err


@pytest.mark.parametrize("flag,out,expected", [
    ("--plot", "/proc/shadow-edge-cannot-write-here.png", "cannot be written"),
    ("--json", "/proc/shadow-edge-cannot-write-here.json", "cannot be written"),
    ("--plot", "{tmp}", "is a directory"),
])
def test_unwritable_outputs_are_refused_before_anything_loads(tmp_path, capsys, flag, out, expected):
    """The artifact does not even exist: the output's error comes first, so no work was done before it."""
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    rc = main(["eval", str(tmp_path / "no-artifact"), "--text", str(path), "--quiet", flag,
               out.format(tmp=tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {flag} ") and expected in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]  # the probe left nothing behind
