"""`shadow-edge serve`: an OpenAI-compatible ASGI server over the runtime (extra `shadow-edge[serve]`).

    from shadow_edge.serve import ServeOptions, build_app
    app = build_app(ServeOptions(("art/",)))      # any ASGI server; `shadow-edge serve` uses uvicorn

Layers: `options` (settings), `schemas` (OpenAI bodies, pydantic), `engine` (queue + batching
worker per artifact), `app` (routes, SSE, errors), `metrics` (Prometheus), `ray_app` (Ray Serve).
"""

from shadow_edge.serve.app import build_app
from shadow_edge.serve.options import ServeOptions

__all__ = ["ServeOptions", "build_app"]
