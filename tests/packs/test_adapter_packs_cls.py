"""Classifier adapter packs (shadow-peft ShadowForSequenceClassification, PEFT Shadow SEQ_CLS): a pack carries the
shadow, injection/update weights and the trained label heads; `classify(..., adapter=)` equals the same adapter
as a full artifact and the trainer itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cls_factories import make_cls_adapter
from pack_fixtures import QUIET
from shadow_edge.cli import main
from shadow_edge.export import ExportOptions, export_artifact, export_pack
from shadow_edge.runtime import ShadowRuntime
from tests.runtime.test_classification import MODES, TOL, oracle_probs, rows


@pytest.mark.parametrize("name", ["peft_qwen3", "sp_llama"])
def test_classifier_pack_equals_its_full_artifact_and_the_trainer(cls_cases, tmp_path, capsys, name):
    case = cls_cases(name)
    other = make_cls_adapter(case, tmp_path / "adapter", 11)
    base_art, pack, full = tmp_path / "base", tmp_path / "pack", tmp_path / "full"
    export_artifact(case.base_dir, case.adapter_dir, base_art, options=ExportOptions(as_base=True, validate=False),
                    **QUIET)
    manifest = export_pack(case.base_dir, other.adapter_dir, pack, base_art, **QUIET)  # validated vs PyTorch
    assert {"classifier"} <= set(manifest.params)  # the label heads travel in the pack
    export_artifact(case.base_dir, other.adapter_dir, full, options=ExportOptions(validate=False), **QUIET)
    rt = ShadowRuntime.load(base_art, threads=1, adapters={"other": pack})
    ref = ShadowRuntime.load(full, threads=1)
    batch = rows(case.vocab_size)
    for mode in MODES:
        got = rt.classify(batch, mode=mode, adapter="other", batch_size=3)
        np.testing.assert_allclose(got.probabilities, ref.classify(batch, mode=mode).probabilities, rtol=0, atol=1e-5)
        assert np.abs(got.probabilities - oracle_probs(other, mode, batch)).max() <= TOL  # the trainer's answer
        own = rt.classify(batch, mode=mode)  # the base's own adapter and heads are untouched
        assert np.abs(own.probabilities - oracle_probs(case, mode, batch)).max() <= TOL
        assert np.abs(own.probabilities - got.probabilities).max() > 1e-3
    args = ["--input-ids", "5,6,7", "--input-ids", "9", "--json", "--threads", "1", "--mode", "shadow_only"]
    assert main(["classify", str(base_art), "--adapter", f"other={pack}", "--use-adapter", "other", *args]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["classify", str(full), *args]) == 0
    want = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=0, atol=1e-5)
    assert main(["classify", str(base_art), "--use-adapter", "nope", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "adapter 'nope' is not loaded" in err and len(err.splitlines()) == 1
    out = tmp_path / "bench.json"
    assert main(["bench", str(base_art), "--adapter", f"other={pack}", "--modes", "shadow_only", "--prompt-len", "4",
                 "--batch", "2", "--reps", "1", "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    assert "shadow_only @other" in capsys.readouterr().err
    records = json.loads(out.read_text())["records"]
    assert [(r["adapter"], r["adapter_bytes"]) for r in records] == [(None, None), ("other", manifest.nbytes)]
