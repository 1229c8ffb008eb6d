"""Ray Serve deployment of the same ASGI app: each replica loads its own runtimes (extra `shadow-edge[ray]`).

    shadow-edge serve art/ --ray --replicas 2 --num-cpus-per-replica 1 --threads 1

or from Python (e.g. a `serve run` target or your own driver):

    from shadow_edge.serve import ServeOptions
    from shadow_edge.serve.ray_app import RayOptions, application
    app = application(ServeOptions(("art/",), threads=1), RayOptions(replicas=2))   # a bound deployment
    ray.serve.run(app, route_prefix="/")

Ray's proxy routes each HTTP request to one replica; inside a replica the app batches as
in the single-process server. The artifact path must be readable on every node.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

from shadow_edge.errors import InputError
from shadow_edge.serve.options import ServeOptions, finite_seconds

APP_NAME = "shadow-edge"


@dataclass(frozen=True)
class RayOptions:
    """How the deployment scales. Runtime-only settings; `threads` per runtime lives in ServeOptions."""

    replicas: int = field(default=1, metadata={"help": "fixed number of replicas (ignored with autoscaling)"})
    num_cpus: float = field(default=1.0, metadata={"help": "CPUs Ray reserves for each replica"})
    autoscaling: dict | str | None = field(default=None, metadata={
        "help": "Ray Serve autoscaling_config (dict or JSON), e.g. {\"min_replicas\": 1, \"max_replicas\": 4}"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster to join (None: auto / local)"})
    shutdown_grace_s: float = field(default=30.0, metadata={"help": "per replica, see --shutdown-grace"})

    def __post_init__(self) -> None:
        if not isinstance(self.replicas, int) or isinstance(self.replicas, bool) or self.replicas < 1:
            raise InputError(f"replicas is {self.replicas!r}; it must be an integer >= 1")
        if not isinstance(self.num_cpus, (int, float)) or self.num_cpus < 0:
            raise InputError(f"num_cpus per replica is {self.num_cpus!r}; it must be a number >= 0")
        finite_seconds("shutdown_grace_s", self.shutdown_grace_s)
        if isinstance(self.autoscaling, str):
            try:
                object.__setattr__(self, "autoscaling", json.loads(self.autoscaling))
            except json.JSONDecodeError as e:
                raise InputError(f"--autoscaling is not JSON ({e}); e.g. '{{\"min_replicas\": 1, "
                                 "\"max_replicas\": 4}'") from None
        if self.autoscaling is not None and not isinstance(self.autoscaling, dict):
            raise InputError(f"autoscaling is {self.autoscaling!r}; it must be a JSON object (Ray Serve's "
                             "autoscaling_config)")


class ShadowEdgeReplica:
    """One replica: builds the app (and so its own runtimes) when Ray starts it."""

    def __init__(self, options: ServeOptions, shutdown_grace_s: float):
        self.options, self.shutdown_grace_s = options, shutdown_grace_s

    def __serve_build_asgi_app__(self):
        from shadow_edge.serve.app import build_app

        return build_app(self.options, self.shutdown_grace_s)


def application(options: ServeOptions, ray_options: RayOptions):
    """The bound Ray Serve deployment (FastAPI ingress) for `serve.run`."""
    from ray import serve

    scale = {"autoscaling_config": ray_options.autoscaling} if ray_options.autoscaling is not None \
        else {"num_replicas": ray_options.replicas}
    deployment = serve.deployment(serve.ingress()(ShadowEdgeReplica), name=APP_NAME,
                                  ray_actor_options={"num_cpus": ray_options.num_cpus},
                                  max_ongoing_requests=options.max_batch + options.max_queue, **scale)
    return deployment.bind(options, ray_options.shutdown_grace_s)


def start(options: ServeOptions, ray_options: RayOptions, **init_kwargs) -> str:
    """Connect to (or start) Ray, start Serve's HTTP proxy on options.host:port, deploy; returns the base URL.

    init_kwargs go to `ray.init` when this process starts Ray (e.g. num_cpus for a local instance).
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=ray_options.address, **init_kwargs)
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(application(options, ray_options), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{options.host}:{options.port}"


def run_forever(options: ServeOptions, ray_options: RayOptions) -> int:
    """`shadow-edge serve --ray`: deploy, then wait for Ctrl-C and tear the application down."""
    try:
        from ray import serve
    except ImportError:
        raise InputError("`shadow-edge serve --ray` needs the ray extras (ray[serve]); install them with "
                         "pip install 'shadow-edge[ray]'") from None
    url = start(options, ray_options, include_dashboard=False)
    print(f"shadow-edge serve: Ray Serve application {APP_NAME!r} deploying {', '.join(options.names)}; OpenAI API "
          f"at {url}/v1 (GET /health says when ready); Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(APP_NAME)
        serve.shutdown()
    return 0
