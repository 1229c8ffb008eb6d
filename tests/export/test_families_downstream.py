"""Everything downstream of export on the families beyond Llama's shape: int8, adapter packs and the server.

tests/export/test_families.py holds each family's math to transformers and shadow_peft; here two of them — Gemma 2
(sliding window, soft-caps, tied head) and Phi-3 with an explicit Gemma 3 shadow (partial rotary, fused
checkpoint weights, a shadow of another family) — go through the paths a user takes next: int8 export with
the default int8 compute, an adapter pack against a base artifact (equal to the adapter's full artifact),
and `serve` (equal to the runtime).
"""

from __future__ import annotations

import numpy as np
import pytest
from openai import OpenAI

from factories import make_case
from manifest_checks import assert_validated
from pack_fixtures import QUIET, make_family
from serve_fixtures import LiveServer
from shadow_edge.export import ExportOptions, export_artifact
from shadow_edge.manifest import read_manifest
from shadow_edge.runtime import ShadowRuntime

NAMES = ("gemma2_gqa", "phi3_partial_explicit_gemma3")
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [11, 3, 4]]  # a left-padded batch, longer than the windows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`built(name) -> (case, family of packs)`, each case built once per module."""
    root, out = tmp_path_factory.mktemp("families_downstream"), {}

    def get(name: str):
        if name not in out:
            case = make_case(root, name)
            out[name] = case, make_family(case, root / f"packs_{name}", names=("two",))
        return out[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_int8_default_compute_validates_and_decodes(built, tmp_path, name):
    case, _ = built(name)
    art = tmp_path / "int8"
    export_artifact(case.base_dir, case.adapter_dir, art, case.shadow_model_dir,
                    options=ExportOptions(quantize="int8"), **QUIET)
    m = read_manifest(art)
    assert m.quantization == "int8"
    assert_validated(m)
    worst = max(r["max_abs_err"] / r["allowed"] for r in m.validation["outputs"].values())
    assert 0 < worst <= 1, m.validation["outputs"]
    rt = ShadowRuntime.load(art, threads=1)
    out = rt.generate(PROMPTS, mode="speculative", max_new_tokens=6)
    assert out.token_ids == rt.generate(PROMPTS, mode="base_shadow", max_new_tokens=6).token_ids


@pytest.mark.parametrize("name", NAMES)
def test_pack_equals_its_full_artifact(built, name):
    case, fam = built(name)
    rt = ShadowRuntime.load(fam.base_art, threads=1, adapters=dict(fam.packs))
    full = ShadowRuntime.load(fam.fulls["two"], threads=1)
    ids = np.random.default_rng(0).integers(0, case.vocab_size, size=(2, 10))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    for mode in ("shadow_only", "base_shadow"):
        np.testing.assert_allclose(rt.forward(ids, mask, mode=mode, adapter="two"), full.forward(ids, mask, mode=mode),
                                   rtol=0, atol=1e-5)
    for mode in rt.modes:
        got = rt.generate(PROMPTS, mode=mode, adapter="two", max_new_tokens=6).token_ids
        assert got == full.generate(PROMPTS, mode=mode, max_new_tokens=6).token_ids, mode


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_server_answers_as_the_runtime(built, name):
    case, fam = built(name)
    full = fam.fulls["two"]
    rt = ShadowRuntime.load(full, threads=1)
    with LiveServer(full, served_names=("fam",)) as srv:
        client = OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=60)
        for mode in ("shadow_only", "base_shadow", "speculative", "cascade"):
            got = client.completions.create(model=f"fam:{mode}", prompt=PROMPTS[0], max_tokens=8, temperature=0)
            assert got.shadow_edge["token_ids"] == rt.generate(PROMPTS[0], mode=mode, max_new_tokens=8).token_ids
