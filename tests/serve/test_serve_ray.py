"""The server as a Ray Serve deployment: a local Ray instance (loopback, num_cpus=2), 2 replicas, OpenAI client;
a full artifact and a base artifact with two adapter packs (each replica loads the packs into its own runtime)."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI

from pack_fixtures import tiny_family  # noqa: F401  (fixture)
from runtime_fixtures import tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.runtime import ShadowRuntime
from serve_fixtures import free_port
from shadow_edge.errors import InputError
from shadow_edge.serve.options import ServeOptions
from shadow_edge.serve.ray_app import APP_NAME, RayOptions, start

pytestmark = pytest.mark.integration  # a local Ray instance

PROMPTS = ["The river", "Every morning the baker", "Trains leave the station", "A tokenizer turns text"]


def test_ray_serve_two_replicas_answer_like_the_single_process_server(tiny_artifact, tiny_rt, tiny_family):
    import ray  # the dev extra installs it
    from ray import serve

    packs = tuple((name, str(path)) for name, path in tiny_family.packs.items())  # support, sql
    options = ServeOptions((str(tiny_artifact), str(tiny_family.base_art)), served_names=("tiny", "base"),
                           adapters=packs, port=free_port(), threads=1)
    try:
        url = start(options, RayOptions(replicas=2, num_cpus=1), num_cpus=2, include_dashboard=False,
                    _node_ip_address="127.0.0.1", object_store_memory=80 * 2**20, log_to_driver=False)
        deadline = time.monotonic() + 120
        while True:  # the proxy answers once a replica has loaded its runtime
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Ray Serve deployment never became healthy"
            time.sleep(0.2)
        replicas = serve.status().applications[APP_NAME].deployments[APP_NAME].replica_states
        assert replicas.get("RUNNING") == 2, replicas
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=3, timeout=60)
        assert [m.id for m in client.models.list()] == [f"{n}:{m}" for n in ("tiny", "base", "support", "sql")
                                                        for m in tiny_rt.modes]
        for prompt in PROMPTS:
            got = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
            assert got.choices[0].text == tiny_rt.generate(prompt, mode="base_shadow", max_new_tokens=8).text
        chat = client.chat.completions.create(model="tiny:shadow_only", max_tokens=6, temperature=0,
                                              messages=[{"role": "user", "content": "Hi"}])
        assert chat.choices[0].message.content == tiny_rt.generate("Hi", chat=True, mode="shadow_only",
                                                                    max_new_tokens=6).text
        for name, mode in (("support", "base_shadow"), ("sql", "shadow_only"), ("sql", "cascade")):  # packs
            want = ShadowRuntime.load(tiny_family.fulls[name], threads=1).generate(PROMPTS[1], mode=mode,
                                                                                  max_new_tokens=8)
            got = client.completions.create(model=f"{name}:{mode}", prompt=PROMPTS[1], max_tokens=8, temperature=0)
            assert got.shadow_edge["token_ids"] == want.token_ids and got.choices[0].text == want.text, (name, mode)
            own = client.completions.create(model=f"base:{mode}", prompt=PROMPTS[1], max_tokens=8, temperature=0)
            assert own.shadow_edge["token_ids"] != want.token_ids  # the pack, not the base's own adapter, answered
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_options_are_validated():
    for kw, text in [({"replicas": 0}, "replicas"), ({"num_cpus": -1}, "num_cpus"),
                     ({"autoscaling": "{oops"}, "not JSON"), ({"autoscaling": "[1]"}, "JSON object")]:
        with pytest.raises(InputError, match=text):
            RayOptions(**kw)
    assert RayOptions(autoscaling='{"min_replicas": 1, "max_replicas": 3}').autoscaling["max_replicas"] == 3
