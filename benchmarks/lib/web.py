"""Headless Chromium for the browser suite: drive pages with web/drive.mjs and read what they ended with.

The tools (Node.js, Debian's Chromium, web/node_modules) come from `bash scripts/setup-web.sh`.
"""

from __future__ import annotations

import json
import os
import subprocess

from benchmarks.lib.artifacts import REPO

WEB = REPO / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Console errors Chromium itself logs for a failed request: the browser's network log, not something the page threw.
BROWSER_NETWORK_LOG = ("Failed to load resource", "has been blocked by CORS policy")


def drive(urls: list[str], timeout_ms: int = 120_000, again: int = 0) -> list[dict]:
    """What each page ended with in headless Chromium (web/drive.mjs); `again`: more generations per page
    (the form resubmitted), their results in each page's "again"."""
    payload = {"urls": urls, "timeout_ms": timeout_ms, "again": again}
    proc = subprocess.run(["node", str(WEB / "drive.mjs"), json.dumps(payload)], capture_output=True, text=True,
                          timeout=timeout_ms / 1e3 + 60, cwd=WEB, env={**os.environ, "CHROMIUM": CHROMIUM})
    if proc.returncode != 0:
        raise SystemExit(f"node drive.mjs failed ({proc.returncode}); did `bash scripts/setup-web.sh` run?\n"
                         f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def page_console_errors(page: dict) -> list[str]:
    """The console errors of a page that are not Chromium's own network log."""
    return [e for e in page["console_errors"] if not any(s in e for s in BROWSER_NETWORK_LOG)]
