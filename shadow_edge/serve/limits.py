"""Request-size guards of the server: a body-size limit (ASGI middleware) and JSON parsing with bounded nesting.

A body over `--max-body-bytes` is refused with 413 `request_too_large` before it is read when
its Content-Length says so, and as soon as the running count passes the limit otherwise
(chunked uploads, or a Content-Length that lies), so the server never holds more than the
limit of one request's body. JSON is parsed by pydantic-core (bounded nesting depth), so a
deeply nested body is a 400, not a RecursionError.
"""

from __future__ import annotations

import json

from pydantic_core import from_json

from shadow_edge.serve.api_errors import APIError

def too_large(limit: int, got: str) -> APIError:
    return APIError(413, f"the request body is {got}; this server accepts at most {limit} bytes (--max-body-bytes); "
                         "send a shorter prompt", code="request_too_large")


class BodyLimit:
    """ASGI middleware: refuse request bodies larger than `max_bytes` (413, OpenAI-shaped JSON)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_error(send, too_large(limit, f"{int(declared)} bytes (Content-Length)"))
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # raised inside the endpoint's body read: the app's APIError handler answers
                    raise too_large(limit, f"more than {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def parse_json(body: bytes):
    """The request's JSON value; malformed or too deeply nested JSON is a 400."""
    try:
        return from_json(body)
    except ValueError as e:
        why = "it nests deeper than 200 levels" if "recursion limit" in str(e) else str(e)
        raise APIError(400, f"the request body is not valid JSON ({why})") from None
