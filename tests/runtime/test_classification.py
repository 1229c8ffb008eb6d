"""Sequence classification of both trainers (shadow-peft's ShadowForSequenceClassification, PEFT Shadow
SEQ_CLS) against the trainers themselves: the reference model, the exported classifier graphs through
`ShadowRuntime.classify`, the CLI, and the refusals between classifier and causal-LM artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cls_factories import CLS_CASE_NAMES, ID2LABEL
from manifest_checks import assert_validated
from runtime_fixtures import tiny_artifact  # noqa: F401  (fixture)
from shadow_edge.cli import main
from shadow_edge.core import ShadowModel, load_spec
from shadow_edge.errors import InputError
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.runtime import ShadowRuntime

MODES = ("shadow_only", "base_shadow")
TOL = 1e-4
LENGTHS = (7, 3, 5, 1)
_ART: dict[str, tuple] = {}


@pytest.fixture(params=CLS_CASE_NAMES)
def case(request, cls_cases):
    return cls_cases(request.param)


@pytest.fixture
def exported(case, tmp_path_factory):
    """(artifact dir, runtime) of the case, exported once per session with validation on."""
    if case.name not in _ART:
        out = tmp_path_factory.getbasetemp() / f"cls_art_{case.name}"
        export_artifact(case.base_dir, case.adapter_dir, out, options=ExportOptions(), progress=lambda m: None)
        _ART[case.name] = out, ShadowRuntime.load(out, threads=1)
    return _ART[case.name]


def rows(vocab: int) -> list[list[int]]:
    """Inputs of different lengths with ids >= 1 (0 is the pad id the HF heads pool by)."""
    return [torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in LENGTHS]


def padded(batch: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, batch))
    ids, mask = torch.zeros(len(batch), width, dtype=torch.long), torch.zeros(len(batch), width, dtype=torch.long)
    for r, row in enumerate(batch):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[r, cols], mask[r, cols] = torch.tensor(row), 1
    return ids, mask


def oracle_probs(case, mode, batch) -> np.ndarray:
    ids, mask = padded(batch, left=False)  # right padding: both trainers pool the last real token correctly
    return torch.softmax(case.oracle_logits(mode, ids, mask), -1).numpy()


@pytest.mark.parametrize("mode", MODES)
def test_reference_matches_trainer(case, mode):
    batch = rows(case.vocab_size)
    model = ShadowModel(load_spec(case.base_dir, case.adapter_dir))
    ref = case.oracle_logits(mode, *padded(batch, left=False))
    for left in (False, True):
        assert (model.classify(*padded(batch, left), mode) - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("mode", MODES)
def test_runtime_classify_matches_trainer(case, exported, mode):
    _, rt = exported
    batch = rows(case.vocab_size)
    want = oracle_probs(case, mode, batch)
    for batch_size in (16, 3):  # one padded batch, and chunks of 3 + 1
        res = rt.classify(batch, mode=mode, batch_size=batch_size)
        assert res.probabilities.shape == (len(LENGTHS), 3)
        assert np.abs(res.probabilities - want).max() <= TOL
        assert res.label_ids == want.argmax(-1).tolist() and res.labels == [ID2LABEL[i] for i in res.label_ids]
    one = rt.classify(batch[0], mode=mode)  # one input: flat fields
    assert one.label_ids == res.label_ids[0] and one.probabilities.shape == (3,)


def test_trained_heads_are_read(case):
    """The heads come from the adapter (trained copies), not the base's `score`, and differ per mode."""
    c = load_spec(case.base_dir, case.adapter_dir).classifier
    base_score = load_file(case.base_dir / "model.safetensors")["score.weight"]
    assert c.id2label == tuple(ID2LABEL.values())
    assert not torch.equal(c.weight, base_score) and not torch.equal(c.shadow_weight, c.weight)


def test_manifest_and_refusals(case, exported, tiny_artifact):
    art, rt = exported
    m = json.loads((art / "manifest.json").read_text())
    assert m["model"]["task"] == "seq_cls" and m["model"]["id2label"] == list(ID2LABEL.values())
    assert m["modes"]["shadow_only"]["head"] == "shadow_classifier"
    assert_validated(m)
    assert rt.modes == ("shadow_only", "base_shadow")
    with pytest.raises(InputError, match="sequence classifier"):
        rt.generate([1, 2, 3], max_new_tokens=2)
    with pytest.raises(InputError, match="not a sequence classifier"):
        ShadowRuntime.load(tiny_artifact, threads=1).classify("hello")
    with pytest.raises(InputError, match="cascade"):
        rt.classify([1, 2], mode="cascade")


def test_cli_classify(cls_cases, tmp_path_factory, capsys):
    case = cls_cases("sp_qwen3")  # built with the tiny default's tokenizer
    out = tmp_path_factory.getbasetemp() / "cls_cli_art"
    assert main(["export", "--base", str(case.base_dir), "--adapter", str(case.adapter_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["classify", str(out), "--text", "The river runs", "--text", "A cat", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ID2LABEL.values() for line in lines)
    assert main(["classify", str(out), "--input-ids", "5,6,7", "--mode", "shadow_only", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "shadow_only" and len(data["probabilities"][0]) == 3
    assert abs(sum(data["probabilities"][0]) - 1) < 1e-5
    assert main(["run", str(out), "--prompt", "hi"]) == 2
    assert "sequence classifier" in capsys.readouterr().err


def test_task_and_base_must_agree(cls_cases, peft_cases):
    """A classification adapter needs a *ForSequenceClassification base and a causal-LM adapter an lm_head."""
    from shadow_edge.errors import MismatchError

    cls, lm = cls_cases("peft_qwen3"), peft_cases("qwen3_mirror1")  # same dims, different tasks
    with pytest.raises(MismatchError, match="no `score` head"):
        load_spec(lm.base_dir, cls.adapter_dir)
    with pytest.raises(MismatchError, match="lm_head"):
        load_spec(cls.base_dir, lm.adapter_dir)


def test_bench_times_classification(cls_cases, tmp_path, capsys):
    from shadow_edge.bench.classify_bench import RECORD_KEYS
    from shadow_edge.bench.cli import main as bench_main

    case = cls_cases("peft_qwen3")
    art = tmp_path / "art"
    export_artifact(case.base_dir, case.adapter_dir, art, options=ExportOptions(validate=False),
                    progress=lambda m: None)
    assert bench_main([str(art), "--batch", "3", "--prompt-len", "8", "--reps", "2", "--warmup", "0",
                       "--threads", "1", "--bandwidth-mib", "0", "--json", str(tmp_path / "b.json")]) == 0
    records = json.loads((tmp_path / "b.json").read_text())["records"]
    assert [r["mode"] for r in records] == ["shadow_only", "base_shadow"]
    assert all(set(RECORD_KEYS) <= set(r) and r["sequences_per_s"] > 0 for r in records)
    assert "sequences/s" in capsys.readouterr().err
