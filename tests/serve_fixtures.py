"""A live `shadow-edge serve` app on 127.0.0.1 (a free port), run by the production `ShadowServer`, started and
stopped by the test."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx

from shadow_edge.serve import ServeOptions, build_app
from shadow_edge.serve.server import ShadowServer, bind


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`with LiveServer(art, served_names=("tiny",), ...) as srv:` -> srv.url ("http://127.0.0.1:PORT")."""

    def __init__(self, *artifacts, grace_s: float = 5.0, **options):
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        # decode_nice 0 unless a test asks: the other pytest worker keeps the 2 cores busy from the same session, where
        # the server's default nice-19 decode thread gets ~1% of a core and the timing-bound checks (a shutdown's
        # 3 s drain) failed; the default reaching the engine is tested with it passed explicitly
        self.options = ServeOptions(tuple(str(a) for a in artifacts), port=self.port,
                                    **{"threads": 1, "shutdown_grace_s": grace_s, "decode_nice": 0, **options})
        self.app = build_app(self.options)
        self.server = ShadowServer(self.app, self.options.shutdown_grace_s)
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the server on {self.url} did not become healthy")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def metric(self, name: str, **labels) -> float:
        """The value of one Prometheus sample (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for line in text.splitlines():
            m = re.match(r"^(\w+)(\{.*\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == str(v) for k, v in labels.items()):
                return float(m.group(3))
        return 0.0
