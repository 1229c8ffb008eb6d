"""The app under uvicorn: bind the port ourselves (a busy port is one clear error) and stop accepting first on shutdown.

`bind(host, port)` opens the listening socket before any model loads, so `shadow-edge serve`
on a busy port prints `error: cannot listen on HOST:PORT: ...` and exits 2 (uvicorn alone
logs its own line and exits 3). `ShadowServer.shutdown` first calls
`ServerState.stop_accepting` (waiting requests get their 503 JSON at once; running ones get the
grace period, then end with 503 within one step, a stream with an error chunk and `data: [DONE]`),
then lets uvicorn drain the connections.
"""

from __future__ import annotations

import errno
import math
import socket

import uvicorn

from shadow_edge.errors import InputError


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), or InputError naming host:port."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(f"--host {host!r} is not an address this machine can listen on ({e}); give an IP address "
                         "such as 127.0.0.1 or 0.0.0.0, or a resolvable host name") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = "the address is already in use (another process listens there); stop it or pick another --port" \
            if e.errno == errno.EADDRINUSE else f"{e.strerror or e}; check --host and --port"
        raise InputError(f"cannot listen on {host_port(host, port)}: {why}") from None
    return sock


DRAIN_S = 2  # uvicorn waits this long past the grace: the engines end running requests at the grace (503, a
# stream's error chunk and [DONE]), and those last chunks go out before uvicorn closes the connections


class ShadowServer(uvicorn.Server):
    """uvicorn's server for one `build_app` app, on a socket from `bind`."""

    def __init__(self, app, grace_s: float):
        self.state = app.state.shadow
        super().__init__(uvicorn.Config(app, log_level="warning",
                                        timeout_graceful_shutdown=max(1, math.ceil(grace_s)) + DRAIN_S))

    async def shutdown(self, sockets=None) -> None:
        self.state.stop_accepting()  # before uvicorn waits for the open requests: queued ones get 503 now
        await super().shutdown(sockets)
