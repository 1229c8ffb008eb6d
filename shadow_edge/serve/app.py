"""The ASGI app of `shadow-edge serve`: the OpenAI API (models, chat, completions), /health and /metrics.

`build_app(options)` returns a FastAPI app whose lifespan loads one `ShadowRuntime` per
artifact in a background thread (requests get 503 until it is done) and, on shutdown,
lets running batches finish within the grace period and fails waiting requests with 503
(`ServerState.stop_accepting`, called by serve/server.py as soon as the server begins to stop).
Every error, unknown routes included, is OpenAI-shaped JSON (api_errors.py). Bodies are
bounded (serve/limits.py); parsing and tokenizing run off the event loop, so a long prompt
does not stall /health or other requests' streams.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import threading
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from shadow_edge.errors import ContextLengthError, ShadowEdgeError
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.serve.adapters import attach_packs
from shadow_edge.runtime.token_loop import Control
from shadow_edge.serve.api_errors import KINDS, APIError, bad_param
from shadow_edge.serve.engine import Engine, Job
from shadow_edge.serve.limits import BodyLimit, parse_json
from shadow_edge.serve.metrics import Metrics
from shadow_edge.serve.options import ServeOptions
from shadow_edge.serve.schemas import ChatRequest, CompletionRequest, parse

DISCONNECT_POLL_S = 0.25


class ServerState:
    """The engines (one per artifact), loading status and metrics of one app."""

    def __init__(self, options: ServeOptions, grace_s: float = 30.0):
        self.options, self.metrics, self.grace_s = options, Metrics(), grace_s
        self.engines: dict[str, Engine] = {}
        self.default_modes: dict[str, str] = {}
        self.parents: dict[str, str] = {}  # adapter pack name -> the artifact name it runs on
        self.status, self.error = "loading", None
        self._loader: threading.Thread | None = None

    def start_loading(self) -> None:
        self._loader = threading.Thread(target=self._load, name="shadow-edge-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        o = self.options
        try:
            for name, art in zip(o.names, o.artifacts):
                rt = ShadowRuntime.load(art, threads=o.threads, verify=o.verify, spin_threads=o.spin_threads)
                self.default_modes[name] = o.default_mode if o.default_mode in rt.modes else rt.modes[0]
                self.engines[name] = Engine(name, rt, o.max_batch, o.max_queue, o.batch_window_ms, self.metrics,
                                            grace_s=self.grace_s, decode_nice=o.decode_nice)
            self.parents = attach_packs({n: e.rt for n, e in self.engines.items()}, o.adapters, o.verify)
            self.status = "ok"
        except ShadowEdgeError as e:
            self.status, self.error = "error", str(e)
            print(f"error: {e}", file=sys.stderr, flush=True)

    def stop_accepting(self) -> None:
        """The server begins to stop: new and waiting requests get 503; running ones get the grace period, then
        end with 503 (a stream: an error chunk and [DONE]) within one step."""
        self.status = "shutting_down"
        for engine in list(self.engines.values()):
            engine.stop_accepting()

    def close(self, grace_s: float) -> None:
        self.status = "shutting_down"
        if self._loader is not None:
            self._loader.join()
        for engine in self.engines.values():
            engine.close(grace_s)

    def require_ready(self) -> None:
        if self.status != "ok":
            detail = f": {self.error}" if self.error else ""
            raise APIError(503, f"the server is {self.status.replace('_', ' ')}{detail}; retry shortly")

    def resolve(self, model: str, mode: str | None) -> tuple[Engine, str, str | None]:
        """`NAME` or `NAME:MODE` (+ an optional `mode` body field) -> (engine, mode, adapter pack or None);
        NAME is an artifact's or an adapter pack's."""
        self.require_ready()
        name, _, suffix = model.partition(":")
        if name not in self.engines and name not in self.parents:
            raise APIError(404, f"model {model!r} does not exist; GET /v1/models lists "
                                f"{', '.join(self.model_ids())}", param="model")
        adapter = name if name in self.parents else None
        engine = self.engines[self.parents.get(name, name)]
        if suffix and suffix not in engine.rt.modes:
            raise APIError(404, f"model {model!r} does not exist: {name} runs modes {', '.join(engine.rt.modes)}",
                           param="model")
        if mode is not None:
            if mode not in engine.rt.modes:
                raise bad_param("mode", f"mode {mode!r} is not available for {name}; valid: "
                                        f"{', '.join(engine.rt.modes)}")
            if suffix and suffix != mode:
                raise bad_param("mode", f"mode {mode!r} contradicts the model name {model!r}; give one of them")
        return engine, suffix or mode or self.default_modes[engine.name], adapter

    def models(self) -> list[tuple[str, str | None]]:
        """(model id, parent artifact name for an adapter pack's ids else None): artifacts first, then packs."""
        own = [(f"{name}:{mode}", None) for name, e in self.engines.items() for mode in e.rt.modes]
        return own + [(f"{a}:{mode}", base) for a, base in self.parents.items() for mode in self.engines[base].rt.modes]

    def identity(self, model: str) -> dict:
        """What a model's token ids mean: its vocabulary size and the sha256 of its tokenizer.json (a cascade
        client sends token ids only to a model whose identity equals its own: runtime/remote.py)."""
        name = model.partition(":")[0]
        rt = self.engines[self.parents.get(name, name)].rt
        return {"vocab_size": rt.vocab_size, "tokenizer_sha256": rt.manifest.files.get("tokenizer.json", {}).get(
            "sha256")}

    def model_ids(self) -> list[str]:
        return [m for m, _ in self.models()]

    def model_card(self, model: str) -> dict:
        """One model object of GET /v1/models and GET /v1/models/{model}: a listed id (NAME:MODE) or a bare NAME
        (its default mode); anything else is a 404."""
        self.resolve(model, None)
        name, _, mode = model.partition(":")
        card = {"id": model, "object": "model", "created": 0, "owned_by": "shadow-edge"}
        if name in self.parents:  # an adapter pack: its base artifact's id
            card["parent"] = f"{self.parents[name]}:{mode}" if mode else self.parents[name]
        return card | {"shadow_edge": self.identity(model)}



ROUTES = "GET /health, GET /metrics, GET /v1/models, GET /v1/models/{model}, POST /v1/chat/completions, " \
         "POST /v1/completions"


def build_app(options: ServeOptions, shutdown_grace_s: float | None = None) -> FastAPI:
    """The app; `shutdown_grace_s` overrides options.shutdown_grace_s (kept for callers that pass it)."""
    if shutdown_grace_s is None:
        shutdown_grace_s = options.shutdown_grace_s
    state = ServerState(options, shutdown_grace_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_loading()
        yield
        await asyncio.to_thread(state.close, shutdown_grace_s)

    app = FastAPI(title="shadow-edge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.shadow = state
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    if options.cors_origins:  # outermost: pages of `shadow-edge web` escalating here from their own origin
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # Starlette's own: unknown route, wrong method
        where = f"{request.method} {request.url.path}"
        if e.status_code == 404:
            error = APIError(404, f"no route {where}; this server answers {ROUTES}", code="not_found")
        elif e.status_code == 405:
            error = APIError(405, f"{where}: method not allowed here; this server answers {ROUTES}")
        else:
            error = APIError(e.status_code if e.status_code in KINDS else 400, f"{where}: {e.detail}")
        return JSONResponse(error.body(), status_code=error.status, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):  # a bug: still OpenAI-shaped (the log has the trace)
        error = APIError(500, f"internal error: {type(e).__name__}: {e}")
        return JSONResponse(error.body(), status_code=500)

    def authorize(request: Request) -> None:
        key = options.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise APIError(401, "missing or wrong API key: send `Authorization: Bearer KEY` with the server's "
                                "--api-key" if given else "no API key given: send `Authorization: Bearer KEY`")

    @app.get("/health")
    async def health():
        body = {"status": state.status, "models": state.model_ids() if state.status == "ok" else []}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.status == "ok" else 503)

    @app.get("/metrics")
    async def metrics():
        data, ctype = state.metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        state.require_ready()
        return {"object": "list", "data": [state.model_card(m) for m in state.model_ids()]}

    @app.get("/v1/models/{model}")
    async def model_card(request: Request, model: str):
        authorize(request)
        return state.model_card(model)

    def prepare(body: bytes, chat: bool):
        """Parse, validate, resolve the model and tokenize (in a worker thread: a long prompt takes seconds)."""
        req = parse(ChatRequest if chat else CompletionRequest, parse_json(body))
        engine, mode, adapter = state.resolve(req.model, req.mode)
        ids = _encode(engine, req.conversation() if chat else req.one_prompt(), chat, "messages" if chat else "prompt")
        return req, engine, mode, adapter, ids

    async def generate(request: Request, chat: bool):
        authorize(request)
        req, engine, mode, adapter, ids = await asyncio.to_thread(prepare, await request.body(), chat)
        job = _job(engine, mode, ids, req, req.token_limit, options, adapter)
        return await _respond(request, state, engine, mode, job, req, chat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    return app


def _encode(engine: Engine, prompt, chat: bool, param: str) -> list[int]:
    rt = engine.rt
    try:
        batch = rt.encode(prompt, chat=chat)
        n = batch.lengths[0]
    except ContextLengthError as e:
        n = e.tokens
    except ShadowEdgeError as e:
        raise bad_param(param, f"{param}: {e}") from None
    if n >= rt.max_positions:
        raise APIError(413, f"{param}: the prompt has {n} tokens; the model's context is {rt.max_positions} "
                            "tokens (prompt + completion); shorten it", param=param)
    return batch.input_ids[0, -n:].tolist()


def _job(engine: Engine, mode: str, ids: list[int], req, limit: int | None, options: ServeOptions,
         adapter: str | None = None) -> Job:
    room = engine.rt.max_positions - len(ids)
    if limit is not None and limit > room:
        raise bad_param("max_tokens", f"max_tokens is {limit}, but the prompt has {len(ids)} tokens and the "
                                      f"context {engine.rt.max_positions}: at most {room} fit")
    temperature = 1.0 if req.temperature is None else req.temperature  # OpenAI's default: sampling at 1
    given = req.strategy_options
    arrived = time.monotonic()
    try:  # the generic fields and the mode's own options, checked as the runtime checks them
        opts = engine.rt.options(mode, limit or min(room, options.default_max_tokens), do_sample=temperature != 0,
                                 temperature=temperature, top_k=req.top_k or 0,
                                 top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
                                 stop=req.stops or None, eos=() if req.ignore_eos else None, adapter=adapter,
                                 control=Control(arrived + options.request_timeout_s), **given)
    except ShadowEdgeError as e:
        param = next((k for k in given if k in str(e)), None)
        raise (bad_param(param, str(e)) if param else APIError(400, str(e))) from None
    return Job(ids, opts, arrived=arrived, model=adapter)


def _usage(job: Job) -> dict:
    return {"prompt_tokens": len(job.ids), "completion_tokens": len(job.token_ids),
            "total_tokens": len(job.ids) + len(job.token_ids)}


def _extra(job: Job) -> dict:
    extra = {"mode": job.mode, "token_ids": job.token_ids}
    if job.stats is not None:  # the mode's strategy's stats (e.g. speculative acceptance, the cascade's decision)
        extra[job.mode] = job.stats
    return extra


async def _respond(request: Request, state: ServerState, engine: Engine, mode: str, job: Job, req, chat: bool):
    job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
    model = f"{engine.model(job)}:{mode}"
    try:
        engine.submit(job)
    except APIError as e:
        state.metrics.requests.labels(engine.model(job), mode, str(e.status)).inc()
        raise
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if req.stream:
        return StreamingResponse(_sse(state, engine, job, req, chat, rid, created, model),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    checked = time.monotonic()
    while True:  # the answer is complete in `job` at "end"; text events matter only to streams
        try:
            kind, payload = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            kind = payload = None
        if time.monotonic() - checked >= DISCONNECT_POLL_S:  # also while text events keep coming
            checked = time.monotonic()
            if await request.is_disconnected():
                job.cancelled = True
                state.metrics.requests.labels(engine.model(job), mode, "cancelled").inc()
                return Response(status_code=499)
        if kind == "error":
            state.metrics.requests.labels(engine.model(job), mode, str(payload.status)).inc()
            raise payload
        if kind == "end":
            break
    _observe(state, engine, job, "200")
    choice = {"index": 0, "finish_reason": job.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": job.text}
    else:
        choice["text"] = job.text
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model, "choices": [choice], "usage": _usage(job), "shadow_edge": _extra(job)}


def _observe(state: ServerState, engine: Engine, job: Job, status: str) -> None:
    state.metrics.requests.labels(engine.model(job), job.mode, status).inc()
    if job.first_token_at is not None:
        state.metrics.ttft.labels(engine.model(job), job.mode).observe(job.first_token_at - job.arrived)


async def _sse(state: ServerState, engine: Engine, job: Job, req, chat: bool, rid: str,
               created: int, model: str):
    """Server-sent events: one chunk per text piece, a final chunk with finish_reason, usage, [DONE]."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    usage_field = {"usage": None} if req.include_usage else {}

    def chunk(delta: str | None, finish=None, role: bool = False) -> str:
        if chat:
            d = ({"role": "assistant", "content": ""} if role else {}) | ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], **usage_field}
        if finish is not None:
            body["shadow_edge"] = _extra(job)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    done = False
    try:
        if chat:
            yield chunk(None, role=True)
        while True:
            kind, payload = await job.events.get()
            if kind == "text":
                yield chunk(payload)
            elif kind == "error":
                state.metrics.requests.labels(engine.model(job), job.mode, str(payload.status)).inc()
                done = True
                yield f"data: {json.dumps(payload.body())}\n\n"
                break
            else:
                done = True
                _observe(state, engine, job, "200")
                yield chunk(None, finish=job.finish_reason)
                if req.include_usage:
                    body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                            "usage": _usage(job)}
                    yield f"data: {json.dumps(body)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        if not done:  # the client went away (the response task was cancelled): stop its generation
            job.cancelled = True
            state.metrics.requests.labels(engine.model(job), job.mode, "cancelled").inc()
