"""`shadow-edge serve --adapter NAME=PACK`: each pack is a served model on its base artifact's runtime; answers
equal the same adapter's full artifact, requests for different adapters interleave, bad packs are one error."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from pack_fixtures import tiny_family  # noqa: F401  (fixture)
from serve_fixtures import LiveServer
from shadow_edge.cli import main
from shadow_edge.errors import InputError
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.serve.app import ServerState
from shadow_edge.serve.options import ServeOptions

pytestmark = pytest.mark.integration  # a live server

PROMPTS = ["The river", "Every morning the baker", "Trains leave the station", "A tokenizer turns text"]


@pytest.fixture(scope="module")
def server(tiny_family):
    with LiveServer(tiny_family.base_art, served_names=("base",), batch_window_ms=50,
                    adapters=tuple(tiny_family.packs.items())) as srv:
        yield srv


@pytest.fixture(scope="module")
def oracles(tiny_family):
    """model name -> a runtime of that adapter's own full artifact (the base artifact for `base`)."""
    return {"base": ShadowRuntime.load(tiny_family.base_art, threads=1),
            **{n: ShadowRuntime.load(p, threads=1) for n, p in tiny_family.fulls.items()}}


def client(srv) -> OpenAI:
    return OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=60)


def test_models_list_each_pack_in_every_mode_with_its_parent(server, oracles):
    data = httpx.get(f"{server.url}/v1/models").json()["data"]
    modes = oracles["base"].modes
    assert [m["id"] for m in data] == [f"{n}:{m}" for n in ("base", "support", "sql") for m in modes]
    assert all(m.get("parent") == (None if m["id"].startswith("base:") else "base:" + m["id"].split(":")[1])
               for m in data)


@pytest.mark.parametrize("mode", ["shadow_only", "base_shadow", "cascade", "speculative"])
def test_a_pack_answers_as_its_full_artifact(server, oracles, mode):
    c = client(server)
    for model in ("support", "sql", "base"):
        want = oracles[model].generate("The river runs", mode=mode, max_new_tokens=10)
        got = c.completions.create(model=f"{model}:{mode}", prompt="The river runs", max_tokens=10, temperature=0)
        assert got.model == f"{model}:{mode}"
        assert got.shadow_edge["token_ids"] == want.token_ids and got.choices[0].text == want.text, (model, mode)
    texts = {m: oracles[m].generate("The river runs", max_new_tokens=10).text for m in oracles}
    assert len(set(texts.values())) == 3  # the three adapters really answer differently


def test_concurrent_requests_for_different_adapters(server, oracles):
    jobs = [(model, prompt) for prompt in PROMPTS for model in ("support", "base", "sql")]
    want = [oracles[m].generate(p, mode="base_shadow", max_new_tokens=8).token_ids for m, p in jobs]
    c = client(server)

    def ask(job):
        model, prompt = job
        stream = c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=8, temperature=0, stream=True) if model == "sql" else None
        if stream is not None:
            *_, last = stream
            return last.shadow_edge["token_ids"]
        return c.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0).shadow_edge["token_ids"]

    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(ask, jobs))
    chat = {p: oracles["sql"].generate([{"role": "user", "content": p}], chat=True, mode="base_shadow",
                                       max_new_tokens=8).token_ids for p in PROMPTS}
    assert got == [chat[p] if m == "sql" else w for (m, p), w in zip(jobs, want)]
    assert server.metric("shadow_edge_requests_total", model="support", mode="base_shadow", status="200") >= 4


def test_unknown_model_lists_the_packs(server):
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "nope", "prompt": "Hi"}, timeout=30)
    assert r.status_code == 404 and "support:base_shadow" in r.json()["error"]["message"]


def test_bad_adapter_options_are_one_clear_error(tiny_family, tmp_path, capsys):
    base, pack = str(tiny_family.base_art), str(tiny_family.packs["support"])
    for adapters, message in (((("base_art", pack),), "not an artifact's name"),
                              ((("a:b", pack),), "without ':'"),
                              ((("x", pack), ("x", pack)), "repeat"),
                              ((("x", str(tmp_path / "gone")),), "no such adapter pack directory")):
        with pytest.raises(InputError, match=message):
            ServeOptions((base,), adapters=adapters)
    state = ServerState(ServeOptions((str(tiny_family.fulls["sql"]),), adapters=(("support", pack),), threads=1))
    state._load()  # the loader thread's work: a pack whose base artifact is not served
    assert state.status == "error" and "not served here (served: full_sql (not a base artifact))" in state.error
    capsys.readouterr()
    assert main(["serve", base, "--adapter", "support", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "expected NAME=PACK" in err and len(err.splitlines()) == 1
