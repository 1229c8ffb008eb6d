"""A loopback static file server for the page, cross-origin isolated so onnxruntime-web may use threads.

    python -m shadow_edge.web.static_server DIR [--port 8080] [--host 127.0.0.1]

Browsers give WebAssembly threads (SharedArrayBuffer) only to cross-origin isolated pages; the
headers below make the page so (any static host can send them). It counts the body bytes it
sends (`bytes_sent`), which is the page weight the benchmark reports. Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def end_headers(self) -> None:
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def copyfile(self, source, outputfile) -> None:
        counter = self.server.counter
        while chunk := source.read(1 << 16):
            outputfile.write(chunk)
            with counter.lock:
                counter.bytes += len(chunk)
                counter.by_path[self.path.split("?")[0]] = counter.by_path.get(self.path.split("?")[0], 0) + len(chunk)

    def log_message(self, format, *args) -> None:  # quiet: the page's errors are shown on the page
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a closed tab is no error
            super().handle_error(request, client_address)


class _Counter:
    def __init__(self):
        self.lock, self.bytes, self.by_path = threading.Lock(), 0, {}


class StaticServer:
    """`with StaticServer(DIR) as s:` serves DIR on s.url (127.0.0.1, a free port unless given) in a thread."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0):
        handler = functools.partial(_Handler, directory=str(root))
        self.httpd = _Server((host, port), handler)
        self.httpd.counter = _Counter()
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def bytes_sent(self) -> int:
        return self.httpd.counter.bytes

    def reset_count(self) -> None:
        with self.httpd.counter.lock:
            self.httpd.counter.bytes, self.httpd.counter.by_path = 0, {}

    def __enter__(self) -> "StaticServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shadow_edge.web.static_server",
                                description="Serve a `shadow-edge web` site on loopback, cross-origin isolated.")
    p.add_argument("dir", help="the directory `shadow-edge web` wrote")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    if not (Path(args.dir) / "index.html").is_file():
        print(f"error: {args.dir}: has no index.html; pass the directory `shadow-edge web ART --out DIR` wrote",
              file=sys.stderr)
        return 2
    try:
        server = StaticServer(args.dir, args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port", file=sys.stderr)
        return 2
    print(f"serving {args.dir} on {server.url}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
