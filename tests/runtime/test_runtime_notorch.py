"""The import boundary: the runtime (and `shadow-edge run` / `inspect`) work with torch, transformers and
shadow_peft made unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from pack_fixtures import families  # noqa: F401  (fixture)
from runtime_fixtures import tiny_artifact  # noqa: F401  (fixture)

BLOCK = """
import sys
for name in ("torch", "transformers", "shadow_peft", "peft", "onnx", "safetensors"):
    sys.modules[name] = None  # any import of these now raises ImportError
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_runtime_runs_every_mode_without_torch(tiny_artifact):
    proc = run_python(f"""
        import json
        import numpy as np
        from shadow_edge.runtime import ShadowRuntime
        rt = ShadowRuntime.load({str(tiny_artifact)!r}, threads=1)
        out = {{}}
        for mode in ("shadow_only", "base_shadow"):
            logits = rt.forward([[5, 6, 7]], mode=mode)
            assert logits.shape == (1, 3, rt.vocab_size) and np.isfinite(logits).all()
        for mode in rt.modes:
            r = rt.generate("The river runs", mode=mode, max_new_tokens=5)
            assert len(r.token_ids) >= 1
            assert "".join(rt.stream("The river runs", mode=mode, max_new_tokens=5)) == r.text
            out[mode] = r.to_dict()
        assert rt.chat_text("hi").endswith("assistant\\n")  # the limited jinja2 sandbox, torch-free
        assert rt.generate("hi", mode="shadow_only", chat=True, max_new_tokens=2).token_ids
        mods = [m for m in ("torch", "transformers", "shadow_peft") if sys.modules.get(m) is not None]
        print(json.dumps({{"modes": out, "leaked": mods}}))
    """)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(data["modes"]) == {"shadow_only", "base_shadow", "cascade", "speculative"} and data["leaked"] == []
    assert data["modes"]["cascade"]["answered_by"] in ("shadow_only", "base_shadow")
    assert data["modes"]["speculative"]["token_ids"] == data["modes"]["base_shadow"]["token_ids"]
    assert data["modes"]["speculative"]["speculative"]["rounds"] >= 1


def test_cli_run_and_inspect_without_torch(tiny_artifact):
    proc = run_python(f"""
        from shadow_edge.cli import main
        assert main(["run", {str(tiny_artifact)!r}, "--mode", "cascade", "--prompt", "Hi", "--max-new-tokens",
                     "3", "--json", "--threads", "1"]) == 0
        assert main(["inspect", {str(tiny_artifact)!r}]) == 0
    """)
    assert proc.returncode == 0, proc.stderr
    assert '"answered_by"' in proc.stdout and "validation" in proc.stdout


def test_network_escalation_client_without_torch(tiny_artifact):
    """The device-side cascade (shadow + urllib client) escalates to a server and falls back, torch-free."""
    proc = run_python(f"""
        import json, threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from shadow_edge.runtime import ShadowRuntime
        from shadow_edge.runtime.remote import Escalation, remote_cascade

        class Server(BaseHTTPRequestHandler):  # a minimal OpenAI completions endpoint
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = json.dumps({{"choices": [{{"text": "from the cloud", "finish_reason": "stop"}}],
                                      "usage": {{"completion_tokens": body["max_tokens"]}}}}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            def log_message(self, *a):
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Server)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        rt = ShadowRuntime.load({str(tiny_artifact)!r}, threads=1, modes=("shadow_only",))
        up = remote_cascade(rt, "Hi", Escalation(f"http://127.0.0.1:{{srv.server_address[1]}}", model="m"),
                            max_new_tokens=4, cascade_threshold=1.0)
        srv.shutdown()
        srv.server_close()
        down = remote_cascade(rt, "Hi", Escalation(f"http://127.0.0.1:{{srv.server_address[1]}}", model="m",
                                                   timeout_s=1), max_new_tokens=4, cascade_threshold=1.0)
        mods = [m for m in ("torch", "transformers", "shadow_peft", "fastapi") if sys.modules.get(m) is not None]
        print(json.dumps({{"up": up.to_dict(), "down": down.to_dict(), "leaked": mods}}))
    """)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["leaked"] == [] and data["up"]["text"] == "from the cloud" and data["up"]["escalated"]
    assert data["down"]["answered_by"] == "shadow_only" and data["down"]["reason"].startswith("server unreachable")
    assert data["down"]["text"] == data["up"]["shadow_text"]


def test_classify_without_torch(cls_cases, tmp_path):
    from shadow_edge.export import ExportOptions, export_artifact

    case = cls_cases("sp_qwen3")
    export_artifact(case.base_dir, case.adapter_dir, tmp_path / "cls", options=ExportOptions(validate=False),
                    progress=lambda m: None)
    proc = run_python(f"""
        from shadow_edge.cli import main
        from shadow_edge.runtime import ShadowRuntime
        res = ShadowRuntime.load({str(tmp_path / "cls")!r}, threads=1).classify(["The river", "A cat"])
        assert len(res.labels) == 2 and res.probabilities.shape == (2, 3)
        assert main(["classify", {str(tmp_path / "cls")!r}, "--text", "Hi", "--json", "--threads", "1"]) == 0
        assert [m for m in ("torch", "transformers", "shadow_peft") if sys.modules.get(m) is not None] == []
    """)
    assert proc.returncode == 0, proc.stderr
    assert '"labels"' in proc.stdout


def test_eval_without_torch(tiny_artifact, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The river runs past the old mill, under the stone bridge.", encoding="utf-8")
    proc = run_python(f"""
        from shadow_edge.cli import main
        assert main(["eval", {str(tiny_artifact)!r}, "--text", {str(text)!r}, "--prompts", "2", "--threads", "1",
                     "--compare", {str(tiny_artifact)!r}]) == 0
        assert main(["eval", {str(tiny_artifact)!r}, "--text", {str(text)!r}, "--modes", "speculative",
                     "--draft-tokens", "2", "--threads", "1"]) == 0
        mods = [m for m in ("torch", "transformers", "shadow_peft") if sys.modules.get(m) is not None]
        assert mods == [], mods
    """)
    assert proc.returncode == 0, proc.stderr
    assert "agreement" in proc.stdout and "cascade curve" in proc.stdout and "greedy drafts" in proc.stdout


def test_adapter_packs_without_torch(families):
    fam = families("qwen3_implicit")
    proc = run_python(f"""
        import json
        from shadow_edge.runtime import ShadowRuntime
        rt = ShadowRuntime.load({str(fam.base_art)!r}, threads=1, adapters={{"two": {str(fam.packs["two"])!r}}})
        rt.load_adapter("three", {str(fam.packs["three"])!r})
        out = {{m: rt.generate([[5, 6, 7]], mode=m, adapter=a, max_new_tokens=3).token_ids
               for m in rt.modes for a in ("two", "three")}}
        rt.unload_adapter("two")
        mods = [m for m in ("torch", "transformers", "shadow_peft") if sys.modules.get(m) is not None]
        print(json.dumps({{"modes": sorted(out), "leaked": mods}}))
    """)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data == {"modes": ["base_shadow", "cascade", "shadow_only", "speculative"], "leaked": []}
