"""Helpers of the browser and Node tests: the tools they need, sites of tiny artifacts, and the JS drivers.

The tools (Node.js, Debian's Chromium, web/node_modules) come from `bash scripts/setup-web.sh`, which CI runs.
A missing tool fails the test with the command that installs it; only SHADOW_EDGE_WEB_TESTS=0 skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from shadow_edge.web.vendor import default_node_modules

WEB = Path(__file__).resolve().parents[1] / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PROMPTS = ("The river runs past", "A tokenizer turns text into numbers", "hello")
MAX_NEW = 12
# Console errors Chromium itself logs for a failed request (a 404, a refused connection, a CORS refusal): the
# browser's network log, not something the page threw. Anything else in the console fails the test.
BROWSER_NETWORK_LOG = ("Failed to load resource", "has been blocked by CORS policy")


def require_web_tools(node: bool = True, browser: bool = False) -> None:
    """Fail (not skip) when a tool is missing, naming the fix; skip only when SHADOW_EDGE_WEB_TESTS=0."""
    if os.environ.get("SHADOW_EDGE_WEB_TESTS") == "0":
        pytest.skip("SHADOW_EDGE_WEB_TESTS=0: the web page, browser and Node tests are disabled")
    missing = []
    if node and shutil.which("node") is None:
        missing.append("node (Node.js >= 20)")
    if not (default_node_modules() / "@huggingface" / "transformers" / "package.json").is_file():
        missing.append(f"the npm packages in {default_node_modules()}")
    if browser and not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium at {CHROMIUM}")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `bash scripts/setup-web.sh` (or set SHADOW_EDGE_WEB_TESTS=0 "
                    "to skip the browser and Node tests)", pytrace=False)


def node(script: str, payload: dict, timeout: float = 600) -> list | dict:
    """Run web/SCRIPT with one JSON argument; its stdout's last line is JSON."""
    proc = subprocess.run(["node", str(WEB / script), json.dumps(payload)], capture_output=True, text=True,
                          timeout=timeout, cwd=WEB, env={**os.environ, "CHROMIUM": CHROMIUM})
    assert proc.returncode == 0, f"node {script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Browser:
    """One headless Chromium for many pages (web/drive.mjs reading its requests from stdin): launching it per
    request cost more than most pages' own work."""

    def __init__(self) -> None:
        self.log = tempfile.TemporaryFile("w+")  # node's stderr: a file, so that it can never fill a pipe
        self.proc = subprocess.Popen(["node", str(WEB / "drive.mjs")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, cwd=WEB, env={**os.environ, "CHROMIUM": CHROMIUM})

    def drive(self, urls: list[str], timeout_ms: int = 120_000, again: int = 0, prompts: list[str] = ()) -> list[dict]:
        """What each page ended with (web/drive.mjs); `again`: more generations per page (the form resubmitted),
        their results in each page's "again"; `prompts`: typed into each page's form after its first generation,
        what the page showed after each in its "next"."""
        request = {"urls": urls, "timeout_ms": timeout_ms, "again": again, "prompts": list(prompts)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the browser's answer, or "" when node died
        if not line:
            self.proc.wait(timeout=30)
            self.log.seek(0)
            pytest.fail(f"node drive.mjs failed ({self.proc.returncode}):\n{self.log.read()[-4000:]}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


@pytest.fixture(scope="module")
def browser():
    """The module's one Chromium (see Browser)."""
    require_web_tools(browser=True)
    b = Browser()
    yield b
    b.close()


def page_console_errors(page: dict) -> list[str]:
    """The console errors of a page that are not Chromium's own network log."""
    return [e for e in page["console_errors"] if not any(s in e for s in BROWSER_NETWORK_LOG)]


def export_tiny(base: Path, adapter: Path, out: Path, **options) -> Path:
    """The tiny default pair exported with `options` (ExportOptions fields; validation off as in the runtime tests)."""
    from shadow_edge.export import ExportOptions, export_artifact

    if not out.exists():
        export_artifact(base, adapter, out, options=ExportOptions(validate=False, **options), progress=lambda m: None)
    return out
