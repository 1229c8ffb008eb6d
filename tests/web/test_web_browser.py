"""`shadow-edge web`'s page in headless Chromium (Debian's, driven by puppeteer-core), served from loopback.

The page's greedy tokens equal the Python runtime's shadow_only tokens (the first prompt from the URL, the next ones
typed into the loaded page's form): fp32, int4 and int8 exported with
`--quant-compute float32` (onnxruntime-web computes quantized matmuls in float32; with the default int8
activations the native logits differ by ~0.1 and a near-tie can flip, see docs/browser.md), and the ONNX-Attention
graph. The cascade escalates to a loopback `shadow-edge serve --cors-origin` and shows its answer; errors
(model missing, server down, no CORS) are shown on the page, never thrown. One Chromium serves the whole file.
"""

from __future__ import annotations

import shutil
from urllib.parse import urlencode

import pytest
from runtime_fixtures import runtime_once, tiny_artifact  # noqa: F401  (fixture)
from serve_fixtures import LiveServer, free_port
from web_fixtures import MAX_NEW, PROMPTS, browser, export_tiny, page_console_errors, require_web_tools  # noqa: F401

from shadow_edge.web import write_site
from shadow_edge.web.static_server import StaticServer

pytestmark = pytest.mark.integration  # headless Chromium + a live server

# name -> (ExportOptions fields, prompts run): every precision and attention kind the page may get.
VARIANTS = {
    "fp32": ({}, PROMPTS),
    "int4": ({"quantize": "int4", "quant_compute": "float32"}, PROMPTS),
    "int8": ({"quantize": "int8", "quant_compute": "float32"}, PROMPTS[:1]),
    "int4-zero-point": ({"quantize": "int4", "quant_compute": "float32", "quant_scheme": "zero-point"}, PROMPTS[:1]),
    "attention": ({"attention": "Attention"}, PROMPTS[:1]),
}


@pytest.fixture(autouse=True)
def tools():
    require_web_tools(browser=True)


def url(base: str, **params) -> str:
    return f"{base}/?{urlencode(params)}"


def assert_clean(page: dict) -> None:
    """The page ended, threw nothing and logged no error of its own."""
    assert page["ended"], page
    assert page["page_errors"] == [] and page_console_errors(page) == [], page


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_page_tokens_equal_python(variant, browser, tiny_default, tmp_path):  # noqa: F811
    options, prompts = VARIANTS[variant]
    art = export_tiny(tiny_default.base_dir, tiny_default.adapter_dir, tmp_path / "art", **options)
    write_site(art, tmp_path / "site", progress=lambda m: None)
    rt = runtime_once(f"web_browser_{variant}", art)
    with StaticServer(tmp_path / "site") as site:  # the first prompt from the URL, the others typed into the form
        page, = browser.drive([url(site.url, prompt=prompts[0], max_new_tokens=MAX_NEW)], prompts=list(prompts[1:]))
    assert_clean(page)
    assert [p["prompt"] for p in page["next"]] == list(prompts[1:])
    for prompt, shown in zip(prompts, [page, *page["next"]]):
        want = rt.generate(prompt, mode="shadow_only", max_new_tokens=MAX_NEW)
        got = shown["last_result"]
        assert got["token_ids"] == list(want.token_ids), prompt
        assert (got["text"], got["answered_by"], shown["shown_answer"]) == (want.text, "shadow_only", want.text)
        assert shown["last_error"] is None and shown["shown_error"] == ""
        assert "tokens/s" in shown["shown_stats"] and got["tokens_per_s"] > 0


def test_cascade_escalates_to_serve(browser, tiny_artifact, tmp_path):  # noqa: F811
    """Below the threshold the page asks the server (OpenAI API, CORS for the page's origin) and shows its
    answer: the combined model's greedy tokens; at threshold 0 the shadow answers and the server is not asked."""
    write_site(tiny_artifact, tmp_path / "site", progress=lambda m: None)
    rt = runtime_once("tiny_default", tiny_artifact)
    prompt = PROMPTS[0]
    with StaticServer(tmp_path / "site") as site, \
            LiveServer(tiny_artifact, served_names=("tiny",), cors_origins=(site.url,)) as srv:
        pages = browser.drive([url(site.url, prompt=prompt, max_new_tokens=MAX_NEW, escalate_to=f"{srv.url}/v1", threshold=1),
                       url(site.url, prompt=prompt, max_new_tokens=MAX_NEW, escalate_to=f"{srv.url}/v1", threshold=0),
                       url(site.url, prompt=prompt, max_new_tokens=MAX_NEW, temperature=5)])
        asked = srv.metric("shadow_edge_requests_total", model="tiny", mode="base_shadow", status="200")
    escalated, confident, sampled = pages
    for page in pages:
        assert_clean(page)
    combined = rt.generate(prompt, mode="base_shadow", max_new_tokens=MAX_NEW)
    shadow = rt.generate(prompt, mode="shadow_only", max_new_tokens=MAX_NEW)
    got = escalated["last_result"]
    assert (got["answered_by"], got["reason"], got["remote_model"]) == ("remote", "escalated", "tiny:base_shadow")
    assert got["token_ids"] == list(combined.token_ids) and got["text"] == combined.text
    assert got["shadow_token_ids"] == list(shadow.token_ids) and got["confidence"] < 1
    assert escalated["shown_answer"] == combined.text and "answered by the server" in escalated["shown_answered_by"]
    assert confident["last_result"]["answered_by"] == "shadow_only"
    assert confident["last_result"]["token_ids"] == list(shadow.token_ids)
    assert "answered by the shadow" in confident["shown_answered_by"]
    assert asked == 1  # only the escalated page asked
    got = sampled["last_result"]  # temperature 5: sampled, offline; its text is its own tokens decoded
    assert got["answered_by"] == "shadow_only" and got["reason"].startswith("unsure, but no server")
    ids = got["token_ids"]
    assert len(ids) == MAX_NEW or ids[-1] in rt.eos_ids
    assert ids != list(shadow.token_ids) and got["text"] == rt.codec.decode([t for t in ids if t not in rt.eos_ids])


def test_errors_are_shown_not_thrown(browser, tiny_artifact, tmp_path):  # noqa: F811
    """A missing model, a server that is down and a server without CORS for the page: each is one message on
    the page (and in lastError / the result's reason); the shadow's answer stays when the server fails."""
    write_site(tiny_artifact, tmp_path / "site", progress=lambda m: None)
    broken = shutil.copytree(tmp_path / "site", tmp_path / "broken")
    (broken / "model/onnx/model.onnx").unlink()
    down = f"http://127.0.0.1:{free_port()}/v1"
    prompt = PROMPTS[2]
    with StaticServer(broken) as b:
        missing, = browser.drive([url(b.url, prompt=prompt)])
    with StaticServer(tmp_path / "site") as site, LiveServer(tiny_artifact, served_names=("tiny",)) as no_cors:
        pages = browser.drive([url(site.url, prompt=prompt, max_new_tokens=MAX_NEW, escalate_to=down, threshold=1),
                       url(site.url, prompt=prompt, max_new_tokens=MAX_NEW, escalate_to=f"{no_cors.url}/v1",
                           threshold=1)])
    assert_clean(missing)
    assert missing["last_result"] is None and missing["last_error"].startswith("could not load the model")
    assert missing["shown_error"] == missing["last_error"]
    shadow = runtime_once("tiny_default", tiny_artifact).generate(prompt, mode="shadow_only", max_new_tokens=MAX_NEW)
    for page in pages:
        assert_clean(page)
        got = page["last_result"]
        assert got["answered_by"] == "shadow_only" and got["token_ids"] == list(shadow.token_ids)
        assert got["reason"].startswith("server unreachable") and page["shown_error"].startswith(got["reason"])
        assert page["shown_answer"] == shadow.text and "--cors-origin" in got["reason"]
