"""transformers.js loads `shadow-edge web`'s model folder as a standard model: in Node (onnxruntime-node),
`pipeline("text-generation", ...)` and its model's greedy generate() give the Python runtime's shadow_only
tokens and text, fp32 and int4 in the default and the zero-point scheme (native int8 activations on both sides: the
same kernels)."""

from __future__ import annotations

import pytest
from runtime_fixtures import runtime_once
from web_fixtures import MAX_NEW, PROMPTS, export_tiny, node, require_web_tools

from shadow_edge.web import write_site

pytestmark = pytest.mark.integration  # Node.js


@pytest.mark.parametrize("quantize, scheme", [("none", None), ("int4", None), ("int4", "zero-point")])
def test_transformers_js_in_node_matches_python(quantize, scheme, tiny_default, tmp_path):
    require_web_tools()
    art = export_tiny(tiny_default.base_dir, tiny_default.adapter_dir, tmp_path / "art", quantize=quantize,
                      quant_scheme=scheme)
    site = tmp_path / "site"
    write_site(art, site, progress=lambda m: None)
    got = node("generate.mjs", {"root": f"{site}/", "model": "model", "prompts": list(PROMPTS),
                                "max_new_tokens": MAX_NEW})
    rt = runtime_once(f"web_node_{quantize}_{scheme}", art)
    for prompt, page in zip(PROMPTS, got):
        want = rt.generate(prompt, mode="shadow_only", max_new_tokens=MAX_NEW)
        assert page["prompt_ids"] == rt.codec.encode(prompt)
        assert page["token_ids"] == list(want.token_ids), prompt
        assert page["text"] == want.text, prompt
